"""Tracking accuracy metrics: TUS-REC challenge errors and DualTrack's own measures.

Two coordinate conventions meet here (see the DualTrack reference SPEC, sections 9-10):

* **TUS-REC image-mm**: a point of pixel (x, y) (1-based, x = column) sits at ``S @ [x, y, 0, 1]``
  with ``S = diag(sx, sy, 1, 1)``. Transform stacks are (N-1, 4, 4): the *global* stack maps frame n
  into frame 0 (n = 1..N-1), the *local* stack frame n into frame n-1.
* **DualTrack image frame**: mm with the origin at the image centre; absolute poses (N, 4, 4) with
  ``poses[0] = I`` map frame k into frame 0.

Functions
---------
:func:`tusrec`
    GPE / LPE over every pixel of the frame and GLE / LLE at landmarks (challenge definitions).
:func:`five_point`
    DualTrack's 5-point proxy of GPE / LPE (four corners and the centre).
:func:`drift`
    Final drift rate, maximum drift and average drift rate of the frame centre.
:func:`normalised_scores`, :func:`tusrec_score`
    The 2025 ranking normalisation ``X* = (X - X_id) / (0 - X_id)`` against an all-identity
    prediction.
:func:`poses_to_tusrec`
    DualTrack absolute poses -> the TUS-REC global and local stacks, so that predictions from
    :func:`freehand3d.tracking.track` can be scored with :func:`tusrec`.

All errors are in mm (rates in %).
"""

from __future__ import annotations

import numpy as np

from freehand3d import geometry

#: TUS-REC frame size (rows, columns) and the number of pixels every DDF covers.
TUSREC_FRAME_SHAPE = (480, 640)

__all__ = [
    "tusrec",
    "five_point",
    "drift",
    "normalised_scores",
    "tusrec_score",
    "identity_like",
    "poses_to_tusrec",
    "pixel_points_mm",
    "dualtrack_centre_offset",
]


# ----------------------------------------------------------------------------- helpers


def _stack(transforms, name: str) -> np.ndarray:
    arr = geometry.as_matrix_stack(transforms, name)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a stack of shape (K, 4, 4), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _pair(pred, gt, pred_name: str, gt_name: str) -> tuple[np.ndarray, np.ndarray]:
    p, g = _stack(pred, pred_name), _stack(gt, gt_name)
    if p.shape != g.shape:
        raise ValueError(f"{pred_name} has shape {p.shape} but {gt_name} has shape {g.shape}")
    if len(p) == 0:
        raise ValueError(f"{pred_name} and {gt_name} are empty: a sweep needs at least two frames")
    return p, g


def pixel_points_mm(scale, frame_shape=TUSREC_FRAME_SHAPE) -> np.ndarray:
    """Homogeneous mm coordinates ``S @ P`` of every pixel of a frame, TUS-REC convention.

    Parameters
    ----------
    scale : (4, 4) pixel -> mm matrix S (``diag(sx, sy, 1, 1)`` for TUS-REC).
    frame_shape : (rows, columns) of the frame.

    Returns
    -------
    (4, rows * columns) float64: columns are ``S @ [x, y, 0, 1]`` with x = 1..columns and
    y = 1..rows (1-based), flattened row-major over (y, x) as the challenge does.
    """
    s = geometry.as_matrix_stack(scale, "scale")
    if s.shape != (4, 4):
        raise ValueError(f"scale must be one 4x4 matrix, got shape {s.shape}")
    rows, cols = (int(v) for v in frame_shape)
    ys, xs = np.mgrid[1 : rows + 1, 1 : cols + 1]
    grid = np.stack([xs.ravel(), ys.ravel(), np.zeros(rows * cols), np.ones(rows * cols)]).astype(np.float64)
    return s @ grid


