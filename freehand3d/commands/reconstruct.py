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
    max_memory: float = typer.Option(None, "--max-memory", help="Memory limit in GB for the volume buffers (default: half the free RAM)."),
    preview: Path = typer.Option(None, "--preview", help="Also write a PNG: three orthogonal slices and a MIP."),
) -> None:
    """Reconstruct a tracked sweep into a volume (PLUS-compatible compounding)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from freehand3d.compound.holes import parse_fill_spec
    from freehand3d.compound.volume import reconstruct, save_preview, write_volume_file
    from freehand3d.errors import ConfigError
    from freehand3d.io import read_sweep

    if image_to_reference is not None and calibration is not None:
        raise ConfigError("give either --image-to-reference or --calibration, not both", "--calibration")
    kernels = None
    if fill_holes is not None:
        kernels = [] if fill_holes.strip().lower() in ("none", "off", "") else parse_fill_spec(fill_holes)
    image_to_probe = _read_calibration(calibration) if calibration is not None else None
    data = read_sweep(sweep)
    # the bar is shown once reconstruct() has checked the inputs, so an error comes without a bar above it
    bar = Progress(TextColumn("reconstructing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = bar.add_task("frames", total=len(data))

    def tick(done, total):
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
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
            progress=tick,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    write_volume_file(image, output)
    if preview is not None:
        save_preview(image, preview)
    size = image.GetSize()
    typer.echo(f"wrote {output} ({size[0]}x{size[1]}x{size[2]} voxels, spacing {image.GetSpacing()[0]:g} mm)")


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct_command)
