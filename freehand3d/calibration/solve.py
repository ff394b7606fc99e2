"""Stage 4 of N-wire calibration: estimate ImageToProbe from the diagonal-wire points.

Each observation i is a diagonal-wire dot ``u_i`` (pixels) with its phantom position ``X_i`` (mm, by
similar triangles) and the tracked ``ProbeToReference`` of its frame. With the phantom registration
``PhantomToReference`` the phantom point is known in the probe frame::

    X_probe_i = inv(ProbeToReference_i) · PhantomToReference · X_i  ~  ImageToProbe · (u_i, 0, 1)

Two solvers:

:func:`solve_plus` (PLUS ``vtkPlusProbeCalibrationAlgo``)
    every row of ImageToProbe by linear least squares, dropping equations whose residual is more than
    3 standard deviations from the mean until none is; the z column is then set orthogonal to the x
    and y columns with their mean length.

:func:`solve_ransac_lm` (Liu et al. 2025)
    ImageToProbe = rigid (6) x pixel scales (sx, sy), optionally with the phantom registration (6) as
    unknowns too (the paper's 14 parameters), minimising the squared 3D distance by
    Levenberg-Marquardt inside RANSAC (random subsets of 10, a linear fit per subset, inliers within
    the threshold, LM on all inliers).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from freehand3d import geometry
from freehand3d.errors import CalibrationError

#: PLUS refuses to calibrate from fewer frames
MIN_FRAMES = 10


def phantom_points_in_probe(phantom_points: np.ndarray, probe_to_reference: np.ndarray,
                            phantom_to_reference: np.ndarray) -> np.ndarray:
    """``inv(ProbeToReference) · PhantomToReference · X`` for (M, 3) points and (M, 4, 4) poses."""
    phantom_to_probe = geometry.compose(geometry.invert(probe_to_reference), phantom_to_reference)
    return geometry.apply(phantom_to_probe, phantom_points)


def complete_z_column(image_to_probe: np.ndarray) -> np.ndarray:
    """Set the z column orthogonal to the x and y columns, with their mean length (as PLUS does, so
    the matrix can be inverted and 3D widgets keep their aspect ratio)."""
    m = np.array(image_to_probe, float)
    x, y = m[:3, 0], m[:3, 1]
    z = np.cross(x, y)
    z *= 0.5 * (np.linalg.norm(x) + np.linalg.norm(y)) / np.linalg.norm(z)
    m[:3, 2] = z
    m[3] = [0, 0, 0, 1]
    return m


def _affine_rows(pixels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares rows (a, b, d) of ``target = a x + b y + d`` for each of the 3 coordinates."""
    design = np.column_stack([pixels[:, 0], pixels[:, 1], np.ones(len(pixels))])
    sol, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return sol.T  # (3, 3)


def _rows_to_matrix(rows: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 3] = rows[:, 0], rows[:, 1], rows[:, 2]
    return complete_z_column(m)


