"""File-level tracking workflows behind the CLI: track a sweep file, evaluate a tracked sweep
against ground truth, plot trajectories.

Poses of a sweep in the DualTrack image frame
---------------------------------------------
A sweep stores pixel -> world transforms (``ImageTo<World>``). With the centred pixel -> image-mm
matrix ``C`` (``x_mm = (col - (W-1)/2) sx``, ``y_mm = (row - (H-1)/2) sy``) the image -> world pose
of frame k is ``P_k = ImageTo<World>_k @ C^-1`` and the DualTrack absolute pose (frame k -> frame 0)
is ``G_k = P_0^-1 @ P_k`` -- independent of the world frame, as long as it does not move.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d.errors import InputError

__all__ = [
    "sweep_spacing",
    "centred_pixel_to_image",
    "sweep_dualtrack_poses",
    "evaluate_poses",
    "evaluate_sweeps",
    "plot_trajectories",
    "track_file",
]

#: world frames tried, in order, when none is named
WORLD_FRAMES = ("Reference", "Tracker", "World")


def sweep_spacing(sweep) -> tuple[float, float]:
    """(sx, sy) mm per pixel: ``sweep.spacing`` or the column norms of ``image_to_probe``."""
    if sweep.spacing is not None:
        return tuple(float(v) for v in sweep.spacing)
    if sweep.image_to_probe is not None:
        cols = np.linalg.norm(sweep.image_to_probe[:3, :2], axis=0)
        return float(cols[0]), float(cols[1])
    raise InputError("the sweep has no pixel spacing (neither spacing nor an image-to-probe calibration)", sweep.source)


def centred_pixel_to_image(spacing, frame_shape) -> np.ndarray:
    """DualTrack's pixel (0-based) -> image-mm matrix, origin at the image centre."""
    sx, sy = (float(v) for v in spacing)
    h, w = frame_shape
    m = geometry.scaling([sx, sy, 1.0])
    m[0, 3] = -(w - 1) / 2.0 * sx
    m[1, 3] = -(h - 1) / 2.0 * sy
    return m


def _world_frame(sweep, world: str | None) -> str:
    if world:
        return world
    for name in WORLD_FRAMES:
        try:
            sweep.transform(f"ImageTo{name}")
            return name
        except InputError:
            continue
    names = ", ".join(sweep.transforms) or "none"
    raise InputError(f"cannot compose an image-to-world transform from the sweep's transforms ({names})", sweep.source)


def sweep_dualtrack_poses(sweep, world: str | None = None) -> np.ndarray:
    """(N, 4, 4) DualTrack absolute poses of a sweep (frame k -> frame 0, centred image mm).

    Parameters
    ----------
    sweep : a :class:`~freehand3d.sweep.Sweep` with a pixel -> world chain.
    world : world frame name (``Reference``, ``Tracker``...); default: the first of
        :data:`WORLD_FRAMES` that the sweep can reach.
    """
    world = _world_frame(sweep, world)
    mats, valid = sweep.transform(f"ImageTo{world}")
    if not valid.all():
        bad = np.flatnonzero(~valid)
        raise InputError(f"ImageTo{world} is invalid for {len(bad)} frames (first: {bad[0]})", sweep.source)
    c_inv = geometry.invert(centred_pixel_to_image(sweep_spacing(sweep), sweep.frame_shape))
    image_to_world = mats @ c_inv
    return geometry.invert(image_to_world[0])[None] @ image_to_world


