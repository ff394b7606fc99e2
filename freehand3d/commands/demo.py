"""CLI: ``freehand3d demo`` — the whole chain on bundled and simulated data."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the outputs and report.md."),
        skip: list[str] = typer.Option([], "--skip", help="Steps to skip: calibration, reconstruction, tracking, ulm."),
    ) -> None:
        """Calibrate, reconstruct, track and (optionally) ULM on bundled data; writes OUT/report.md."""
        from rich.console import Console

        from freehand3d._atomic import check_output_dir
        from freehand3d.demo import STEPS, run_demo
        from freehand3d.errors import ConfigError

        unknown = [s for s in skip if s not in STEPS]
        if unknown:
            raise ConfigError(f"unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}", "--skip")
        check_output_dir(out, "demo output folder")
        console = Console()
        steps = tuple(s for s in STEPS if s not in skip)
        run_demo(out, say=lambda line: console.print(line, highlight=False, markup=False), steps=steps)
