"""CLI: ``freehand3d reconstruct SWEEP -o VOL.nrrd`` (freehand volume reconstruction)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Method(str, Enum):
    nearest = "nearest"
    linear = "linear"


class Compounding(str, Enum):
    latest = "latest"
    max = "max"
    mean = "mean"


class OutputType(str, Enum):
    input = "input"
    uint8 = "uint8"
    int8 = "int8"
    uint16 = "uint16"
    int16 = "int16"
    uint32 = "uint32"
    int32 = "int32"
    float32 = "float32"
    float64 = "float64"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _read_calibration(path: Path):
    import json

    import numpy as np

    from freehand3d.errors import InputError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable JSON file ({exc})", path) from None
    matrix = data.get("image_to_probe") if isinstance(data, dict) else None
    try:
        matrix = np.asarray(matrix, float)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError("needs an 'image_to_probe' entry holding a finite 4x4 matrix", path)
    return matrix


def reconstruct_command(
    sweep: Path = typer.Argument(..., help="Tracked sweep (.igs.mha, .seq.nrrd, .h5, ...)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output volume (.nrrd, .mha, .nii.gz)."),
    config: Path = typer.Option(None, "--config", help="PLUS device set with a <VolumeReconstruction> element."),
    spacing: float = typer.Option(None, "--spacing", help="Voxel size in mm (default: the config's, else 0.5)."),
    method: Method = typer.Option(None, "--method", help="Pixel insertion (default: the config's, else nearest)."),
    compounding: Compounding = typer.Option(None, "--compounding", help="How overlapping pixels combine (default: the config's, else mean)."),
    fill_holes: str = typer.Option(
        None,
        "--fill-holes",
        help="Hole filling, kernels tried in order: stick:LEN[:N], gaussian:SIZE:STDEV[:RATIO], "
        "nn:SIZE[:RATIO], idw:SIZE[:RATIO], gap:MM; 'none' to disable (default: the config's).",
    ),
    image_to_reference: str = typer.Option(None, "--image-to-reference", help="Pose transform name (default ImageToReference)."),
    calibration: Path = typer.Option(None, "--calibration", help="JSON with an 'image_to_probe' 4x4 (pixels -> mm)."),
    exact_plus: bool = typer.Option(None, "--exact-plus/--fast", help="PLUS's arithmetic (default with --config) or the fast path."),
    device: Device = typer.Option(Device.cpu, "--device", help="Compute device."),
    max_memory: float = typer.Option(
        None, "--max-memory",
        help="Memory limit in GiB (2**30 bytes) for the whole reconstruction (buffers, hole filling, "
        "writing; default: half the available RAM).",
    ),
    preview: Path = typer.Option(None, "--preview", help="Also write a PNG: three orthogonal slices and a MIP."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    output_type: OutputType = typer.Option(
        OutputType.input, "--output-type",
        help="Volume pixel type (default: the sweep's). Non-uint8 sweeps accumulate in floats; integer "
             "outputs round and clip, float outputs keep the exact means."),
) -> None:
    """Reconstruct a tracked sweep into a volume (PLUS-compatible compounding)."""
    import math

    from freehand3d._atomic import check_output_path
    from freehand3d.compound.holes import parse_fill_spec
    from freehand3d.compound.volume import reconstruct, save_preview, write_volume_file
    from freehand3d.errors import ConfigError, InputError
    from freehand3d.io import read_sweep
    from freehand3d.io.volumes import VOLUME_SUFFIXES

    # everything a user can get wrong is checked before the sweep is read
    if image_to_reference is not None and calibration is not None:
        raise ConfigError("give either --image-to-reference or --calibration, not both", "--calibration")
    if image_to_reference is not None:
        from freehand3d.geometry import split_transform_name

        try:
            split_transform_name(image_to_reference)
        except ValueError as exc:
            raise ConfigError(str(exc), "--image-to-reference") from None
    if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
        raise ConfigError(f"must be a positive number of mm, got {spacing}", "--spacing")
    if max_memory is not None and not (math.isfinite(max_memory) and max_memory > 0):
        raise ConfigError(f"must be a positive number of GiB, got {max_memory}", "--max-memory")
    if not str(output.name).lower().endswith(VOLUME_SUFFIXES):
        raise ConfigError(f"unsupported volume format; use one of {', '.join(VOLUME_SUFFIXES)}", output)
    check_output_path(output, "output volume")
    if preview is not None:
        if not preview.name.lower().endswith(".png"):
            raise ConfigError("the preview is a PNG; give a name ending in .png", preview)
        check_output_path(preview, "preview")
    if not sweep.exists():
        raise InputError("file not found", sweep)
    if config is not None and not config.is_file():
        raise InputError("device set not found" if not config.exists() else "not a file", config)
    kernels = None
    if fill_holes is not None:
        kernels = [] if fill_holes.strip().lower() in ("none", "off", "") else parse_fill_spec(fill_holes)
    image_to_probe = _read_calibration(calibration) if calibration is not None else None

    with _Phases(quiet) as phases:
        phases.start(f"reading {sweep.name}")
        data = read_sweep(sweep)
        image = reconstruct(
            data,
            spacing=spacing,
            method=None if method is None else method.value,
            compounding=None if compounding is None else compounding.value,
            config=config,
            image_to_reference=image_to_reference,
            calibration=image_to_probe,
            fill_holes=kernels,
            exact_plus=exact_plus,
            device=device.value,
            max_memory=None if max_memory is None else int(max_memory * 1024**3),
            progress=phases.frames,
            phase=phases.start,
            output_type=None if output_type == OutputType.input else output_type.value,
        )
        phases.start(f"writing {output.name}")
        write_volume_file(image, output)
        if preview is not None:
            phases.start(f"writing {preview.name}")
            save_preview(image, preview)
    size = image.GetSize()
    typer.echo(f"wrote {output} ({size[0]}x{size[1]}x{size[2]} voxels, spacing {image.GetSpacing()[0]:g} mm)")


class _Phases:
    """One progress line per long phase (reading, inserting frames with a bar, filling holes,
    writing) on stderr; nothing with ``quiet`` or when stderr is not a terminal-capable console.
    A phase's line is only shown once the inputs have been checked, so a refused request prints its
    error line without a bar above it."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        return self

    def start(self, description: str, total: float | None = None) -> None:
        if self.bar is None:
            return
        if self.task is not None:  # close the previous phase at 100 %
            task = self.bar.tasks[-1]
            self.bar.update(self.task, total=task.total or 1, completed=task.total or 1)
        if description.startswith("reading"):  # shown once the inputs are accepted (see frames)
            import time

            self._pending, self._t0 = description, time.monotonic()
            self.task = None
            return
        self._show()
        self.task = self.bar.add_task(description, total=total)

    def frames(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.task is None or not self.bar.tasks[-1].description.startswith("inserting"):
            if getattr(self, "_pending", None):
                import time

                self._show()
                read = self.bar.add_task(f"{self._pending} ({time.monotonic() - self._t0:.1f} s)", total=1)
                self.bar.update(read, completed=1)
                self._pending = None
            self.start("inserting frames", total)
        self.bar.update(self.task, completed=done, total=total)

    def _show(self) -> None:
        if not self.bar.live.is_started:
            self.bar.start()

    def __exit__(self, *exc):
        if self.bar is not None and self.bar.live.is_started:
            if exc[0] is None and self.task is not None:
                task = self.bar.tasks[-1]
                self.bar.update(self.task, total=task.total or 1, completed=task.total or 1)
            self.bar.stop()
        return False


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct_command)