def _mean_point_error(pred, gt, points, chunk_points: int) -> float:
    """Mean over transforms and points of ``||(gt - pred) @ p||`` (the DDF error).

    ``DDF_gt - DDF_pred = (T_gt - T_pred) @ S @ P`` because the ``S @ P`` terms cancel, so only the
    3x4 difference matters. Work is split so that at most ``chunk_points`` (transform, point) pairs
    exist at once: thousands of frames x 307,200 pixels would not fit in memory together.
    """
    diff = (gt - pred)[:, :3, :]  # (K, 3, 4)
    n_tf, n_pts = diff.shape[0], points.shape[1]
    total = 0.0
    frames_per_chunk = max(1, chunk_points // max(n_pts, 1))
    if n_pts <= chunk_points:
        for start in range(0, n_tf, frames_per_chunk):
            d = diff[start : start + frames_per_chunk] @ points  # (c, 3, P)
            total += float(np.sqrt(np.einsum("kij,kij->kj", d, d)).sum())
    else:  # more points than one chunk: split the points too
        for k in range(n_tf):
            for start in range(0, n_pts, chunk_points):
                d = diff[k] @ points[:, start : start + chunk_points]
                total += float(np.sqrt(np.einsum("ij,ij->j", d, d)).sum())
    return total / (n_tf * n_pts)


def _landmark_error(pred, gt, scale, landmarks, name: str) -> float:
    lm = np.asarray(landmarks)
    if lm.ndim != 2 or lm.shape[1] != 3:
        raise ValueError(f"landmarks must have shape (K, 3) [frame, x, y], got {lm.shape}")
    if len(lm) == 0:
        raise ValueError("landmarks is empty")
    frames = lm[:, 0].astype(np.int64)
    if np.any(frames != lm[:, 0]) or np.any(frames < 1) or np.any(frames > len(pred)):
        raise ValueError(
            f"landmark frame indices must be integers in 1..{len(pred)} (frame 0 is the reference "
            f"and has no {name} transform); got range {lm[:, 0].min()}..{lm[:, 0].max()}"
        )
    s = geometry.as_matrix_stack(scale, "scale")
    pts = np.stack([lm[:, 1], lm[:, 2], np.zeros(len(lm)), np.ones(len(lm))]).astype(np.float64)
    pts_mm = s @ pts  # (4, K), pixel (x, y) 1-based as the challenge grid
    diff = (gt - pred)[frames - 1, :3, :]  # DDF row f-1 holds frame f
    err = np.einsum("kij,jk->ki", diff, pts_mm)
    return float(np.linalg.norm(err, axis=1).mean())


# ----------------------------------------------------------------------------- TUS-REC


def tusrec(
    pred_global,
    pred_local,
    gt_global,
    gt_local,
    scale,
    landmarks=None,
    *,
    frame_shape=TUSREC_FRAME_SHAPE,
    chunk_points: int = 2_000_000,
) -> dict:
    """TUS-REC challenge errors: GPE and LPE over all pixels, GLE and LLE at landmarks.

    Parameters
    ----------
    pred_global, gt_global : (N-1, 4, 4) image-mm transforms from frame n to frame 0, n = 1..N-1.
    pred_local, gt_local : (N-1, 4, 4) image-mm transforms from frame n to frame n-1.
    scale : (4, 4) pixel -> mm matrix S (``diag(sx, sy, 1, 1)``).
    landmarks : (K, 3) optional ``[frame, x, y]`` with 1-based pixel x (column) and y (row) and the
        frame index (>= 1) of the sweep.
    frame_shape : (rows, columns), 480 x 640 for TUS-REC.
    chunk_points : upper bound of (frame, pixel) pairs held in memory at once (each costs 24 bytes
        of float64 work space); 2,000,000 pairs = ~50 MB.

    Returns
    -------
    dict with ``GPE`` and ``LPE`` (mm), and ``GLE`` and ``LLE`` (mm) when landmarks are given.

    Notes
    -----
    ``DDF(T) = (T S P)[:3] - (S P)[:3]``, so ``DDF_gt - DDF_pred = ((T_gt - T_pred) S P)[:3]``;
    GPE is the mean over frames and pixels of its Euclidean norm (SPEC section 10.3).

    Examples
    --------
    >>> import numpy as np
    >>> eye = np.tile(np.eye(4), (3, 1, 1))
    >>> shifted = eye.copy(); shifted[:, 0, 3] = 2.0
    >>> S = np.diag([0.2, 0.2, 1.0, 1.0])
    >>> round(tusrec(eye, eye, shifted, shifted, S)["GPE"], 6)
    2.0
    """
    pg, gg = _pair(pred_global, gt_global, "pred_global", "gt_global")
    pl, gl = _pair(pred_local, gt_local, "pred_local", "gt_local")
    if len(pg) != len(pl):
        raise ValueError(f"global stack has {len(pg)} transforms but local stack has {len(pl)}")
    points = pixel_points_mm(scale, frame_shape)
    out = {
        "GPE": _mean_point_error(pg, gg, points, chunk_points),
        "LPE": _mean_point_error(pl, gl, points, chunk_points),
    }
    if landmarks is not None:
        out["GLE"] = _landmark_error(pg, gg, scale, landmarks, "global")
        out["LLE"] = _landmark_error(pl, gl, scale, landmarks, "local")
    return out


def identity_like(transforms) -> np.ndarray:
    """A stack of identity matrices shaped like ``transforms`` (the zero-motion prediction)."""
    arr = _stack(transforms, "transforms")
    return np.broadcast_to(np.eye(4), arr.shape).copy()


def normalised_scores(metrics: dict, identity_metrics: dict) -> dict:
    """TUS-REC 2025 normalisation of each metric against the all-identity prediction.

    ``X* = (X - X_id) / (0 - X_id)``: 1 is perfect, 0 is no better than predicting no motion,
    negative is worse. Returns ``{"GPE*": ..., ...}`` for every key present in both dicts, and
    ``"final"``, the mean of those normalised scores.
    """
    out = {}
    for key, value in metrics.items():
        if key not in identity_metrics:
            continue
        ref = float(identity_metrics[key])
        if ref == 0.0:
            raise ValueError(
                f"the identity prediction has zero {key}: the ground truth has no motion, "
                "so the normalised score is undefined"
            )
        out[f"{key}*"] = (float(value) - ref) / (0.0 - ref)
    if not out:
        raise ValueError("no metric is present in both metrics and identity_metrics")
    out["final"] = float(np.mean(list(out.values())))
    return out


def tusrec_score(
    pred_global, pred_local, gt_global, gt_local, scale, landmarks=None, **kwargs
) -> dict:
    """:func:`tusrec` metrics of a prediction, of the all-identity prediction, and the normalised
    2025 scores (``GPE*``, ``LPE*``, ``GLE*``, ``LLE*`` and their mean ``final``).

    Returns
    -------
    dict with keys ``metrics``, ``identity`` and ``scores`` (each a dict).
    """
    metrics = tusrec(pred_global, pred_local, gt_global, gt_local, scale, landmarks, **kwargs)
    eye_g, eye_l = identity_like(gt_global), identity_like(gt_local)
    ident = tusrec(eye_g, eye_l, gt_global, gt_local, scale, landmarks, **kwargs)
    return {"metrics": metrics, "identity": ident, "scores": normalised_scores(metrics, ident)}


# ----------------------------------------------------------------------------- DualTrack frame


def dualtrack_centre_offset(spacing) -> np.ndarray:
    """D = translate(320.5 sx, 240.5 sy, 0): TUS-REC image-mm -> DualTrack centred frame is
    ``T_dt = D^-1 T_tus D`` (SPEC section 10.5). Valid for 480 x 640 frames."""
    sx, sy = (float(v) for v in spacing)
    return geometry.translation([320.5 * sx, 240.5 * sy, 0.0])


def _poses(poses, name: str) -> np.ndarray:
    arr = _stack(poses, name)
    if len(arr) < 2:
        raise ValueError(f"{name} needs at least two frames, got {len(arr)}")
    return arr


def poses_to_tusrec(poses) -> tuple[np.ndarray, np.ndarray]:
    """Absolute poses (N, 4, 4) (frame k -> frame 0) -> (global, local) stacks (N-1, 4, 4).

    The global stack is ``poses[0]^-1 @ poses[n]`` and the local one ``poses[n-1]^-1 @ poses[n]``
    for n = 1..N-1. The result stays in the frame of ``poses``; to score against TUS-REC
    transforms convert either side with :func:`dualtrack_centre_offset` (or note that the DDF
    errors are invariant to a common change of image origin, SPEC section 10.5).
    """
    p = _poses(poses, "poses")
    inv = geometry.invert(p)
    glob = inv[0][None] @ p[1:]
    loc = inv[:-1] @ p[1:]
    return glob, loc


def _five_points(image_size, spacing) -> np.ndarray:
    rows, cols = (int(v) for v in image_size)
    sx, sy = (float(v) for v in spacing)
    # DualTrack's points: corners at W and H (not W-1, H-1) plus the integer centre, 0-based,
    # mapped by the centred pixel -> image matrix x_mm = (col - (W-1)/2) sx, y_mm = (row - (H-1)/2) sy
    pix = np.array([[0, 0], [cols, 0], [0, rows], [cols, rows], [cols // 2, rows // 2]], float)
    mm = np.empty((4, 5))
    mm[0] = (pix[:, 0] - (cols - 1) / 2.0) * sx
    mm[1] = (pix[:, 1] - (rows - 1) / 2.0) * sy
    mm[2] = 0.0
    mm[3] = 1.0
    return mm


def five_point(pred_poses, gt_poses, image_size=TUSREC_FRAME_SHAPE, spacing=(1.0, 1.0)) -> dict:
    """DualTrack's 5-point proxy of GPE and LPE.

    Parameters
    ----------
    pred_poses, gt_poses : (N, 4, 4) absolute poses in the DualTrack image frame (mm, origin at the
        image centre), frame k -> frame 0.
    image_size : (rows, columns) of the frames, i.e. (H, W) as ``Sweep.frame_shape``.
    spacing : (sx, sy) mm per pixel.

    Returns
    -------
    dict with ``GPE_5pt`` and ``LPE_5pt`` (mm): the mean over frames 1..N-1 of the mean
    displacement error at the 0-based pixels (0, 0), (W, 0), (0, H), (W, H) and (W//2, H//2).

    Notes
    -----
    In TUS-REC coordinates these are the DDF errors at the 1-based pixels (1, 1), (W+1, 1),
    (1, H+1), (W+1, H+1) and (W//2+1, H//2+1) (SPEC section 10.4); they are proxies, the challenge
    uses all pixels (:func:`tusrec`).
    """
    pred, gt = _pair(_poses(pred_poses, "pred_poses"), _poses(gt_poses, "gt_poses"), "pred_poses", "gt_poses")
    points = _five_points(image_size, spacing)
    pg, pl = poses_to_tusrec(pred)
    gg, gl = poses_to_tusrec(gt)
    return {
        "GPE_5pt": _mean_point_error(pg, gg, points, chunk_points=1_000_000),
        "LPE_5pt": _mean_point_error(pl, gl, points, chunk_points=1_000_000),
    }


def drift(pred_poses, gt_poses) -> dict:
    """Drift of the image centre along the sweep (DualTrack's measures, SPEC section 10.4).

    Parameters
    ----------
    pred_poses, gt_poses : (N, 4, 4) absolute poses in the DualTrack image frame (origin at the
        image centre, so the translation column is the centre's position), frame k -> frame 0.

    Returns
    -------
    dict with
        ``FDR_pct``: final drift rate, 100 * drift at the last frame / ground-truth distance of the
        last frame from frame 0;
        ``max_drift_mm``: the largest drift over all frames;
        ``avg_drift_rate_pct``: mean of 100 * drift_i / ||t_gt,i|| over frames 1..N-1 (frames where
        the ground truth has not moved at all are left out: their rate is undefined);
        ``final_drift_mm``: the drift at the last frame.
    """
    pred, gt = _pair(_poses(pred_poses, "pred_poses"), _poses(gt_poses, "gt_poses"), "pred_poses", "gt_poses")
    t_pred, t_gt = pred[:, :3, 3], gt[:, :3, 3]
    drift_mm = np.linalg.norm(t_pred - t_gt, axis=1)
    dist_gt = np.linalg.norm(t_gt, axis=1)
    if dist_gt[-1] == 0.0:
        raise ValueError("the ground-truth last frame has not moved from frame 0: the final drift rate is undefined")
    moved = dist_gt[1:] > 0.0
    rates = 100.0 * drift_mm[1:][moved] / dist_gt[1:][moved]
    return {
        "FDR_pct": float(100.0 * drift_mm[-1] / dist_gt[-1]),
        "max_drift_mm": float(drift_mm.max()),
        "avg_drift_rate_pct": float(rates.mean()),
        "final_drift_mm": float(drift_mm[-1]),
    }
