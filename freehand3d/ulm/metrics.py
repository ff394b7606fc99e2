"""Localization metrics in two conventions, error, Jaccard, SSIM.

Two pairing conventions are computed, under distinct key names so they are never mixed up:

* **ours** (keys without prefix: ``error_lambda10``, ``jaccard``, ...): exact one-to-one assignment,
  below;
* **PALA / G-ULM paper** (keys prefixed ``pala_``): per frame, greedy nearest pairing within the gate
  (the globally closest remaining detection/truth pair is taken first, both leave the pool, repeat
  until no pair is within lambda/4); ``pala_rmse_lambda10`` is what the papers call "RMSE": the mean
  over frames of each frame's mean TP distance (not a root-mean-square); ``pala_jaccard`` the same
  TP / (TP + FP + FN) summed over frames. Our ``rms_error_lambda10`` is a true root-mean-square over
  all TP pairs and is not the papers' number.

Our pairing (per frame, exactly):

1. Distances between every detection and every ground-truth bubble present in that frame
   (ListPos rows that are not NaN) are computed.
2. A minimum-total-distance one-to-one assignment (Hungarian algorithm,
   ``scipy.optimize.linear_sum_assignment``) is solved on those distances, where pairs farther than
   the gate (default lambda / 4) cost a large constant so that they are chosen only when nothing
   else is possible.
3. Assigned pairs within the gate are true positives (TP); detections left without a TP are false
   positives (FP); ground-truth bubbles left without a TP are false negatives (FN).

Localization error: Euclidean distance of each TP pair, reported in units of lambda / 10 (mean and
standard deviation over all TPs of all frames). Jaccard = TP / (TP + FP + FN), summed over frames.
SSIM compares density maps (:func:`freehand3d.ulm.render.density_map`) of all detections and of the
ground truth rendered on the same lambda / 10 grid, both smoothed by a Gaussian of 1 pixel and scaled
by the larger maximum; the SSIM map (scikit-image, 7 x 7 window) is averaged over the pixels where
either map holds localizations (above 1e-3 of the maximum), since the shared empty background would
otherwise dominate the mean.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["pair_frame", "pair_frame_greedy", "evaluate"]


def pair_frame(detections: np.ndarray, truth: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """Pair detections (K, 2) with ground truth (G, 2) of one frame.

    Returns
    -------
    det_index, truth_index : int arrays
        Indices of the true-positive pairs (distance <= gate).
    """
    detections = np.asarray(detections, float).reshape(-1, 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    if len(detections) == 0 or len(truth) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist = np.linalg.norm(detections[:, None, :] - truth[None, :, :], axis=2)
    cost = np.where(dist <= gate, dist, 1e6 + dist)
    rows, cols = linear_sum_assignment(cost)
    keep = dist[rows, cols] <= gate
    return rows[keep], cols[keep]


def pair_frame_greedy(detections: np.ndarray, truth: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """PALA-style greedy pairing of one frame: closest remaining pair first, within ``gate``."""
    detections = np.asarray(detections, float).reshape(-1, 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    if len(detections) == 0 or len(truth) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist = np.linalg.norm(detections[:, None, :] - truth[None, :, :], axis=2)
    rows, cols = np.nonzero(dist <= gate)
    order = np.argsort(dist[rows, cols], kind="stable")
    used_d, used_t = set(), set()
    out_d, out_t = [], []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r in used_d or c in used_t:
            continue
        used_d.add(r)
        used_t.add(c)
        out_d.append(r)
        out_t.append(c)
    return np.asarray(out_d, int), np.asarray(out_t, int)


def evaluate(
    points: np.ndarray,
    list_pos: np.ndarray,
    wavelength: float,
    *,
    gate: float | None = None,
    ssim: bool = True,
    convention: str = "both",
) -> dict:
    """Score localizations against PALA ListPos ground truth.

    Parameters
    ----------
    points : array (N, 3)
        Detections as (frame, x, z), mm.
    list_pos : array (n_bubbles, 3, n_frames)
        Ground truth (x, z, amplitude; NaN when absent), mm.
    wavelength : float
        Wavelength in mm (units of the error and of the density-map pixel).
    gate : float, optional
        True-positive gate in mm; default wavelength / 4.
    ssim : bool
        Also compute the SSIM of the density maps.
    convention : {"both", "ours", "pala"}
        Which pairing convention(s) to report (see the module docstring).

    Returns
    -------
    dict
        ours: error_lambda10, error_std_lambda10, rms_error_lambda10, jaccard, precision, recall,
        tp, fp, fn; PALA: pala_rmse_lambda10, pala_jaccard, pala_precision, pala_recall, pala_tp,
        pala_fp, pala_fn; frames, gate_mm, ssim (if asked).
    """
    if convention not in ("both", "ours", "pala"):
        raise ValueError(f"convention must be 'both', 'ours' or 'pala', got {convention!r}")
    points = np.asarray(points, float).reshape(-1, 3)
    list_pos = np.asarray(list_pos, float)
    gate = wavelength / 4 if gate is None else gate
    n_frames = list_pos.shape[2]
    frame_of = np.round(points[:, 0]).astype(int)
    errors = []
    tp = fp = fn = 0
    pala_frame_means = []
    ptp = pfp = pfn = 0
    order = np.argsort(frame_of, kind="stable")
    bounds = np.searchsorted(frame_of[order], np.arange(n_frames + 1))
    for f in range(n_frames):
        det = points[order[bounds[f] : bounds[f + 1]], 1:]
        present = np.isfinite(list_pos[:, 0, f]) & np.isfinite(list_pos[:, 1, f])
        truth = list_pos[present, :2, f]
        di, ti = pair_frame(det, truth, gate)
        errors.append(np.linalg.norm(det[di] - truth[ti], axis=1))
        tp += len(di)
        fp += len(det) - len(di)
        fn += len(truth) - len(ti)
        if convention != "ours":
            gd, gt_ = pair_frame_greedy(det, truth, gate)
            if len(gd):
                pala_frame_means.append(np.mean(np.linalg.norm(det[gd] - truth[gt_], axis=1)))
            ptp += len(gd)
            pfp += len(det) - len(gd)
            pfn += len(truth) - len(gt_)
    stray = np.sum((frame_of < 0) | (frame_of >= n_frames))
    fp += int(stray)
    pfp += int(stray)
    errors = np.concatenate(errors) if errors else np.zeros(0)
    unit = wavelength / 10
    nan = float("nan")
    result = {}
    if convention != "pala":
        result.update({
            "error_lambda10": float(np.mean(errors) / unit) if len(errors) else nan,
            "error_std_lambda10": float(np.std(errors) / unit) if len(errors) else nan,
            "rms_error_lambda10": float(np.sqrt(np.mean(errors**2)) / unit) if len(errors) else nan,
            "jaccard": tp / (tp + fp + fn) if (tp + fp + fn) else nan,
            "precision": tp / (tp + fp) if (tp + fp) else nan,
            "recall": tp / (tp + fn) if (tp + fn) else nan,
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
        })
    if convention != "ours":
        result.update({
            "pala_rmse_lambda10": float(np.mean(pala_frame_means) / unit) if pala_frame_means else nan,
            "pala_jaccard": ptp / (ptp + pfp + pfn) if (ptp + pfp + pfn) else nan,
            "pala_precision": ptp / (ptp + pfp) if (ptp + pfp) else nan,
            "pala_recall": ptp / (ptp + pfn) if (ptp + pfn) else nan,
            "pala_tp": int(ptp),
            "pala_fp": int(pfp),
            "pala_fn": int(pfn),
        })
    result.update({"frames": int(n_frames), "gate_mm": float(gate)})
    if ssim:
        from skimage.metrics import structural_similarity

        from freehand3d.ulm.render import density_map, ground_truth_points

        truth_points = ground_truth_points(list_pos)
        extent = _common_extent(points[:, 1:], truth_points[:, 1:], wavelength)
        pixel = wavelength / 10
        det_map = density_map(points[:, 1:], extent, pixel, sigma=1.0)
        gt_map = density_map(truth_points[:, 1:], extent, pixel, sigma=1.0)
        scale = max(det_map.max(), gt_map.max(), 1e-12)
        _, ssim_map = structural_similarity(det_map / scale, gt_map / scale, data_range=1.0, full=True)
        # empty background is identical in both maps and would push SSIM to 1 for any method:
        # average only where either map holds localizations
        support = (det_map > 1e-3 * scale) | (gt_map > 1e-3 * scale)
        result["ssim"] = float(ssim_map[support].mean()) if support.any() else float("nan")
    return result


def _common_extent(a: np.ndarray, b: np.ndarray, wavelength: float):
    """(x_min, x_max, z_min, z_max) in mm around the ground truth, one wavelength of margin."""
    ref = b if len(b) else a
    if len(ref) == 0:
        return (0.0, wavelength, 0.0, wavelength)
    lo = np.nanmin(ref, axis=0) - wavelength
    hi = np.nanmax(ref, axis=0) + wavelength
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
