"""Reference trackers that need no checkpoint, so every tracking number has a baseline beside it.

Every tracker has the same signature::

    trajectory = tracker(sweep, **options)      # sweep: a Sweep or (N, H, W) uint8 frames

and returns an (N, 4, 4) float64 array shaped like the ``ImageToReference`` of
:func:`freehand3d.tracking.track`: pixel (col, row, 0, 1) of frame k -> mm in *frame 0's DualTrack
image frame* (origin at the image centre, x along columns, y along rows, z out of plane, +z the
sweep direction). Score it against ground truth with :func:`score` (the same metrics as
``freehand3d evaluate``: GPE/LPE over all pixels, the 5-point proxy, drift).

Trackers
--------
:func:`zero_motion`
    Every frame at frame 0's pose (the "identity" prediction TUS-REC normalises against).
:func:`constant_velocity`
    The same relative motion between every pair of frames: a given 6-DoF step (e.g. the mean
    step of the training sweeps, :func:`mean_step`), or by default straight elevational motion at
    the speed the decorrelation tracker measures over the whole sweep.
:func:`decorrelation`
    Classical speckle decorrelation (e.g. Tuthill et al. 1998, Chen et al. 1997; re-implemented
    from the textbook model): per patch of consecutive frames, the in-plane shift by FFT
    cross-correlation, a least-squares rigid in-plane fit (tx, ty, rz) of the patch shifts, then
    the normalised correlation of the registered patches converted to an elevational distance
    with the Gaussian decorrelation curve ``rho = rho0 exp(-d^2 / (2 sigma^2))``; a plane fitted
    to the per-patch distances gives tz and the two out-of-plane tilts. Speckle cannot tell the
    direction of motion: ``direction`` (+1, the sweep goes along +z) is an input, as in practice.
    ``sigma_mm``/``rho0`` come from :func:`calibrate_decorrelation` on a sweep with known motion
    (the defaults were calibrated on :func:`freehand3d.simulate.simulate_freehand` sweeps).

Example
-------
>>> from freehand3d.simulate import simulate_freehand
>>> sweep, truth = simulate_freehand(n_frames=6, frame_size=(120, 160), seed=1)
>>> traj = decorrelation(sweep)
>>> traj.shape, sorted(score(traj, truth["image_to_reference"], sweep.spacing, (120, 160)))[:2]
((6, 4, 4), ['FDR_pct', 'GPE'])
"""

from __future__ import annotations

import numpy as np

from freehand3d import geometry
from freehand3d.errors import InputError

__all__ = [
    "zero_motion",
    "constant_velocity",
    "decorrelation",
    "calibrate_decorrelation",
    "mean_step",
    "score",
    "run_baselines",
    "BASELINES",
    "DEFAULT_SIGMA_MM",
    "DEFAULT_RHO0",
]

#: Gaussian decorrelation width (mm) and zero-distance correlation of the registered patches,
#: fitted by :func:`calibrate_decorrelation` on simulate_freehand sweeps (480x640, seeds 100-101,
#: 120 frames each; the simulator's elevational point-spread sigma is 0.7 mm).
DEFAULT_SIGMA_MM = 0.70
DEFAULT_RHO0 = 0.97

#: patch side (pixels) and the largest in-plane shift (pixels) the patch search can find
PATCH = 64


def _frames_and_spacing(sweep, spacing):
    from freehand3d.sweep import Sweep

    if isinstance(sweep, Sweep):
        frames = sweep.frames
        if spacing is None:
            spacing = sweep.spacing
            if spacing is None and sweep.image_to_probe is not None:
                cols = np.linalg.norm(sweep.image_to_probe[:3, :2], axis=0)
                spacing = (float(cols[0]), float(cols[1]))
        source = sweep.source
    else:
        frames, source = sweep, None
    frames = np.asarray(frames)
    if frames.ndim != 3 or len(frames) < 2:
        raise InputError(f"a baseline needs (N >= 2, H, W) frames, got shape {frames.shape}", source)
    if spacing is None:
        from freehand3d.tracking.infer import TUSREC_SPACING

        spacing = TUSREC_SPACING
    return frames, tuple(float(v) for v in spacing)


def _to_image_to_reference(poses_global, frame_shape, spacing) -> np.ndarray:
    from freehand3d.tracking.infer import pixel_to_image

    return poses_global @ pixel_to_image(frame_shape, spacing)


def _from_image_to_reference(trajectory, frame_shape, spacing) -> np.ndarray:
    """ImageToReference-like (N, 4, 4) -> DualTrack absolute poses (frame k -> frame 0)."""
    from freehand3d.tracking.workflows import centred_pixel_to_image

    mats = geometry.as_matrix_stack(trajectory, "trajectory") @ geometry.invert(centred_pixel_to_image(spacing, frame_shape))
    return geometry.invert(mats[0])[None] @ mats


