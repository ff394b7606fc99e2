"""Small synthetic DualTrack-format sweeps with exact poses, for the tracking training/CLI tests.

Each sweep is a window sliding over a smooth random texture: frame k shows the texture shifted by
a constant number of pixels per frame along the columns, so the probe moves in-plane along the
image x axis by ``shift * sx`` mm per frame (a motion the model can see).
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

SPACING = (0.3, 0.3)


def shift_sweep(n_frames: int, shape=(48, 64), shift_px: int = 2, seed: int = 0):
    """-> frames (N, H, W) uint8 and tracking (N, 4, 4) image (centred mm) -> world."""
    rng = np.random.default_rng(seed)
    h, w = shape
    width = w + shift_px * (n_frames - 1) + 1
    texture = gaussian_filter(rng.normal(size=(h, width)), 1.5)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-12)
    frames = np.stack([texture[:, k * shift_px : k * shift_px + w] for k in range(n_frames)])
    frames = np.clip(frames * 255, 0, 255).astype(np.uint8)
    tracking = np.tile(np.eye(4), (n_frames, 1, 1))
    # the window moves right over the texture, so the image frame moves by +shift along x
    tracking[:, 0, 3] = np.arange(n_frames) * shift_px * SPACING[0]
    tracking[:, 2, 3] = 50.0
    return frames, tracking


def write_h5(path, frames, tracking):
    with h5py.File(path, "w") as fh:
        fh["images"] = frames
        fh["tracking"] = tracking
        fh["spacing"] = np.array([SPACING[0], SPACING[1], 1.0])
        fh["dimensions"] = np.array([frames.shape[2], frames.shape[1], 1])


def make_dataset(folder, n_train=3, n_val=1, n_frames=24, shape=(48, 64)):
    """Write sweeps with shifts 1..3 px/frame and a CSV listing them; return the CSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_train + n_val):
        split = "train" if k < n_train else "val"
        frames, tracking = shift_sweep(n_frames, shape, shift_px=1 + k % 3, seed=k)
        name = f"sweep{k}.h5"
        write_h5(folder / name, frames, tracking)
        rows.append({"sweep_id": f"s{k}", "path": name, "split": split})
    csv_path = folder / "sweeps.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sweep_id", "path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def small_config(name: str = "tiny-test"):
    """A tiny DualTrack for 48 x 64 frames: 32 px local crops (2 x 2 CNN map), 32 px global frames."""
    from freehand3d.tracking.model import get_config

    return get_config("tiny").replace(
        name=name,
        local_size=32,
        pool_grid=2,
        pool_patch=1,
        global_size=32,
        global_stride=4,
        max_positions=64,
    )
