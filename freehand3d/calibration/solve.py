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

:func:`refine_map` then refines, on the inliers, ImageToProbe together with the phantom registration
under a Gaussian prior (:class:`RegistrationPrior`: the registration is a measurement, not a free
unknown) and a constant tracker-to-image time offset (poses interpolated by :class:`PoseTrack`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# ------------------------------------------------------------- MAP refinement of the registration
@dataclass(frozen=True)
class RegistrationPrior:
    """Gaussian prior on the phantom registration (``PhantomToReference``) for :func:`refine_map`.

    A PLUS device set's registration comes from touching landmarks with a tracked stylus; its error is
    about 0.5-1 mm and 0.5-1 degree (stylus tip calibration + landmark picking). The prior states
    that uncertainty as independent standard deviations of a small rigid correction of the phantom,
    a rotation about the centre of the wire pattern (so rotation and translation do not trade off
    through a long lever arm) and a translation.

    Attributes
    ----------
    rotation_deg : standard deviation of each rotation-vector component (degrees).
    translation_mm : standard deviation of each translation component (mm).
    """

    rotation_deg: float = 1.0
    translation_mm: float = 1.0

    def __post_init__(self):
        for name in ("rotation_deg", "translation_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"registration prior {name} must be a positive number, got {value!r}")


@dataclass
class MapFit:
    """Outcome of :func:`refine_map`.

    Attributes
    ----------
    image_to_probe, phantom_to_reference : (4, 4) refined estimates.
    time_offset_s : the image at time t shows the probe where the tracker put it at
        ``t + time_offset_s`` (0 when not estimated).
    registration_change_deg, registration_change_mm : size of the registration correction (rotation
        about the wire-pattern centre, translation of that centre).
    data_sigma_mm : per-coordinate standard deviation of the data residuals used as their weight.
    """

    image_to_probe: np.ndarray
    phantom_to_reference: np.ndarray
    time_offset_s: float
    registration_change_deg: float
    registration_change_mm: float
    data_sigma_mm: float


def _registration_correction(delta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Phantom-to-phantom correction: rotation ``delta[:3]`` about ``centre``, then shift ``delta[3:]``."""
    rot = Rotation.from_rotvec(delta[:3]).as_matrix()
    return geometry.rigid(rot, centre + delta[3:6] - rot @ centre)


def _rotvec_matrices(rotvecs: np.ndarray) -> np.ndarray:
    """(M, 3) rotation vectors -> (M, 3, 3) matrices (Rodrigues; cheaper than scipy for small M)."""
    theta = np.linalg.norm(rotvecs, axis=1)
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = rotvecs / safe[:, None]
    skew = np.zeros((len(k), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    skew -= np.swapaxes(skew, 1, 2)
    sin, cos = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + sin * skew + (1 - cos) * skew @ skew


class PoseTrack:
    """Rigid poses sampled in time, to be read at any time: SLERP + linear translation between the
    two nearest samples, continued at the same rate past the first and last sample (unlike
    :func:`freehand3d.geometry.interpolate_poses`, which holds the end pose), so a time shift moves
    every frame smoothly.

    Parameters
    ----------
    times : (N,) strictly increasing sample times, N >= 2.
    poses : (N, 4, 4) rigid.
    """

    def __init__(self, times: np.ndarray, poses: np.ndarray):
        self.times = np.asarray(times, float)
        self.poses = np.asarray(poses, float)
        if len(self.times) < 2 or np.any(np.diff(self.times) <= 0):
            raise CalibrationError("a time offset needs at least 2 poses with strictly increasing timestamps")
        rot = self.poses[:, :3, :3]
        self._steps = Rotation.from_matrix(np.swapaxes(rot[:-1], 1, 2) @ rot[1:]).as_rotvec()

    def at(self, query: np.ndarray) -> np.ndarray:
        """(M, 4, 4) poses at the (M,) ``query`` times."""
        query = np.asarray(query, float)
        k = np.clip(np.searchsorted(self.times, query, side="right") - 1, 0, len(self.times) - 2)
        frac = (query - self.times[k]) / (self.times[k + 1] - self.times[k])
        out = np.tile(np.eye(4), (len(query), 1, 1))
        out[:, :3, :3] = self.poses[k, :3, :3] @ _rotvec_matrices(self._steps[k] * frac[:, None])
        out[:, :3, 3] = self.poses[k, :3, 3] + frac[:, None] * (self.poses[k + 1, :3, 3] - self.poses[k, :3, 3])
        return out


def poses_at_times(times: np.ndarray, poses: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rigid poses (M, 4, 4) at ``query`` times from samples at ``times`` (see :class:`PoseTrack`)."""
    return PoseTrack(times, poses).at(query)


def integrated_autocorrelation_time(residuals: np.ndarray, times: np.ndarray) -> float:
    """Integrated autocorrelation time (in observations) of vector residuals taken in time order:
    ``tau = 1 + 2 sum_k rho_k``, summed while the autocorrelation ``rho_k`` stays positive (Geyer's
    initial positive sequence) and up to a quarter of the series. ``M / tau`` observations carry as
    much information as ``M`` independent ones would with the same spread.

    Parameters
    ----------
    residuals : (M, D) residual vectors; times : (M,) their timestamps (ties keep their order).
    """
    r = np.asarray(residuals, float)[np.argsort(np.asarray(times, float), kind="stable")]
    r = r - r.mean(axis=0)
    total = float(np.sum(r * r))
    if total <= 0 or len(r) < 4:
        return 1.0
    tau = 1.0
    for lag in range(1, len(r) // 4):
        rho = float(np.sum(r[:-lag] * r[lag:])) / total
        if rho <= 0:
            break
        tau += 2.0 * rho
    return tau


def refine_map(
    pixels: np.ndarray,
    phantom_points: np.ndarray,
    probe_to_reference: np.ndarray,
    phantom_to_reference: np.ndarray,
    initial_image_to_probe: np.ndarray,
    prior: RegistrationPrior | None = RegistrationPrior(),
    *,
    pose_track: tuple[np.ndarray, np.ndarray] | None = None,
    observation_times: np.ndarray | None = None,
    max_time_offset_s: float = 1.0,
) -> MapFit:
    """Maximum-a-posteriori joint refinement of ImageToProbe (rigid + sx, sy), the phantom
    registration and optionally a constant tracker-to-image time offset.

    The cost is ``sum(r_i / s)^2 + sum(omega / sigma_rot)^2 + sum(t / sigma_t)^2``: ``r_i`` the 3D
    residuals of the diagonal-wire points in the phantom frame, ``s`` their per-coordinate standard
    deviation (measured from the fit with the given registration, so data and prior carry their
    stated weights), ``omega`` / ``t`` the rotation (about the wire-pattern centre) and translation
    of the registration correction. ``prior=None`` leaves the registration fixed.

    Parameters
    ----------
    pixels, phantom_points, probe_to_reference : (M, 2), (M, 3), (M, 4, 4) observations (inliers).
    phantom_to_reference : (4, 4) measured registration (the prior's mean).
    initial_image_to_probe : (4, 4) starting calibration (e.g. from :func:`solve_ransac_lm`).
    prior : :class:`RegistrationPrior`, or None to keep the registration fixed.
    pose_track : ``(times (N,), ProbeToReference (N, 4, 4))`` of every frame with a valid pose, to
        estimate a time offset (None: no offset). The observations' poses are then read from it
        at ``observation_times + offset`` and ``probe_to_reference`` is not used.
    observation_times : (M,) image timestamps of the observations (needed with ``pose_track``);
        when given, the data weight allows for the correlation of the residuals in time
        (:func:`integrated_autocorrelation_time`).
    max_time_offset_s : bound of the time offset.

    Returns
    -------
    MapFit
    """
    px = np.asarray(pixels, float).reshape(-1, 2)
    xp = np.asarray(phantom_points, float).reshape(-1, 3)
    poses = np.asarray(probe_to_reference, float).reshape(-1, 4, 4)
    ptr0 = np.asarray(phantom_to_reference, float)
    centre = xp.mean(axis=0)
    with_time = pose_track is not None
    if with_time:
        track = PoseTrack(*pose_track)
        if observation_times is None or len(observation_times) != len(px):
            raise ValueError("observation_times must give one timestamp per observation with pose_track")
        # the layers of a frame share its time: interpolate once per frame
        frame_times, frame_of = np.unique(np.asarray(observation_times, float), return_inverse=True)
    with_reg = prior is not None
    if not (np.isfinite(max_time_offset_s) and max_time_offset_s > 0):
        raise ValueError(f"max_time_offset_s must be positive, got {max_time_offset_s!r}")

    # full parameter vector: ImageToProbe (8), registration correction (6), time offset (1) as
    # max_time_offset_s * tanh(x[14]), bounded without a bounded solver (MINPACK's LM is far
    # cheaper here than the trust-region reflective method that bounds need)
    def unpack(x):
        ptr = geometry.compose(ptr0, _registration_correction(x[8:14], centre))
        return image_to_probe_from_params(x[:8]), ptr, max_time_offset_s * math.tanh(x[14])

    def data_residuals(x):
        itp, ptr, dt = unpack(x)
        if with_time:
            pred = geometry.apply(geometry.compose(geometry.invert_rigid(ptr), track.at(frame_times + dt), itp)[frame_of], px)
        else:
            pred = geometry.apply(geometry.compose(geometry.invert_rigid(ptr), poses, itp), px)
        return (pred - xp).ravel()

    def fit(x, free, weight=None):
        """Least squares over the ``free`` entries of the full vector; with ``weight`` the data
        residuals are divided by it and the registration prior is added."""
        def residuals(v):
            full = x.copy()
            full[free] = v
            r = data_residuals(full)
            return r if weight is None else np.concatenate([r / weight, full[8:14] * prior_scale])

        out = x.copy()
        n_residuals = px.size * 3 // 2 + (0 if weight is None else 6)
        method = "lm" if n_residuals >= free.sum() else "trf"
        out[free] = least_squares(residuals, x[free], method=method, x_scale="jac").x
        return out

    x = np.concatenate([params_from_image_to_probe(initial_image_to_probe), np.zeros(7)])
    calibration_and_time = np.r_[np.ones(8, bool), np.zeros(6, bool), [with_time]]
    # first with the registration as measured (and the time offset): the data weight is the spread
    # of the residuals left for the registration prior to explain
    x = fit(x, calibration_and_time)
    residual = data_residuals(x)
    sigma = max(float(np.sqrt(np.mean(np.square(residual)))), 1e-3)
    if observation_times is not None:
        # the errors of neighbouring frames (and of the layers of one frame) are far from
        # independent: count the data as M / tau independent observations
        sigma *= math.sqrt(integrated_autocorrelation_time(residual.reshape(-1, 3), observation_times))
    if with_reg:
        prior_scale = np.repeat([1.0 / math.radians(prior.rotation_deg), 1.0 / prior.translation_mm], 3)
        x = fit(x, calibration_and_time | (np.arange(15) >= 8) & (np.arange(15) < 14), weight=sigma)
    itp, ptr, dt = unpack(x)
    return MapFit(itp, ptr if with_reg else ptr0, float(dt), float(np.degrees(np.linalg.norm(x[8:11]))),
                  float(np.linalg.norm(x[11:14])), sigma)


__all__ = [
    "MIN_FRAMES",
    "RegistrationPrior",
    "MapFit",
    "refine_map",
    "integrated_autocorrelation_time",
    "poses_at_times",
    "PoseTrack",
    "phantom_points_in_probe",
    "complete_z_column",
    "solve_plus",
    "solve_ransac_lm",
    "refine_lm",
    "image_to_probe_from_params",
    "params_from_image_to_probe",
]
