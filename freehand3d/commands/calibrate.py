"""CLI: ``freehand3d calibrate CAL.igs.mha --phantom PHANTOM -o result.json`` (N-wire probe calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_command(
        calibration: Path = typer.Argument(..., help="Tracked N-wire recording (.igs.mha, .seq.nrrd, ...)."),
        phantom: str = typer.Option(..., "--phantom", "-p",
                                    help="Phantom: shipped name (fcal-1.2), phantom YAML or PLUS device-set XML."),
        output: Path = typer.Option(..., "--output", "-o", help="Result JSON to write."),
        validation: Optional[Path] = typer.Option(None, "--validation", help="Independent validation recording."),
        solver: str = typer.Option("ransac-lm", "--solver", help="ransac-lm, plus (PLUS LSQR) or lm (plain LM)."),
        config: Optional[Path] = typer.Option(None, "--config",
                                              help="PLUS device set: segmentation settings and PhantomToReference."),
        plus_config: Optional[Path] = typer.Option(None, "--plus-config",
                                                   help="Write a copy of the device set with the new ImageToProbe."),
        tfm: Optional[Path] = typer.Option(None, "--tfm", help="Write ImageToProbe as an ITK .tfm file."),
        overlay: Optional[Path] = typer.Option(None, "--overlay", help="Folder for PNG overlays of the detections."),
        detection: str = typer.Option("hessian", "--detection", help="hessian (top-hat + Hessian) or plus."),
        seed: int = typer.Option(0, "--seed", help="RANSAC seed."),
    ) -> None:
        """Calibrate a tracked probe (ImageToProbe) from an N-wire phantom recording."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from freehand3d.calibration.pipeline import calibrate_files

        console = Console(stderr=True)
        with Progress(TextColumn("segmenting frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            def factory(total: int):
                task = bar.add_task("segment", total=total)
                return lambda n: bar.advance(task, n)

            result = calibrate_files(
                calibration, phantom, output, validation_path=validation, solver=solver, config=config,
                plus_config=plus_config, tfm=tfm, overlay=overlay, detection=detection, seed=seed,
                progress_factory=factory,
            )
        val = ("" if result.pre3d_validation_mean_mm is None else
               f", validation PRE3D {result.pre3d_validation_mean_mm:.3f} +- {result.pre3d_validation_std_mm:.3f} mm "
               f"({result.validation_frames_segmented}/{result.validation_frames_total} frames)")
        typer.echo(
            f"segmented {result.frames_segmented}/{result.frames_total} frames, {result.inliers}/{result.observations} "
            f"inliers; calibration PRE3D {result.pre3d_calibration_mean_mm:.3f} +- "
            f"{result.pre3d_calibration_std_mm:.3f} mm{val}; {result.seconds:.2f} s -> {output}"
        )
