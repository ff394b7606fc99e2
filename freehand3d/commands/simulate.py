"""CLI: ``freehand3d simulate nwire`` and ``freehand3d simulate sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _with_progress(description: str, run, quiet: bool = False):
    """Run ``run(progress_callback)`` under a rich progress bar on stderr (none with ``quiet``)."""
    if quiet:
        return run(lambda done, total: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run(update)


def _check_outputs(output, preview) -> None:
    """Output names checked before the progress bar and the simulation start."""
    from freehand3d.simulate.files import _check_output, _check_preview

    _check_output(output)
    _check_preview(preview)


def register(app: typer.Typer) -> None:
    simulate_app = typer.Typer(
        help="Simulated data with exact ground truth: N-wire calibration recordings, freehand sweeps.",
        no_args_is_help=True,
    )

    @simulate_app.command("nwire")
    def nwire(
        output: Path = typer.Option(..., "-o", "--output", help="Sequence file to write (.igs.mha, .igs.nrrd, ...)."),
        frames: int = typer.Option(100, "--frames", min=1, help="Number of frames."),
        noise: str = typer.Option("low", "--noise", help="low | medium | high, or a number (0 = low, 1 = high)."),
        wall_echoes: bool = typer.Option(True, "--wall-echoes/--no-wall-echoes", help="Add long wall/membrane echoes."),
        corrupt_poses: float = typer.Option(0.0, "--corrupt-poses", min=0.0, max=1.0,
                                            help="Fraction of frames with a wrong ProbeToTracker (status still OK)."),
        missing_phantom: float = typer.Option(0.0, "--missing-phantom", min=0.0,
                                              help="Frames off the phantom: a count, or a fraction when < 1."),
        phantom: str = typer.Option("fcal-1.2", "--phantom", help="Shipped phantom name, phantom YAML or PLUS device-set XML."),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
        preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG with a few frames."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Simulate a tracked N-wire calibration recording; the truth goes to NAME.EXT.truth.npz beside it."""
        from freehand3d.errors import ConfigError
        from freehand3d.simulate.files import simulate_nwire_to_file

        try:
            level: str | float = float(noise)
        except ValueError:
            level = noise.lower()
            if level not in ("low", "medium", "high"):
                raise ConfigError("--noise must be low, medium, high or a number >= 0", noise) from None
        if isinstance(level, float) and not level >= 0:
            raise ConfigError("--noise must be low, medium, high or a number >= 0", noise)
        missing = missing_phantom if missing_phantom < 1 else int(missing_phantom)
        _check_outputs(output, preview)
        sweep_path, truth_path = _with_progress("simulating N-wire frames", lambda update: simulate_nwire_to_file(
            output, phantom=phantom, n_frames=frames, noise=level, wall_echoes=wall_echoes,
            corrupt_pose_fraction=corrupt_poses, missing_phantom_frames=missing, seed=seed, preview=preview,
            progress=update,
        ), quiet)
        typer.echo(f"wrote {sweep_path} ({frames} frames) and {truth_path}" + (f"; preview {preview}" if preview else ""))

    @simulate_app.command("sweep")
    def sweep(
        output: Path = typer.Option(..., "-o", "--output", help="Sweep file to write (.igs.mha, .h5, ...)."),
        frames: int = typer.Option(200, "--frames", min=2, help="Number of frames."),
        size: str = typer.Option("480x640", "--size", help="Frame size HxW (DualTrack needs 480x640)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same bytes)."),
        device: str = typer.Option("cpu", "--device", help="torch device for the slicing (cpu, cuda)."),
        preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG with frames and the trajectory."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Simulate a freehand sweep through a speckle volume; the truth (poses, volume) goes to
        NAME.EXT.truth.npz beside it (e.g. sweep.igs.mha.truth.npz)."""
        from freehand3d.errors import ConfigError
        from freehand3d.simulate.files import simulate_sweep_to_file

        try:
            height, width = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ConfigError("--size must look like 480x640 (height x width)", size) from None
        if height < 8 or width < 8:
            raise ConfigError("--size must be at least 8x8", size)
        _check_outputs(output, preview)
        sweep_path, truth_path = _with_progress("simulating sweep", lambda update: simulate_sweep_to_file(
            output, n_frames=frames, frame_size=(height, width), seed=seed, device=device, preview=preview,
            progress=update,
        ), quiet)
        typer.echo(f"wrote {sweep_path} ({frames} frames) and {truth_path}" + (f"; preview {preview}" if preview else ""))

    app.add_typer(simulate_app, name="simulate")
