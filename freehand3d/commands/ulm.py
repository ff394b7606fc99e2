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
    snr_db: Optional[float] = typer.Option(None, "--snr-db", help="Add noise of this in-band SNR (dB; the G-ULM authors' noise shape), e.g. 30."),
    no_pulse: bool = typer.Option(False, "--no-pulse", help="Leave the pulse out of rf.npz (as in a recording that lacks it)."),
) -> None:
    """Simulate microbubbles flowing in vessels and their plane-wave RF channel data."""
    import math

    from freehand3d.errors import ConfigError
    from freehand3d.simulate.rf import simulate_dataset

    if frames < 1:
        raise ConfigError("must be at least 1", "--frames")
    if backend not in ("analytic", "pymust"):
        raise ConfigError("use 'analytic' or 'pymust'", "--backend")
    if snr_db is not None and not (math.isfinite(snr_db) and -20 <= snr_db <= 100):
        raise ConfigError(f"must be between -20 and 100 dB, got {snr_db:g}", "--snr-db")
    if not (math.isfinite(angle_deg) and abs(angle_deg) <= 28):
        raise ConfigError(f"must be within +-28 degrees, got {angle_deg:g}", "--angle-deg")
    if not (math.isfinite(bubbles) and 0 < bubbles <= 1000):
        raise ConfigError(f"must be in (0, 1000], got {bubbles:g}", "--bubbles")
    rf_path, gt_path = simulate_dataset(out, frames, seed, tx_angle=math.radians(angle_deg), clutter_db=clutter_db, backend=backend, bubbles_per_frame=bubbles, snr_db=snr_db, store_pulse=not no_pulse, progress=True)
    typer.echo(f"wrote {rf_path} and {gt_path}")


@ulm_app.command("localize")
def localize(
    rf: Path = typer.Argument(..., help="RF file: rf.npz (layout of 'ulm simulate'), a PALA RF .mat or a Verasonics .mat (RcvData, Receive, Trans)."),
    out: Path = typer.Option(..., "-o", "--out", help="Points CSV (frame,x_mm,z_mm)."),
    channels: int = typer.Option(128, "--channels", help="Channels used, spread evenly over the aperture."),
    method: str = typer.Option("gulm", "--method", help="gulm (geometric) | das-wa (beamforming baseline)."),
    baseline_mm: Optional[float] = typer.Option(None, "--baseline-mm", help="G-ULM channel-pair baseline in mm (default: derived from the probe, see docs/ulm.md)."),
    gap: Optional[int] = typer.Option(None, "--gap", help="G-ULM channel-pair gap in selected channels (overrides --baseline-mm)."),
    bandwidth_mm: Optional[float] = typer.Option(None, "--bandwidth-mm", help="G-ULM mean-shift radius in mm (default lambda/4)."),
    min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", help="G-ULM intersection points a bubble needs (default 5 percent of the channel pairs, at least 3)."),
    false_alarms: Optional[float] = typer.Option(None, "--false-alarms", help="Noise-floor (CFAR) threshold as expected noise crossings per frame (default: gulm 10 echoes, rejected by geometry; das-wa 1e-4 maxima per image)."),
    threshold_db: Optional[float] = typer.Option(None, "--threshold-db", help="Also require echoes/pixels this many dB below the frame maximum (default: gulm -26, das-wa -20; the noise floor applies too)."),
    coherent: Optional[bool] = typer.Option(None, "--coherent/--no-coherent", help="G-ULM: find weak bubbles by the coherent sum of the selected channels and locate them from their own echoes (default on; see docs/ulm.md)."),
) -> None:
    """Localize microbubbles in every frame (warns when the pulse is estimated from the data)."""
    import math

    from freehand3d.errors import ConfigError
    from freehand3d.ulm.files import localize_file

    options = {}
    for name, value, low in (("--baseline-mm", baseline_mm, 0.0), ("--bandwidth-mm", bandwidth_mm, 0.0)):
        if value is not None and not (math.isfinite(value) and value > low):
            raise ConfigError(f"must be a positive number of mm, got {value:g}", name)
        if value is not None and value > 50:
            raise ConfigError(f"{value:g} mm is beyond any probe aperture (give mm, not um)", name)
    for name, value in (("--gap", gap), ("--min-cluster-size", min_cluster_size)):
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, got {value}", name)
    if false_alarms is not None and not (math.isfinite(false_alarms) and 0 < false_alarms <= 1000):
        raise ConfigError(f"must be in (0, 1000] detections per frame, got {false_alarms:g}", "--false-alarms")
    if threshold_db is not None and not (math.isfinite(threshold_db) and threshold_db < 0):
        raise ConfigError(f"must be negative dB (below the maximum), got {threshold_db:g}", "--threshold-db")
    if false_alarms is not None:
        options["false_alarms"] = false_alarms
    if threshold_db is not None:
        options["threshold_db"] = threshold_db
    if method == "gulm":
        for key, value in (("baseline", baseline_mm), ("gap", gap), ("bandwidth", bandwidth_mm), ("min_cluster_size", min_cluster_size), ("coherent", coherent)):
            if value is not None:
                options[key] = value
    elif any(v is not None for v in (baseline_mm, gap, bandwidth_mm, min_cluster_size, coherent)):
        raise ConfigError("--baseline-mm/--gap/--bandwidth-mm/--min-cluster-size/--coherent apply to --method gulm only", "--method")
    points = localize_file(rf, out, method=method, channels=channels, progress=True, **options)
    typer.echo(f"wrote {len(points)} localizations to {out}")


@ulm_app.command("evaluate")
def evaluate(
    points: Path = typer.Argument(..., help="Points CSV from 'ulm localize'."),
    gt: Path = typer.Argument(..., help="Ground truth: gt.npz (ListPos in mm, x,z,amplitude) or PALA ListPos (.mat Media.ListPos, x,y,z in wavelengths)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    convention: str = typer.Option("both", "--convention", help="ours (one-to-one assignment) | pala (greedy nearest, per-frame mean 'RMSE') | both."),
) -> None:
    """Scores: error (lambda/10), Jaccard, TP/FP/FN in our and PALA's pairing conventions, SSIM."""
    import json

    from freehand3d.errors import ConfigError
    from freehand3d.ulm.files import evaluate_files

    if convention not in ("ours", "pala", "both"):
        raise ConfigError(f"use ours, pala or both, got {convention!r}", "--convention")
    result = evaluate_files(points, gt, convention=convention)
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
    gamma: float = typer.Option(0.5, "--gamma", help="Display gamma (< 1 shows single tracks next to busy vessels)."),
) -> None:
    """Render localizations as a density map (ULM image)."""
    from freehand3d.ulm.files import render_file

    density = render_file(points, out, pixel=pixel_mm, gamma=gamma)
    typer.echo(f"wrote {out} ({density.shape[1]} x {density.shape[0]} px)")


def register(app: typer.Typer) -> None:
    app.add_typer(ulm_app, name="ulm")
