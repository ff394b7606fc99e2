"""File-level ULM operations behind the ``freehand3d ulm`` commands (one library call per command).

Points CSV format: an optional first comment line ``# wavelength_mm=<value>`` followed by a header
``frame,x_mm,z_mm`` and one row per localization (frame index, lateral and axial position in mm).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.errors import ConfigError, InputError

__all__ = ["write_points_csv", "read_points_csv", "localize_file", "evaluate_files", "render_file"]

METHODS = ("gulm", "das-wa")


def write_points_csv(path: str | os.PathLike, points: np.ndarray, wavelength: float | None = None) -> None:
    """Write (N, 3) (frame, x, z) localizations to CSV (atomically)."""
    points = np.asarray(points, float).reshape(-1, 3)
    buf = io.StringIO()
    if wavelength is not None:
        buf.write(f"# wavelength_mm={wavelength:.9g}\n")
    buf.write("frame,x_mm,z_mm\n")
    for frame, x, z in points:
        buf.write(f"{int(frame)},{x:.6f},{z:.6f}\n")
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a points CSV: ((N, 3) array, wavelength in mm or None)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read points ({exc.strerror or exc})", path) from exc
    wavelength = None
    rows = []
    header_seen = False
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            if "wavelength_mm=" in line:
                try:
                    wavelength = float(line.split("wavelength_mm=")[1].split()[0])
                except ValueError as exc:
                    raise InputError(f"line {number}: bad wavelength comment", path) from exc
            continue
        if not header_seen:
            if line.replace(" ", "") != "frame,x_mm,z_mm":
                raise InputError("expected the header 'frame,x_mm,z_mm'", path)
            header_seen = True
            continue
        parts = line.split(",")
        try:
            rows.append([float(p) for p in parts])
        except ValueError as exc:
            raise InputError(f"line {number}: not three numbers", path) from exc
        if len(parts) != 3:
            raise InputError(f"line {number}: expected 3 columns, got {len(parts)}", path)
    if not header_seen:
        raise InputError("empty file: expected the header 'frame,x_mm,z_mm'", path)
    return np.asarray(rows, float).reshape(-1, 3), wavelength


def localize_file(
    rf_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    method: str = "gulm",
    channels: int = 128,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """Localize every frame of an ``rf.npz`` and write the points CSV; returns the (N, 3) points."""
    from freehand3d.simulate.rf import load_rf

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: use one of {', '.join(METHODS)}", "--method")
    rf, probe, acq = load_rf(rf_path)
    if not 2 <= channels <= probe.n_elements:
        raise ConfigError(f"--channels must be between 2 and {probe.n_elements}", "--channels")
    kwargs = dict(tx_angle=float(acq["tx_angle"]), t0=float(acq["t0"]), channels=channels, progress=progress, **options)
    if method == "gulm":
        from freehand3d.ulm.pipeline import localize

        if "pulse_t" in acq and "pulse" in acq and "pulse" not in kwargs:
            kwargs["pulse"] = (np.asarray(acq["pulse_t"], float), np.asarray(acq["pulse"], float))
        points = localize(rf, probe, **kwargs)
    else:
        from freehand3d.ulm.baseline import localize_das_wa

        points = localize_das_wa(rf, probe, **kwargs)
    write_points_csv(out_csv, points, probe.wavelength)
    return points


def evaluate_files(points_csv: str | os.PathLike, gt_path: str | os.PathLike, *, json_path: str | os.PathLike | None = None) -> dict:
    """Score a points CSV against ``gt.npz`` (see :func:`freehand3d.ulm.metrics.evaluate`)."""
    from freehand3d.simulate.rf import load_ground_truth
    from freehand3d.ulm.metrics import evaluate

    points, wavelength_csv = read_points_csv(points_csv)
    list_pos = load_ground_truth(gt_path)
    with np.load(gt_path) as data:
        wavelength = float(data["wavelength"]) if "wavelength" in data.files else wavelength_csv
    if wavelength is None:
        raise InputError("no wavelength in the ground truth or the points file", gt_path)
    result = evaluate(points, list_pos, wavelength)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def render_file(points_csv: str | os.PathLike, out_png: str | os.PathLike, *, pixel: float | None = None, gamma: float = 0.5) -> np.ndarray:
    """Render a points CSV to a density PNG; ``pixel`` (mm) defaults to wavelength / 10."""
    from freehand3d.ulm.render import save_density_png

    points, wavelength = read_points_csv(points_csv)
    if pixel is None:
        if wavelength is None:
            raise InputError("no '# wavelength_mm=' line: give the pixel size explicitly", points_csv)
        pixel = wavelength / 10
    if pixel <= 0:
        raise ConfigError("pixel size must be positive", "--pixel")
    return save_density_png(out_png, points[:, 1:], pixel, gamma=gamma)