def zero_motion(sweep, spacing=None) -> np.ndarray:
    """Every frame at frame 0's pose: (N, 4, 4) ImageToReference-like."""
    frames, spacing = _frames_and_spacing(sweep, spacing)
    return _to_image_to_reference(np.tile(np.eye(4), (len(frames), 1, 1)), frames.shape[1:], spacing)


def constant_velocity(sweep, step=None, spacing=None, direction: int = 1) -> np.ndarray:
    """The same relative motion between all consecutive frames.

    Parameters
    ----------
    step : a 6-vector [tx, ty, tz (mm), rx, ry, rz (degrees)] (DualTrack's convention: frame i+1
        relative to frame i, see :func:`~freehand3d.tracking.compose_poses`) or a 4x4 matrix; e.g.
        :func:`mean_step` of training sweeps. Default: straight elevational motion ``[0, 0, v, 0,
        0, 0]`` with ``v`` the mean elevational step :func:`decorrelation` measures over the sweep.
    direction : sign of the elevational motion for the default step.
    """
    from freehand3d.tracking.infer import compose_poses

    frames, spacing = _frames_and_spacing(sweep, spacing)
    n = len(frames)
    if step is None:
        steps = _decorrelation_steps(frames, spacing, DEFAULT_SIGMA_MM, DEFAULT_RHO0, direction)
        step = np.array([0.0, 0.0, float(np.mean(steps[:, 2])), 0.0, 0.0, 0.0])
    step = np.asarray(step, dtype=np.float64)
    if step.shape == (4, 4):
        poses = np.tile(np.eye(4), (n, 1, 1))
        for i in range(1, n):
            poses[i] = poses[i - 1] @ step
    elif step.shape == (6,):
        poses = compose_poses(np.tile(step, (n - 1, 1)))[0]
    else:
        raise ValueError(f"step must be a 6-vector or a 4x4 matrix, got shape {step.shape}")
    return _to_image_to_reference(poses, frames.shape[1:], spacing)


def mean_step(trajectories, frame_shapes=None, spacings=None) -> np.ndarray:
    """Mean relative 6-DoF step [tx, ty, tz, rx, ry, rz] over DualTrack absolute pose stacks.

    ``trajectories``: a list of (N, 4, 4) DualTrack absolute poses (frame k -> frame 0), or of
    ImageToReference-like stacks when ``frame_shapes`` and ``spacings`` (one per stack) are given.
    """
    rows = []
    for i, traj in enumerate(trajectories):
        poses = geometry.as_matrix_stack(traj, "trajectory")
        if frame_shapes is not None:
            poses = _from_image_to_reference(poses, frame_shapes[i], spacings[i])
        rel = geometry.invert(poses[:-1]) @ poses[1:]
        rows.append(geometry.matrix_to_params(rel, "xyz", degrees=True))
    return np.concatenate(rows).mean(axis=0)


# ----------------------------------------------------------------------------- decorrelation


