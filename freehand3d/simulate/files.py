"""Simulate to files: the sweep (any format :func:`freehand3d.io.write_sweep` knows), its ground
truth beside it (``NAME.EXT.truth.npz``, e.g. ``run.igs.mha.truth.npz``) and an optional preview PNG. The ``freehand3d simulate``
commands call these."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.simulate._truth import save_truth, truth_path_for
from freehand3d.sweep import Sweep


def _check_output(output) -> None:
    """Fail before the (slow) simulation when the output name has no known sweep format."""
    from freehand3d.errors import InputError
    from freehand3d.io import SEQUENCE_SUFFIXES

    from freehand3d._atomic import check_output_path

    if not Path(output).name.lower().endswith(SEQUENCE_SUFFIXES + (".h5", ".hdf5")):
        raise InputError("unknown sweep format (use .igs.mha, .igs.nrrd, .seq.mha, .mha, .nrrd or .h5)", output)
    check_output_path(output, "sweep")
    check_output_path(truth_path_for(output), "ground truth")


def _check_preview(preview) -> None:
    from freehand3d._atomic import check_output_path
    from freehand3d.errors import ConfigError

    if preview is not None:
        if not Path(preview).name.lower().endswith(".png"):
            raise ConfigError("the preview is a PNG; give a name ending in .png", preview)
        check_output_path(preview, "preview")


def simulate_nwire_to_file(
    output: str | os.PathLike,
    phantom: str | os.PathLike = "fcal-1.2",
    n_frames: int = 100,
    noise: str | float = "low",
    wall_echoes: bool = True,
    corrupt_pose_fraction: float = 0.0,
    missing_phantom_frames: int | float = 0,
    seed: int = 0,
    preview: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path]:
    """Simulate an N-wire calibration recording (:func:`~freehand3d.simulate.simulate_nwire`) and
    write it, its truth (``.truth.npz``) and optionally a preview PNG.

    Returns
    -------
    (sweep path, truth path)
    """
    from freehand3d.io import write_sweep
    from freehand3d.phantoms import load_phantom
    from freehand3d.simulate.nwire import simulate_nwire

    _check_output(output)
    _check_preview(preview)
    model = load_phantom(phantom)
    sweep, truth = simulate_nwire(
        model, n_frames=n_frames, noise=noise, wall_echoes=wall_echoes,
        corrupt_pose_fraction=corrupt_pose_fraction, missing_phantom_frames=missing_phantom_frames,
        seed=seed, progress=progress,
    )
    truth_file = truth_path_for(output)
    write_sweep(sweep, output)
    save_truth(truth_file, truth)
    if preview is not None:
        save_nwire_preview(sweep, truth, preview)
    return Path(output), truth_file


def simulate_sweep_to_file(
    output: str | os.PathLike,
    n_frames: int = 200,
    frame_size: tuple[int, int] = (480, 640),
    seed: int = 0,
    device: str = "cpu",
    preview: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path]:
    """Simulate a freehand sweep (:func:`~freehand3d.simulate.simulate_freehand`) and write it, its
    truth (``.truth.npz``, including the echogenicity volume) and optionally a preview PNG.

    Returns
    -------
    (sweep path, truth path)
    """
    from freehand3d.io import write_sweep
    from freehand3d.simulate.freehand import simulate_freehand

    _check_output(output)
    _check_preview(preview)
    sweep, truth = simulate_freehand(n_frames=n_frames, frame_size=frame_size, seed=seed, device=device,
                                     progress=progress)
    truth_file = truth_path_for(output)
    write_sweep(sweep, output)
    save_truth(truth_file, truth)
    if preview is not None:
        save_sweep_preview(sweep, truth, preview)
    return Path(output), truth_file


def _pick_frames(n: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def save_nwire_preview(sweep: Sweep, truth: dict, path: str | os.PathLike, n_show: int = 4) -> None:
    """PNG of a few frames side by side (top: as simulated; bottom: the same with the true wire
    positions marked), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = _pick_frames(len(sweep), n_show)
    fig, axes = plt.subplots(2, len(picks), figsize=(4.1 * len(picks), 6.4), squeeze=False)
    for col, i in enumerate(picks):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(sweep.frames[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        px = truth["wire_pixels"][i]
        ok = np.isfinite(px).all(axis=1)
        axes[1, col].plot(px[ok, 0], px[ok, 1], "+", color="lime", ms=7, mew=1)
        note = []
        if not truth["has_phantom"][i]:
            note.append("no phantom")
        if truth["corrupted"][i]:
            note.append("corrupted pose")
        axes[0, col].set_title(f"frame {i}" + (f" ({', '.join(note)})" if note else ""), fontsize=9)
    axes[1, 0].set_ylabel("true wire positions", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def save_sweep_preview(sweep: Sweep, truth: dict, path: str | os.PathLike, n_show: int = 3) -> None:
    """PNG of a few frames side by side and a top view of the trajectory (the transducer face of
    every few frames in the Reference frame), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from freehand3d import geometry

    picks = _pick_frames(len(sweep), n_show)
    fig = plt.figure(figsize=(4.2 * (len(picks) + 1.3), 3.6))
    for col, i in enumerate(picks):
        ax = fig.add_subplot(1, len(picks) + 1, col + 1)
        ax.imshow(sweep.frames[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"frame {i}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    # top view of the trajectory: the transducer face (top image row) of every few frames
    ax = fig.add_subplot(1, len(picks) + 1, len(picks) + 1)
    height, width = sweep.frame_shape
    mats = truth["image_to_reference"]
    face = np.array([[0.0, 0.0], [width - 1.0, 0.0]])
    for i in _pick_frames(len(mats), 25):
        ends = geometry.apply(mats[i], face)
        ax.plot(ends[:, 0], ends[:, 2], color="tab:blue", lw=0.8, alpha=0.6)
    centres = geometry.apply(mats, np.array([(width - 1) / 2.0, 0.0]))
    ax.plot(centres[:, 0], centres[:, 2], color="tab:red", lw=1.5, label="transducer centre")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (mm)", fontsize=8)
    ax.set_ylabel("z, sweep direction (mm)", fontsize=8)
    ax.set_title("trajectory, top view (Reference frame)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
