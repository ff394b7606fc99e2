"""A short G-ULM vs DAS+WA comparison for ``freehand3d demo`` (PyMUST data, a few frames)."""

from __future__ import annotations

import os
from pathlib import Path


def run_ulm_demo(
    folder: str | os.PathLike,
    *,
    frames: int = 4,
    seed: int = 0,
    clutter_db: float = -20.0,
    backend: str = "pymust",
) -> tuple[dict, list[Path]]:
    """Simulate ``frames`` frames, localize with G-ULM (16 and 128 channels) and DAS+WA (128), score.

    Writes ``folder/sim/rf.npz``, ``folder/sim/gt.npz``, one points CSV and one density PNG per
    method. Returns (numbers for the report, PNG paths).
    """
    from freehand3d.simulate.rf import simulate_dataset
    from freehand3d.ulm.files import evaluate_files, localize_file, render_file

    folder = Path(folder)
    rf_path, gt_path = simulate_dataset(folder / "sim", frames, seed, clutter_db=clutter_db, backend=backend)
    numbers: dict = {"frames": frames, "clutter_db": clutter_db, "simulator": backend}
    pngs: list[Path] = []
    for method, channels in (("gulm", 16), ("gulm", 128), ("das-wa", 128)):
        name = f"{method}-{channels}"
        points_csv = folder / f"{name}.csv"
        localize_file(rf_path, points_csv, method=method, channels=channels)
        scores = evaluate_files(points_csv, gt_path)
        label = "G-ULM" if method == "gulm" else "DAS+WA"
        numbers[f"{label} {channels} ch error (lambda/10)"] = round(scores["error_lambda10"], 3)
        numbers[f"{label} {channels} ch Jaccard"] = round(scores["jaccard"], 3)
        png = folder / f"{name}.png"
        render_file(points_csv, png, title=f"{label}, {channels} channels, {frames} PyMUST frames "
                                          f"(Jaccard {scores['jaccard']:.3f}, error {scores['error_lambda10']:.3f} lambda/10)")
        pngs.append(png)
    return numbers, pngs
