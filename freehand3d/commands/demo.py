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

        from freehand3d.demo import run_demo

        console = Console()
        steps = tuple(s for s in ("calibration", "reconstruction", "tracking", "ulm") if s not in skip)
        run_demo(out, say=lambda line: console.print(line, highlight=False, markup=False), steps=steps)
