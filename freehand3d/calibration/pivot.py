"""Stylus pivot (and spin) calibration: StylusTipToStylus from a stylus pivoting about its tip.

Every pose ``StylusToReference_i = [R_i | t_i]`` of a stylus pivoting about a fixed point satisfies
``R_i p_tip + t_i = p_pivot``: one linear system ``[R_i | -I] [p_tip; p_pivot] = -t_i`` over all
poses (3 rows each).

- ``method="plus"`` follows PLUS's vtkPlusPivotCalibrationAlgo: least squares with iterative
  3-sigma rejection of single rows, and the tip frame built from the tip vector (z along it, y
  orthogonal to z and the marker's x axis, or y axis when those are within 20 degrees).
- ``method="robust"`` (default): RANSAC over triples of poses (inliers: the pose puts the tip within
  ``threshold_mm`` of the pivot), then least squares on the inlier poses and Huber-weighted
  refinement; a corrupted pose is dropped whole rather than row by row.

Spin calibration (:func:`spin_axis`): a stylus turned about its own shaft with the tip fixed
rotates about the shaft axis; that axis in the marker frame orients the tip frame's z axis along
the physical shaft (optional, ``spin`` poses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from freehand3d.errors import CalibrationError


@dataclass
class PivotResult:
    """``stylus_tip_to_stylus`` (4, 4); ``pivot_point_reference`` (3,); ``pivot_rms_mm`` the RMS
    and ``pivot_mean_mm`` the mean (PLUS's "calibration error") distance of the inlier poses' tips
    from the pivot point; ``inliers`` (N,) bool."""

    stylus_tip_to_stylus: np.ndarray
    pivot_point_reference: np.ndarray
    pivot_rms_mm: float
    pivot_mean_mm: float
    pivot_max_mm: float
    inliers: np.ndarray
    method: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "stylus_tip_to_stylus": np.asarray(self.stylus_tip_to_stylus).tolist(),
            "pivot_rms_mm": self.pivot_rms_mm,
            "pivot_mean_mm": self.pivot_mean_mm,
            "pivot_max_mm": self.pivot_max_mm,
            "pivot_point_reference": np.asarray(self.pivot_point_reference).tolist(),
            "tip_offset_mm": float(np.linalg.norm(self.stylus_tip_to_stylus[:3, 3])),
            "poses_used": int(self.inliers.sum()),
            "poses_total": int(len(self.inliers)),
            "method": self.method,
        }
        out.update(self.details)
        return out


def _system(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(poses)
    a = np.zeros((3 * n, 6))
    a[:, :3] = poses[:, :3, :3].reshape(3 * n, 3)
    a[:, 3:] = np.tile(-np.eye(3), (n, 1))
    b = -poses[:, :3, 3].reshape(-1)
    return a, b


def _solve(poses: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    a, b = _system(poses)
    if weights is not None:
        w = np.repeat(np.sqrt(weights), 3)
        a, b = a * w[:, None], b * w
    return np.linalg.lstsq(a, b, rcond=None)[0]


def tip_distances(poses: np.ndarray, tip: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """Distance (mm) of each pose's tip position from the pivot point."""
    pts = poses[:, :3, :3] @ tip + poses[:, :3, 3]
    return np.linalg.norm(pts - pivot, axis=1)


def tip_frame(tip: np.ndarray, shaft: np.ndarray | None = None) -> np.ndarray:
    """StylusTipToStylus with origin at ``tip``: z along ``shaft`` (default: the tip vector, as
    PLUS), y orthogonal to z and the marker's x axis (its y axis when x is within 20 degrees of z),
    x = y cross z."""
    z = np.asarray(tip if shaft is None else shaft, float)
    norm = np.linalg.norm(z)
    if norm < 1e-9:
        raise CalibrationError("the tip is at the marker origin: cannot orient the tip frame")
    z = z / norm
    unit_x = np.array([1.0, 0.0, 0.0])
    angle = np.degrees(np.arccos(np.clip(abs(z @ unit_x), 0.0, 1.0)))
    helper = unit_x if angle > 20.0 else np.array([0.0, 1.0, 0.0])
    y = np.cross(z, helper)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    x /= np.linalg.norm(x)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = x, y, z, tip
    return out


def _plus_lsqr(poses: np.ndarray, sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """PLUS's rule: reject single rows whose residual is more than ``sigma`` standard deviations
    from the mean residual, re-solve, until none is rejected. Returns (x, inlier poses)."""
    a, b = _system(poses)
    keep = np.arange(len(b))
    while True:
        x = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        res = a[keep] @ x - b[keep]
        std = res.std()
        good = np.abs(res - res.mean()) < sigma * std
        if good.all() or std == 0 or good.sum() < 6:
            break
        keep = keep[good]
    rows = np.zeros(len(b), bool)
    rows[keep] = True
    return x, rows.reshape(-1, 3).all(axis=1)


def _robust(poses: np.ndarray, threshold_mm: float, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(poses)
    best_inl, best_score = None, -1.0
    for _ in range(iterations):
        idx = rng.choice(n, 3, replace=False)
        try:
            x = _solve(poses[idx])
        except np.linalg.LinAlgError:
            continue
        d = tip_distances(poses, x[:3], x[3:])
        inl = d < threshold_mm
        score = inl.sum() - (d[inl] / threshold_mm).sum() * 1e-3  # tie-break: tighter wins
        if score > best_score:
            best_score, best_inl = score, inl
    if best_inl is None or best_inl.sum() < 3:
        raise CalibrationError("no pivot point is consistent with 3 or more poses: is the tip really "
                               "fixed while the stylus pivots?")
    x = _solve(poses[best_inl])
    # re-select inliers from the all-inlier fit, then Huber-weighted refinement on them
    for _ in range(10):
        d = tip_distances(poses, x[:3], x[3:])
        inl = d < threshold_mm
        if inl.sum() < 3:
            break
        scale = max(1.4826 * np.median(d[inl]), 1e-6)
        k = 1.345 * scale
        w = np.where(d[inl] <= k, 1.0, k / np.maximum(d[inl], 1e-12))
        x_new = _solve(poses[inl], w)
        if np.allclose(x_new, x, atol=1e-9):
            x = x_new
            break
        x = x_new
    d = tip_distances(poses, x[:3], x[3:])
    return x, d < threshold_mm


def pivot_calibrate(
    stylus_to_reference: np.ndarray,
    method: str = "robust",
    *,
    threshold_mm: float | None = None,
    iterations: int = 500,
    seed: int = 0,
    spin: np.ndarray | None = None,
) -> PivotResult:
    """Pivot calibration of a tracked stylus.

    Parameters
    ----------
    stylus_to_reference : (N, 4, 4)
        Stylus marker poses while the stylus pivots about its tip (any fixed frame works as
        reference: the tracker's or a reference marker's).
    method : "robust" or "plus"
        See the module docstring.
    threshold_mm : float, optional
        Inlier distance of the robust method; default: 3 x the median tip spread of a first fit,
        at least 1 mm.
    iterations : RANSAC iterations of the robust method.
    spin : (M, 4, 4), optional
        Poses of the stylus turning about its shaft; their rotation axis orients the tip frame.

    Returns
    -------
    PivotResult
    """
    poses = np.asarray(stylus_to_reference, float)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise CalibrationError(f"stylus poses must be (N, 4, 4), got {poses.shape}")
    poses = poses[np.isfinite(poses).all(axis=(1, 2))]
    if len(poses) < 4:
        raise CalibrationError(f"only {len(poses)} valid stylus poses; pivot calibration needs at least 4")
    rot = poses[:, :3, :3]
    # the poses must turn: a stylus that does not pivot leaves the tip undetermined
    spread = np.degrees(np.arccos(np.clip((np.einsum("nij,ij->n", rot, rot[0]) - 1) / 2, -1, 1))).max()
    if spread < 5.0:
        raise CalibrationError(f"the stylus turns by only {spread:.1f} degrees; pivot it by 20 degrees or more")
    if method == "plus":
        x, inliers = _plus_lsqr(poses)
    elif method == "robust":
        if threshold_mm is None:
            x0, _ = _plus_lsqr(poses)
            d0 = tip_distances(poses, x0[:3], x0[3:])
            threshold_mm = max(1.0, 3.0 * float(np.median(d0)))
        x, inliers = _robust(poses, threshold_mm, iterations, seed)
    else:
        raise CalibrationError(f"unknown pivot method {method!r}; use robust or plus")
    tip, pivot = x[:3], x[3:]
    shaft = None
    details = {}
    if spin is not None:
        shaft = spin_axis(spin)
        if shaft @ tip < 0:
            shaft = -shaft
        details["spin_axis"] = shaft.tolist()
        details["spin_to_tip_angle_deg"] = float(np.degrees(np.arccos(np.clip(shaft @ tip / np.linalg.norm(tip), -1, 1))))
    d = tip_distances(poses[inliers], tip, pivot)
    return PivotResult(
        stylus_tip_to_stylus=tip_frame(tip, shaft),
        pivot_point_reference=pivot,
        pivot_rms_mm=float(np.sqrt(np.mean(d ** 2))),
        pivot_mean_mm=float(d.mean()),
        pivot_max_mm=float(d.max()),
        inliers=inliers,
        method=method,
        details={**details, **({"threshold_mm": threshold_mm} if method == "robust" else {})},
    )


def spin_axis(poses: np.ndarray) -> np.ndarray:
    """Unit rotation axis (marker frame) of a stylus spun about its shaft: the axis of every
    relative rotation ``R_0^T R_i``, averaged with consistent signs."""
    from scipy.spatial.transform import Rotation

    poses = np.asarray(poses, float)
    rel = np.einsum("ji,njk->nik", poses[0, :3, :3], poses[1:, :3, :3])
    rotvec = Rotation.from_matrix(rel).as_rotvec()
    angles = np.linalg.norm(rotvec, axis=1)
    use = angles > np.radians(5)
    if use.sum() < 1:
        raise CalibrationError("the stylus spins by less than 5 degrees; spin it about its shaft")
    axes = rotvec[use] / angles[use, None]
    scatter = axes.T @ axes
    axis = np.linalg.eigh(scatter)[1][:, -1]
    return axis / np.linalg.norm(axis)


def stylus_poses(sweep, stylus: str = "StylusToReference") -> np.ndarray:
    """(N, 4, 4) valid stylus poses of a (tracker-only) sweep: ``stylus`` (``<X>To<Y>``) directly,
    or ``StylusToTracker`` combined with ``ReferenceToTracker`` for ``StylusToReference``."""
    from freehand3d.errors import InputError

    if stylus in sweep.transforms:
        return sweep.transforms[stylus][sweep.valid[stylus]]
    if stylus == "StylusToReference" and {"StylusToTracker", "ReferenceToTracker"} <= set(sweep.transforms):
        ok = sweep.valid["StylusToTracker"] & sweep.valid["ReferenceToTracker"]
        return np.linalg.inv(sweep.transforms["ReferenceToTracker"][ok]) @ sweep.transforms["StylusToTracker"][ok]
    if stylus == "StylusToReference" and "StylusToTracker" in sweep.transforms:
        return sweep.transforms["StylusToTracker"][sweep.valid["StylusToTracker"]]
    raise InputError(f"has no {stylus} transform (nor StylusToTracker); it has "
                     f"{', '.join(sweep.transforms) or 'no transforms'}: name the stylus with --stylus", sweep.source)


def pivot_calibrate_files(stylus_path, output, *, stylus: str = "StylusToReference", method: str = "robust",
                          spin_path=None, threshold_mm=None, config=None, plus_config=None, seed: int = 0) -> PivotResult:
    """What ``freehand3d pivot-calibrate`` runs: read, calibrate, write the JSON (and a device set)."""
    import json
    from pathlib import Path

    from freehand3d._atomic import write_text_atomic
    from freehand3d.errors import ConfigError, InputError
    from freehand3d.io import read_sweep

    if method not in ("robust", "plus"):
        raise ConfigError(f"--method must be robust or plus, not {method!r}")
    if threshold_mm is not None and not (np.isfinite(threshold_mm) and threshold_mm > 0):
        raise ConfigError(f"--threshold-mm must be a positive number, got {threshold_mm!r}")
    if "To" not in stylus or stylus.startswith("To") or stylus.endswith("To"):
        raise ConfigError(f"--stylus {stylus!r} is not a transform name like StylusToReference")
    if plus_config is not None and config is None:
        raise ConfigError("--plus-config needs --config (the device set to copy)")
    for p in (stylus_path, spin_path):
        if p is not None and not Path(p).exists():
            raise InputError("file not found", p)
    if config is not None and not Path(config).exists():
        raise ConfigError("device-set file not found", config)
    if Path(output).is_dir():
        raise ConfigError("is a folder; give a .json file name", output)
    poses = stylus_poses(read_sweep(stylus_path), stylus)
    spin = stylus_poses(read_sweep(spin_path), stylus) if spin_path is not None else None
    try:
        result = pivot_calibrate(poses, method, threshold_mm=threshold_mm, seed=seed, spin=spin)
    except CalibrationError as exc:
        raise CalibrationError(exc.problem, stylus_path) from None
    result.details["stylus_file"] = str(stylus_path)
    write_text_atomic(output, json.dumps(result.to_json(), indent=2) + "\n")
    if plus_config is not None:
        from freehand3d.io.plus_config import write_device_set

        write_device_set(config, plus_config, transforms={"StylusTipToStylus": result.stylus_tip_to_stylus},
                         error=result.pivot_mean_mm)
    return result


__all__ = ["PivotResult", "pivot_calibrate_files", "pivot_calibrate", "spin_axis", "tip_frame", "tip_distances", "stylus_poses"]