def _patch_origins(h: int, w: int, patch: int) -> np.ndarray:
    """Top-left corners of a grid of patches covering the frame with a margin for the shift search."""
    margin = patch // 4
    ny = max(1, (h - 2 * margin) // patch)
    nx = max(1, (w - 2 * margin) // patch)
    rows = np.linspace(margin, h - margin - patch, ny).round().astype(int) if ny > 1 else np.array([(h - patch) // 2])
    cols = np.linspace(margin, w - margin - patch, nx).round().astype(int) if nx > 1 else np.array([(w - patch) // 2])
    return np.array([(r, c) for r in rows for c in cols])


def _window(patch: int) -> np.ndarray:
    hann = np.hanning(patch + 2)[1:-1].astype(np.float32)
    return np.outer(hann, hann)


def _pair_measurements(a: np.ndarray, b: np.ndarray, origins: np.ndarray, patch: int):
    """Per patch of frame b: its shift (dy, dx) in pixels to the matching content of frame a, and
    the normalised correlation of the two patches once registered (integer shift)."""
    h, w = a.shape
    win = _window(patch)
    idx_r = origins[:, 0, None, None] + np.arange(patch)[None, :, None]
    idx_c = origins[:, 1, None, None] + np.arange(patch)[None, None, :]
    pa = a[idx_r, idx_c].astype(np.float32)
    pb = b[idx_r, idx_c].astype(np.float32)
    pa -= pa.mean(axis=(1, 2), keepdims=True)
    pb -= pb.mean(axis=(1, 2), keepdims=True)
    fa = np.fft.rfft2(pa * win)
    fb = np.fft.rfft2(pb * win)
    cc = np.fft.irfft2(fa * np.conj(fb), s=(patch, patch))  # peak at the shift of a relative to b
    flat = cc.reshape(len(origins), -1).argmax(axis=1)
    py, px = np.unravel_index(flat, (patch, patch))
    shifts = np.zeros((len(origins), 2))
    for k in range(len(origins)):
        sub = []
        for axis, p in ((0, py[k]), (1, px[k])):
            prev = cc[k, (p - 1) % patch, px[k]] if axis == 0 else cc[k, py[k], (p - 1) % patch]
            here = cc[k, py[k], px[k]]
            nxt = cc[k, (p + 1) % patch, px[k]] if axis == 0 else cc[k, py[k], (p + 1) % patch]
            denom = prev - 2 * here + nxt
            frac = 0.5 * (prev - nxt) / denom if denom < 0 else 0.0
            sub.append(((p + patch // 2) % patch - patch // 2) + frac)
        shifts[k] = sub
    # normalised correlation of the registered patches: patch of b vs frame a at the shifted place
    rho = np.empty(len(origins))
    for k, (r, c) in enumerate(origins):
        dy, dx = int(round(shifts[k, 0])), int(round(shifts[k, 1]))
        r2 = min(max(r + dy, 0), h - patch)
        c2 = min(max(c + dx, 0), w - patch)
        x = a[r2 : r2 + patch, c2 : c2 + patch].astype(np.float64)
        y = b[r : r + patch, c : c + patch].astype(np.float64)
        x -= x.mean()
        y -= y.mean()
        denom = np.sqrt((x * x).sum() * (y * y).sum())
        rho[k] = (x * y).sum() / denom if denom > 0 else 0.0
    return shifts, rho


def _rigid_2d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares rotation angle (rad) and translation with dst ~ R src + t."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - cs, dst - cd
    angle = np.arctan2((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum(), (s * d).sum())
    c, si = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -si], [si, c]])
    return float(angle), cd - rot @ cs


def _distances(rho: np.ndarray, sigma_mm: float, rho0: float) -> np.ndarray:
    ratio = np.clip(rho / rho0, 1e-6, 1.0)
    return sigma_mm * np.sqrt(-2.0 * np.log(ratio))


def _pair_step(a, b, origins, patch, spacing, sigma_mm, rho0, direction) -> tuple[np.ndarray, np.ndarray]:
    """6-DoF step [tx, ty, tz, rx, ry, rz] (frame i+1 relative to frame i) and the per-patch rho."""
    h, w = a.shape
    sx, sy = spacing
    shifts, rho = _pair_measurements(a, b, origins, patch)
    centres = origins + (patch - 1) / 2.0  # (row, col) pixels
    # centred image mm of the patch centres in frame b, and of the matching content in frame a
    pb = np.stack([(centres[:, 1] - (w - 1) / 2) * sx, (centres[:, 0] - (h - 1) / 2) * sy], axis=1)
    pa = pb + np.stack([shifts[:, 1] * sx, shifts[:, 0] * sy], axis=1)
    keep = np.ones(len(pb), bool)
    for _ in range(2):  # one round of outlier rejection (patches on edges/structures mis-register)
        angle, t = _rigid_2d(pb[keep], pa[keep])
        c, s = np.cos(angle), np.sin(angle)
        resid = np.linalg.norm(pa - (pb @ np.array([[c, -s], [s, c]]).T + t), axis=1)
        cut = max(3.0 * np.median(resid[keep]), 0.5 * max(sx, sy))
        keep = resid <= cut
    d = direction * _distances(rho, sigma_mm, rho0)
    # plane z = tz + alpha x + beta y through the per-patch elevational distances (frame-b coords)
    design = np.column_stack([np.ones(len(pb)), pb])
    tz, alpha, beta = np.linalg.lstsq(design[keep], d[keep], rcond=None)[0]
    # frame-b point (x, y, 0) -> (x, y, tz + alpha x + beta y) in frame a: R = Ry(ry) Rx(rx) with
    # z = -x sin(ry) + y sin(rx) cos(ry) to first order
    ry = -np.degrees(np.arcsin(np.clip(alpha, -1, 1)))
    rx = np.degrees(np.arcsin(np.clip(beta, -1, 1)))
    return np.array([t[0], t[1], tz, rx, ry, np.degrees(angle)]), rho


def _decorrelation_steps(frames, spacing, sigma_mm, rho0, direction, patch=PATCH, progress=None):
    h, w = frames.shape[1:]
    patch = int(min(patch, h // 2, w // 2)) // 2 * 2
    origins = _patch_origins(h, w, patch)
    steps = np.empty((len(frames) - 1, 6))
    for i in range(len(frames) - 1):
        steps[i] = _pair_step(frames[i], frames[i + 1], origins, patch, spacing, sigma_mm, rho0, direction)[0]
        if progress is not None:
            progress(i + 1)
    return steps


def decorrelation(
    sweep,
    spacing=None,
    sigma_mm: float = DEFAULT_SIGMA_MM,
    rho0: float = DEFAULT_RHO0,
    direction: int = 1,
    patch: int = PATCH,
) -> np.ndarray:
    """Speckle-decorrelation + in-plane registration tracker: (N, 4, 4) ImageToReference-like.

    Parameters
    ----------
    sweep : Sweep or (N, H, W) uint8 frames.
    spacing : (sx, sy) mm per pixel (default: the sweep's, else TUS-REC's).
    sigma_mm, rho0 : Gaussian decorrelation curve (:func:`calibrate_decorrelation`).
    direction : +1 when the sweep moves along +z (the image's x cross y), -1 otherwise.
    patch : patch side in pixels (a grid of patches covers the frame).
    """
    from freehand3d.tracking.infer import compose_poses

    frames, spacing = _frames_and_spacing(sweep, spacing)
    steps = _decorrelation_steps(frames, spacing, sigma_mm, rho0, direction, patch)
    return _to_image_to_reference(compose_poses(steps)[0], frames.shape[1:], spacing)


def calibrate_decorrelation(sweeps_and_truths, patch: int = PATCH) -> tuple[float, float]:
    """Fit (sigma_mm, rho0) of ``rho = rho0 exp(-d^2 / (2 sigma^2))`` on sweeps with known motion.

    ``sweeps_and_truths``: pairs (Sweep, (N, 4, 4) true ImageToReference). The true elevational
    distance of each patch centre between consecutive frames is regressed against ``ln rho``.
    """
    ds, logs = [], []
    for sweep, truth in sweeps_and_truths:
        frames, spacing = _frames_and_spacing(sweep, None)
        h, w = frames.shape[1:]
        p = int(min(patch, h // 2, w // 2)) // 2 * 2
        origins = _patch_origins(h, w, p)
        poses = _from_image_to_reference(truth, (h, w), spacing)
        centres = origins + (p - 1) / 2.0
        pts = np.column_stack([(centres[:, 1] - (w - 1) / 2) * spacing[0], (centres[:, 0] - (h - 1) / 2) * spacing[1],
                               np.zeros(len(origins)), np.ones(len(origins))])
        for i in range(len(frames) - 1):
            rel = geometry.invert(poses[i]) @ poses[i + 1]  # frame i+1 -> frame i
            d = (pts @ rel.T)[:, 2]
            _, rho = _pair_measurements(frames[i], frames[i + 1], origins, p)
            ok = rho > 0.05
            ds.append(d[ok])
            logs.append(np.log(rho[ok]))
    d2 = np.concatenate(ds) ** 2
    y = np.concatenate(logs)
    # ln rho = ln rho0 - d^2 / (2 sigma^2): a straight line in d^2
    slope, intercept = np.polyfit(d2, y, 1)
    if slope >= 0:
        raise ValueError("the correlation does not fall with distance in these sweeps; cannot calibrate")
    return float(np.sqrt(-1.0 / (2.0 * slope))), float(min(np.exp(intercept), 1.0))


# ----------------------------------------------------------------------------- scoring


def score(trajectory, truth, spacing, frame_shape=(480, 640)) -> dict:
    """Tracking metrics of an ImageToReference-like trajectory against the true one.

    ``truth``: (N, 4, 4) true pixel -> world transforms (e.g. ``truth["image_to_reference"]`` of
    :func:`freehand3d.simulate.simulate_freehand`; the world frame does not matter). Both are
    reduced to DualTrack absolute poses and scored with
    :func:`freehand3d.tracking.workflows.evaluate_poses` (GPE, LPE, 5-point proxy, drift), plus
    ``elevation_error_mm``: mean |error| of the image centre's out-of-plane position.
    """
    from freehand3d.tracking.workflows import evaluate_poses

    pred = _from_image_to_reference(trajectory, frame_shape, spacing)
    gt = _from_image_to_reference(truth, frame_shape, spacing)
    out = evaluate_poses(pred, gt, spacing, frame_shape)
    out["elevation_error_mm"] = float(np.abs(pred[:, 2, 3] - gt[:, 2, 3]).mean())
    return out


#: name -> tracker, in the order reports list them
BASELINES = {"zero motion": zero_motion, "constant velocity": constant_velocity, "decorrelation": decorrelation}


def run_baselines(sweep, truth=None, spacing=None) -> dict:
    """Run every baseline on a sweep: ``{name: trajectory}``, or with ``truth`` (true (N, 4, 4)
    ImageToReference) ``{name: metrics}`` from :func:`score`."""
    frames, spacing = _frames_and_spacing(sweep, spacing)
    results = {}
    for name, tracker in BASELINES.items():
        traj = tracker(sweep, spacing=spacing)
        results[name] = traj if truth is None else score(traj, truth, spacing, frames.shape[1:])
    return results