def solve_plus(pixels: np.ndarray, probe_points: np.ndarray, sigma_multiplier: float = 3.0,
               min_equations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """PLUS's linear least-squares calibration with iterative outlier rejection.

    Parameters
    ----------
    pixels : (M, 2) diagonal-wire dots (x, y).
    probe_points : (M, 3) their phantom positions in the probe frame (mm).
    sigma_multiplier : rejection threshold in standard deviations (PLUS: 3).
    min_equations : stop rejecting when this few equations remain.

    Returns
    -------
    image_to_probe : (4, 4).
    inliers : (M,) bool, False for points rejected in any row.
    """
    px = np.asarray(pixels, float).reshape(-1, 2)
    tgt = np.asarray(probe_points, float).reshape(-1, 3)
    if len(px) < 3:
        raise CalibrationError(f"{len(px)} points are not enough for a calibration (need at least 3)")
    design = np.column_stack([px, np.ones(len(px))])
    rows = np.zeros((3, 3))
    inliers = np.ones(len(px), bool)
    for r in range(3):
        keep = np.arange(len(px))
        while True:
            sol, *_ = np.linalg.lstsq(design[keep], tgt[keep, r], rcond=None)
            res = design[keep] @ sol - tgt[keep, r]
            dev = np.abs(res - res.mean())
            std = res.std()  # PLUS uses the population standard deviation
            good = dev < sigma_multiplier * std
            if good.all() or good.sum() <= min_equations or std == 0:
                break
            keep = keep[good]
        rows[r] = sol
        mask = np.zeros(len(px), bool)
        mask[keep] = True
        inliers &= mask
    return _rows_to_matrix(rows), inliers


# ------------------------------------------------------------------------------------- LM model
def image_to_probe_from_params(params: np.ndarray) -> np.ndarray:
    """(rotation vector (3), translation (3), sx, sy) -> ImageToProbe (4, 4), z column as PLUS."""
    rot = Rotation.from_rotvec(params[:3]).as_matrix()
    m = np.eye(4)
    m[:3, 0] = rot[:, 0] * params[6]
    m[:3, 1] = rot[:, 1] * params[7]
    m[:3, 2] = rot[:, 2] * 0.5 * (abs(params[6]) + abs(params[7]))
    m[:3, 3] = params[3:6]
    return m


def params_from_image_to_probe(image_to_probe: np.ndarray) -> np.ndarray:
    """Nearest (rotation vector, translation, sx, sy) of an affine ImageToProbe."""
    m = np.asarray(image_to_probe, float)
    sx, sy = np.linalg.norm(m[:3, 0]), np.linalg.norm(m[:3, 1])
    basis = np.column_stack([m[:3, 0] / sx, m[:3, 1] / sy, np.cross(m[:3, 0] / sx, m[:3, 1] / sy)])
    u, _, vt = np.linalg.svd(basis)
    rot = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    return np.concatenate([Rotation.from_matrix(rot).as_rotvec(), m[:3, 3], [sx, sy]])


def _rigid_from_params(p: np.ndarray) -> np.ndarray:
    return geometry.rigid(Rotation.from_rotvec(p[:3]).as_matrix(), p[3:6])


def _rigid_params(m: np.ndarray) -> np.ndarray:
    rigid = geometry.orthonormalize(m)
    return np.concatenate([Rotation.from_matrix(rigid[:3, :3]).as_rotvec(), rigid[:3, 3]])


def _residuals(params, pixels, phantom_points, probe_to_reference, phantom_to_reference, refine_registration):
    itp = image_to_probe_from_params(params[:8])
    ptr = _rigid_from_params(params[8:14]) if refine_registration else phantom_to_reference
    # compare in the phantom frame: X_pred = inv(PhantomToReference) ProbeToReference ImageToProbe u
    image_to_phantom = geometry.compose(geometry.invert_rigid(ptr), probe_to_reference, itp)
    pred = geometry.apply(image_to_phantom, pixels)
    return (pred - phantom_points).ravel()


def refine_lm(pixels, phantom_points, probe_to_reference, phantom_to_reference, initial_image_to_probe,
              refine_registration: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt fit of the 8 (or 14 with ``refine_registration``) parameters.

    Returns
    -------
    image_to_probe : (4, 4); phantom_to_reference : (4, 4) (refined or as given).
    """
    x0 = params_from_image_to_probe(initial_image_to_probe)
    if refine_registration:
        x0 = np.concatenate([x0, _rigid_params(phantom_to_reference)])
    n_res = 3 * len(pixels)
    method = "lm" if n_res >= len(x0) else "trf"
    fit = least_squares(
        _residuals, x0, method=method, x_scale="jac",
        args=(pixels, phantom_points, probe_to_reference, phantom_to_reference, refine_registration),
    )
    itp = image_to_probe_from_params(fit.x[:8])
    ptr = _rigid_from_params(fit.x[8:14]) if refine_registration else np.asarray(phantom_to_reference, float)
    return itp, ptr


def _batched_affine(pixels, targets, subsets):
    """Linear fits of ``target = M (u, 1)`` on many subsets at once -> (S, 3, 3) rows."""
    design = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1)  # (M, 3)
    a = design[subsets]  # (S, k, 3)
    b = targets[subsets]  # (S, k, 3)
    ata = np.einsum("ski,skj->sij", a, a) + 1e-9 * np.eye(3)
    atb = np.einsum("ski,skj->sij", a, b)
    sol = np.linalg.solve(ata, atb)  # (S, 3 coeffs, 3 coords)
    return np.swapaxes(sol, 1, 2)


def solve_ransac_lm(
    pixels: np.ndarray,
    phantom_points: np.ndarray,
    probe_to_reference: np.ndarray,
    phantom_to_reference: np.ndarray,
    *,
    iterations: int = 3000,
    subset_size: int = 10,
    threshold_mm: float = 0.5,
    adaptive_threshold: bool = True,
    inlier_sigmas: float = 4.0,
    refine_registration: bool = False,
    ransac: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RANSAC + Levenberg-Marquardt calibration (Liu et al. 2025).

    Parameters
    ----------
    pixels : (M, 2) diagonal-wire dots.
    phantom_points : (M, 3) their phantom positions (mm).
    probe_to_reference : (M, 4, 4) tracked pose of each dot's frame.
    phantom_to_reference : (4, 4) phantom registration (the starting value when
        ``refine_registration``).
    iterations, subset_size, threshold_mm : RANSAC settings (paper: 3000, 10, 0.5 mm).
    adaptive_threshold : raise the inlier threshold to ``inlier_sigmas`` robust standard deviations
        (median-based) of the current fit's residuals when that is larger than ``threshold_mm``: real
        recordings (tracker latency, segmentation) scatter more than 0.5 mm, and a fixed threshold
        would keep only a lucky fraction of the data (measured on the PLUS fCal recording: 0.5 mm
        kept 379 of 564 points and moved ImageToProbe by 4.5 degrees).
    inlier_sigmas : a 3D Gaussian error norm exceeds 4 sigma with probability ~0.1 %.
    refine_registration : also estimate PhantomToReference (the paper's 14-parameter model).
    ransac : False gives plain LM on all points (from the linear all-points fit), for comparison.
    seed : random subsets.

    Returns
    -------
    image_to_probe : (4, 4); phantom_to_reference : (4, 4); inliers : (M,) bool.
    """
    px = np.asarray(pixels, float).reshape(-1, 2)
    xp = np.asarray(phantom_points, float).reshape(-1, 3)
    poses = np.asarray(probe_to_reference, float).reshape(-1, 4, 4)
    ptr = np.asarray(phantom_to_reference, float)
    m = len(px)
    if m < max(3, subset_size if ransac else 3):
        raise CalibrationError(f"{m} points are not enough for a calibration (need at least {max(3, subset_size)})")
    probe_pts = phantom_points_in_probe(xp, poses, ptr)
    if not ransac:
        rows = _affine_rows(px, probe_pts)
        itp, ptr_out = refine_lm(px, xp, poses, ptr, _rows_to_matrix(rows), refine_registration)
        return itp, ptr_out, np.ones(m, bool)

    rng = np.random.default_rng(seed)
    subsets = np.argsort(rng.random((iterations, m)), axis=1)[:, :subset_size]
    rows = _batched_affine(px, probe_pts, subsets)  # (S, 3, 3)
    design = np.concatenate([px, np.ones((m, 1))], axis=1)
    # score hypotheses in chunks to bound memory (S x M x 3 floats)
    best_count, best_err, best_rows = -1, math.inf, None
    for start in range(0, iterations, 500):
        pred = np.einsum("sij,mj->smi", rows[start : start + 500], design)
        dist = np.linalg.norm(pred - probe_pts[None], axis=2)
        counts = (dist < threshold_mm).sum(axis=1)
        # ties broken by the truncated error (MSAC), so a tighter hypothesis wins
        errs = np.minimum(dist, threshold_mm).sum(axis=1)
        for k in np.flatnonzero(counts == counts.max()):
            if counts[k] > best_count or (counts[k] == best_count and errs[k] < best_err):
                best_count, best_err, best_rows = counts[k], errs[k], rows[start + k]
    dist = np.linalg.norm(design @ best_rows.T - probe_pts, axis=1)
    itp = _rows_to_matrix(best_rows)
    ptr_out = ptr
    inliers = dist < threshold_mm
    # alternate: inliers -> LM -> residuals -> inliers until the set is stable
    for _ in range(6):
        threshold = threshold_mm
        if adaptive_threshold:
            # the median of a 3D Gaussian error norm is ~1.54 sigma
            sigma = np.median(dist) / 1.54  # robust while fewer than half the points are outliers
            threshold = max(threshold_mm, inlier_sigmas * sigma)
        new_inliers = dist < threshold
        if new_inliers.sum() < 3:
            raise CalibrationError(f"RANSAC found only {int(new_inliers.sum())} consistent points")
        if _ > 0 and np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
        itp, ptr_out = refine_lm(px[inliers], xp[inliers], poses[inliers], ptr, itp, refine_registration)
        pred = geometry.apply(geometry.compose(geometry.invert_rigid(ptr_out), poses, itp), px)
        dist = np.linalg.norm(pred - xp, axis=1)
    return itp, ptr_out, inliers


__all__ = [
    "MIN_FRAMES",
    "phantom_points_in_probe",
    "complete_z_column",
    "solve_plus",
    "solve_ransac_lm",
    "refine_lm",
    "image_to_probe_from_params",
    "params_from_image_to_probe",
]