def evaluate_poses(pred_poses, gt_poses, spacing, frame_shape=(480, 640), landmarks=None) -> dict:
    """Every tracking metric for DualTrack-frame absolute poses (N, 4, 4).

    Returns a dict with ``GPE``, ``LPE`` (all pixels; plus ``GLE``, ``LLE`` with landmarks
    ``[frame, x, y]`` 1-based), ``GPE_5pt``, ``LPE_5pt``, ``FDR_pct``, ``max_drift_mm``,
    ``avg_drift_rate_pct``, ``final_drift_mm`` and ``n_frames``.

    The all-pixel errors are computed in the DualTrack frame: DDF errors do not depend on the
    image origin (SPEC section 10.5), so the TUS-REC 1-based pixel grid is mapped to centred mm
    with ``D^-1 S``, ``D = translate((W+1)/2 sx, (H+1)/2 sy, 0)``.
    """
    from freehand3d.tracking import metrics

    pred = geometry.as_matrix_stack(pred_poses, "pred_poses")
    gt = geometry.as_matrix_stack(gt_poses, "gt_poses")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {len(pred)} frames but the ground truth has {len(gt)}")
    sx, sy = (float(v) for v in spacing)
    h, w = frame_shape
    scale = geometry.scaling([sx, sy, 1.0])
    d_inv = geometry.translation([-(w + 1) / 2.0 * sx, -(h + 1) / 2.0 * sy, 0.0])
    pg, pl = metrics.poses_to_tusrec(pred)
    gg, gl = metrics.poses_to_tusrec(gt)
    out = metrics.tusrec(pg, pl, gg, gl, d_inv @ scale, landmarks, frame_shape=(h, w))
    out.update(metrics.five_point(pred, gt, (h, w), (sx, sy)))
    out.update(metrics.drift(pred, gt))
    out["n_frames"] = int(len(pred))
    return out


def evaluate_sweeps(pred_path, gt_path, world: str | None = None, landmarks_path=None) -> dict:
    """Read a tracked sweep and its ground truth (any format :func:`freehand3d.io.read_sweep`
    reads) and return :func:`evaluate_poses` of their DualTrack-frame poses.

    ``landmarks_path``: optional ``.npy`` or CSV (``frame, x, y`` per row, 1-based pixels).
    """
    from freehand3d.io import read_sweep

    pred_sweep, gt_sweep = read_sweep(pred_path), read_sweep(gt_path)
    if len(pred_sweep) != len(gt_sweep):
        raise InputError(f"{len(pred_sweep)} frames, but the ground truth {gt_path} has {len(gt_sweep)}", pred_path)
    landmarks = None if landmarks_path is None else _read_landmarks(landmarks_path)
    spacing = sweep_spacing(gt_sweep)
    return evaluate_poses(
        sweep_dualtrack_poses(pred_sweep, world),
        sweep_dualtrack_poses(gt_sweep, world),
        spacing,
        gt_sweep.frame_shape,
        landmarks,
    )


def _read_landmarks(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError("landmark file not found", path)
    try:
        arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as exc:
        raise InputError(f"cannot read landmarks ({exc})", path) from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"landmarks must be rows of [frame, x, y], got shape {arr.shape}", path)
    return arr


