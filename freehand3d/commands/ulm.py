"""CLI: ``freehand3d ulm simulate|localize|evaluate|render`` (geometric ULM and its benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ulm_app = typer.Typer(
    help="Ultrasound localization microscopy from RF channel data (G-ULM and a DAS baseline).",
    no_args_is_help=True,
)


@ulm_app.command("simulate")
def simulate(
    out: Path = typer.Option(..., "-o", "--out", help="Folder for rf.npz (RF + acquisition) and gt.npz (ListPos)."),
    frames: int = typer.Option(20, "--frames", help="Number of frames."),
    seed: int = typer.Option(0, "--seed", help="Random seed (bubbles and noise)."),
    clutter_db: Optional[float] = typer.Option(None, "--clutter-db", help="PALA noise clutter level, e.g. -30, -20, -10 (default: noiseless)."),
    angle_deg: float = typer.Option(0.0, "--angle-deg", help="Plane-wave steering angle in degrees."),
    bubbles: float = typer.Option(12.0, "--bubbles", help="Mean number of bubbles per frame."),
    backend: str = typer.Option("analytic", "--backend", help="analytic|pymust (pymust needs the ulm-sim extra)."),
) -> None:
    """Simulate microbubbles flowing in vessels and their plane-wave RF channel data."""
    import math

    from freehand3d.errors import ConfigError
    from freehand3d.simulate.rf import simulate_dataset

    if frames < 1:
        raise ConfigError("must be at least 1", "--frames")
    if backend not in ("analytic", "pymust"):
        raise ConfigError("use 'analytic' or 'pymust'", "--backend")
    rf_path, gt_path = simulate_dataset(out, frames, seed, tx_angle=math.radians(angle_deg), clutter_db=clutter_db, backend=backend, bubbles_per_frame=bubbles, progress=True)
    typer.echo(f"wrote {rf_path} and {gt_path}")


@ulm_app.command("localize")
def localize(
    rf: Path = typer.Argument(..., help="rf.npz written by 'ulm simulate' (or in its layout)."),
    out: Path = typer.Option(..., "-o", "--out", help="Points CSV (frame,x_mm,z_mm)."),
    channels: int = typer.Option(128, "--channels", help="Channels used, spread evenly over the aperture."),
    method: str = typer.Option("gulm", "--method", help="gulm (geometric) | das-wa (beamforming baseline)."),
) -> None:
    """Localize microbubbles in every frame."""
    from freehand3d.ulm.files import localize_file

    points = localize_file(rf, out, method=method, channels=channels, progress=True)
    typer.echo(f"wrote {len(points)} localizations to {out}")


@ulm_app.command("evaluate")
def evaluate(
    points: Path = typer.Argument(..., help="Points CSV from 'ulm localize'."),
    gt: Path = typer.Argument(..., help="gt.npz with PALA ListPos."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """PALA-style scores: error (lambda/10), Jaccard, TP/FP/FN, SSIM."""
    import json

    from freehand3d.ulm.files import evaluate_files

    result = evaluate_files(points, gt)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@ulm_app.command("render")
def render(
    points: Path = typer.Argument(..., help="Points CSV from 'ulm localize'."),
    out: Path = typer.Option(..., "-o", "--out", help="Density map PNG."),
    pixel_mm: Optional[float] = typer.Option(None, "--pixel-mm", help="Pixel size in mm (default wavelength/10)."),
) -> None:
    """Render localizations as a density map (ULM image)."""
    from freehand3d.ulm.files import render_file

    density = render_file(points, out, pixel=pixel_mm)
    typer.echo(f"wrote {out} ({density.shape[1]} x {density.shape[0]} px)")


def register(app: typer.Typer) -> None:
    app.add_typer(ulm_app, name="ulm")