def plot_trajectories(path, pred_poses, gt_poses=None, title: str | None = None) -> None:
    """Write a PNG of the image-centre trajectory in frame 0's image frame: predicted (and ground
    truth when given), seen from above (x-z) and per axis. Written atomically with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from freehand3d._atomic import atomic_path

    pred = geometry.as_matrix_stack(pred_poses)[:, :3, 3]
    gt = None if gt_poses is None else geometry.as_matrix_stack(gt_poses)[:, :3, 3]
    fig = Figure(figsize=(11, 4.5), dpi=90)
    # 2-D views draw much faster than a 3-D axes: the sweep path seen from above (x across the
    # image, z out of plane) and every coordinate against the frame index
    top = fig.add_subplot(1, 2, 1)
    top.plot(pred[:, 0], pred[:, 2], color="tab:red", label="predicted")
    if gt is not None:
        top.plot(gt[:, 0], gt[:, 2], color="tab:blue", label="ground truth")
    top.plot([0.0], [0.0], "ko", label="frame 0")
    top.set_xlabel("x (mm, along the image rows)")
    top.set_ylabel("z (mm, out of plane)")
    top.set_aspect("equal", adjustable="datalim")
    top.legend(loc="best")
    ax = fig.add_subplot(1, 2, 2)
    frames = np.arange(len(pred))
    for axis, colour in zip(range(3), ("tab:red", "tab:green", "tab:purple")):
        label = "xyz"[axis]
        ax.plot(frames, pred[:, axis], color=colour, label=f"{label} predicted")
        if gt is not None:
            ax.plot(frames, gt[:, axis], color=colour, linestyle="--", label=f"{label} truth")
    ax.set_xlabel("frame")
    ax.set_ylabel("position of the image centre in frame 0 (mm)")
    ax.legend(fontsize="small", ncol=2)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def check_track_options(precision: str, kernel: str, threads: int | None, device: str | None,
                        preset: str | None = None) -> str:
    """Validate the inference options before any work; returns the device to use (default: CUDA
    when available, else CPU). Raises :class:`~freehand3d.errors.ConfigError` naming the option."""
    import torch

    from freehand3d.errors import ConfigError
    from freehand3d.tracking.infer import PRECISIONS
    from freehand3d.tracking.kernels import KERNELS
    from freehand3d.tracking.model.presets import PRESETS

    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}", "--preset")

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}", "--precision")
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}", "--kernel")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}", "--threads")
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N", "--device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but no CUDA device is available; use --device cpu", "--device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{device} does not exist ({torch.cuda.device_count()} CUDA devices)", "--device")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda or cuda:N", "--device")
    return device


def track_file(
    sweep_path,
    checkpoint,
    out_path,
    preset: str | None = None,
    device: str | None = None,
    plot_path=None,
    world: str | None = None,
    to_uint8: str = "dtype",
    window=None,
    precision: str = "fp32",
    kernel: str = "auto",
    threads: int | None = None,
    phase=None,
    progress=None,
) -> dict:
    """Track a sweep file with a DualTrack checkpoint and write the tracked sweep.

    Parameters
    ----------
    sweep_path : any sweep :func:`freehand3d.io.read_sweep` reads.
    checkpoint : DualTrack checkpoint (ours or official).
    out_path : output sweep (e.g. ``tracked.igs.mha``), written atomically.
    preset : model preset, None to infer it from the checkpoint.
    device : "cpu", "cuda"...; None = CUDA when available.
    plot_path : optional PNG of the predicted trajectory (with the ground truth when the input
        sweep has poses).
    world : world frame of the input's ground truth (default: first reachable of
        :data:`WORLD_FRAMES`).
    to_uint8, window : how frames other than 8-bit grey become the uint8 DualTrack's preprocessing
        takes (:func:`freehand3d.sweep.to_uint8`); the written sweep keeps the input's frames.
    precision, kernel, threads : see :func:`freehand3d.tracking.predict`.
    phase : optional ``phase(description, total=None)`` called as each step starts (reading,
        loading the model, the local CNN with ``total`` frames, writing, the plot).
    progress : optional ``progress(done, total)``: frames the local CNN has seen.

    Returns
    -------
    dict with ``n_frames``, ``out_path``, ``precision``, ``device``, ``kernels`` and, when the
    input has ground-truth poses, the metrics of :func:`evaluate_poses`.

    Raises
    ------
    ConfigError
        Unknown precision or kernel, threads < 1, an unknown device or CUDA requested without
        CUDA -- checked before anything is read.
    """
    from freehand3d.io import read_sweep, write_sweep
    from freehand3d.tracking import load_dualtrack, track

    device = check_track_options(precision, kernel, threads, device, preset)
    phase = phase or (lambda description, total=None: None)
    phase(f"reading {Path(sweep_path).name}")
    sweep = read_sweep(sweep_path)
    phase("loading the model")
    model = load_dualtrack(checkpoint, preset=preset)
    phase("local CNN (frames)", len(sweep))
    tracked = track(sweep.as_uint8(to_uint8, window), model, device=device, precision=precision, kernel=kernel,
                    threads=threads, progress=progress or False)
    tracked.frames = sweep.frames  # the model saw the converted frames; the output keeps the input's
    tracked.metadata.pop("Uint8Conversion", None)
    info = {
        "precision": tracked.metadata.get("DualTrackPrecision", precision),
        "device": device,
        "kernels": tracked.metadata.get("DualTrackKernels", ""),
    }
    phase(f"writing {Path(out_path).name}")
    write_sweep(tracked, out_path)
    result = {"n_frames": len(tracked), "out_path": os.fspath(out_path), **info}
    pred = sweep_dualtrack_poses(tracked)
    gt = None
    try:
        gt = sweep_dualtrack_poses(sweep, world)
    except InputError:
        gt = None  # no ground truth in the input: nothing to compare with
    if gt is not None:
        result["metrics"] = evaluate_poses(pred, gt, sweep_spacing(sweep), sweep.frame_shape)
    if plot_path is not None:
        phase(f"writing {Path(plot_path).name}")
        plot_trajectories(plot_path, pred, gt, title=Path(sweep_path).name)
    return result
