"""N-wire probe calibration from a tracked recording: detection -> labelling -> similar triangles ->
solver -> metrics, plus overlays of what was found.

>>> from freehand3d.io import read_sweep                                     # doctest: +SKIP
>>> from freehand3d.phantoms import load_phantom                             # doctest: +SKIP
>>> result = calibrate(read_sweep("cal.igs.mha"), load_phantom("PlusDeviceSet.xml"),
...                    validation=read_sweep("val.igs.mha"))                 # doctest: +SKIP
>>> result.image_to_probe, result.pre3d_validation_mean_mm                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from freehand3d import geometry
from freehand3d.calibration.detect import detect_points
from freehand3d.calibration.metrics import best_fraction_stats, in_plane_errors, pre3d_errors
from freehand3d.calibration.nwire import find_nwires, middle_wire_points
from freehand3d.calibration.solve import (
    MIN_FRAMES,
    RegistrationPrior,
    phantom_points_in_probe,
    poses_at_times,
    refine_map,
    solve_plus,
    solve_ransac_lm,
)
from freehand3d.errors import CalibrationError, ConfigError, InputError
from freehand3d.io.plus_segmentation import SegmentationParams
from freehand3d.phantoms import NWirePhantom
from freehand3d.sweep import Sweep

SOLVERS = ("ransac-lm", "plus", "lm")

#: Uncertainty of a stylus-based landmark registration of the phantom (PLUS fCal's phantom
#: registration: tracked-stylus tip calibration ~0.3-0.5 mm, landmark picking ~0.5 mm, a few degrees
#: of lever over the ~60 mm landmark spread): 1 degree and 1 mm per axis, the upper end of the
#: 0.5-1 mm / 0.5-1 degree it is usually quoted at, so a good registration is not pulled by it.
DEFAULT_REGISTRATION_PRIOR = RegistrationPrior(rotation_deg=1.0, translation_mm=1.0)


@dataclass
class SegmentedSweep:
    """Labelled wire dots of every frame of a sweep.

    Attributes
    ----------
    labelled : (N, 3 L, 2) pixels in PLUS order, NaN rows for failed frames.
    segmented : (N,) bool, the N-wire pattern was found.
    usable : (N,) bool, segmented and with a valid ProbeToReference pose.
    probe_to_reference : (N, 4, 4).
    candidates : per frame the (K, 2) candidate dots (for overlays).
    """

    labelled: np.ndarray
    segmented: np.ndarray
    usable: np.ndarray
    probe_to_reference: np.ndarray
    candidates: list = field(default_factory=list, repr=False)
    timestamps: np.ndarray | None = None
    pose_valid: np.ndarray | None = None

    def shifted_poses(self, time_offset_s: float, exclude: np.ndarray | None = None) -> np.ndarray:
        """ProbeToReference of every frame at its timestamp + ``time_offset_s`` (SLERP + linear
        between the valid poses, skipping frames in ``exclude``); the poses as recorded when the
        offset is 0 or the timestamps are unknown."""
        if time_offset_s == 0 or self.timestamps is None:
            return self.probe_to_reference
        keep = np.ones(len(self.usable), bool) if self.pose_valid is None else self.pose_valid.copy()
        if exclude is not None:
            keep &= ~exclude
        out = self.probe_to_reference.copy()
        out[keep] = poses_at_times(self.timestamps[keep], self.probe_to_reference[keep],
                                   self.timestamps[keep] + time_offset_s)
        return out


@dataclass
class CalibrationResult:
    """Outcome of :func:`calibrate` (``to_dict`` gives the ``result.json`` content)."""

    image_to_probe: np.ndarray
    phantom_to_reference: np.ndarray
    solver: str
    detection: str
    frames_total: int
    frames_segmented: int
    failed_frames: list[int]
    inliers: int
    observations: int
    pre3d_calibration_mean_mm: float
    pre3d_calibration_std_mm: float
    pre3d_validation_mean_mm: float | None
    pre3d_validation_std_mm: float | None
    validation_frames_total: int | None
    validation_frames_segmented: int | None
    validation_failed_frames: list[int] | None
    in_plane_error_px: dict[str, list[float]]
    seconds: float
    point_order: str = "right-to-left"
    phantom_to_reference_given: np.ndarray | None = None
    registration_prior: RegistrationPrior | None = None
    registration_change_deg: float | None = None
    registration_change_mm: float | None = None
    time_offset_s: float | None = None
    notes: list[str] = field(default_factory=list)
    calibration: SegmentedSweep = field(repr=False, default=None)
    validation: SegmentedSweep | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        """JSON-ready summary (matrices as nested lists)."""
        return {
            "image_to_probe": np.asarray(self.image_to_probe).tolist(),
            "phantom_to_reference": np.asarray(self.phantom_to_reference).tolist(),
            # MAP refinement: phantom_to_reference above is then the refined registration, also used
            # for the validation PRE3D (the phantom did not move between the two recordings)
            "phantom_to_reference_refined": self.phantom_to_reference_given is not None
            and not np.array_equal(self.phantom_to_reference, self.phantom_to_reference_given),
            "phantom_to_reference_given": None if self.phantom_to_reference_given is None
            else np.asarray(self.phantom_to_reference_given).tolist(),
            "registration_prior_deg": None if self.registration_prior is None else self.registration_prior.rotation_deg,
            "registration_prior_mm": None if self.registration_prior is None else self.registration_prior.translation_mm,
            "registration_change_deg": self.registration_change_deg,
            "registration_change_mm": self.registration_change_mm,
            "time_offset_s": self.time_offset_s,
            "warnings": list(self.notes),
            "solver": self.solver,
            "detection": self.detection,
            "point_order": self.point_order,
            "frames_total": self.frames_total,
            "frames_segmented": self.frames_segmented,
            "failed_frames": list(self.failed_frames),
            "inliers": self.inliers,
            "observations": self.observations,
            "pre3d_calibration_mean_mm": self.pre3d_calibration_mean_mm,
            "pre3d_calibration_std_mm": self.pre3d_calibration_std_mm,
            "pre3d_validation_mean_mm": self.pre3d_validation_mean_mm,
            "pre3d_validation_std_mm": self.pre3d_validation_std_mm,
            "validation_frames_total": self.validation_frames_total,
            "validation_frames_segmented": self.validation_frames_segmented,
            "validation_failed_frames": self.validation_failed_frames,
            "in_plane_error_px": self.in_plane_error_px,
            "pixel_size_mm": np.linalg.norm(np.asarray(self.image_to_probe)[:3, :2], axis=0).tolist(),
            "seconds": self.seconds,
        }


def _spacing_of(sweep: Sweep, params: SegmentationParams) -> float:
    # PLUS files carry no usable pixel size (their ElementSpacing is 1): fall back to the config's
    if sweep.spacing is not None:
        return float(np.mean(sweep.spacing))
    return float(params.approximate_spacing_mm_per_pixel)


def segment_sweep(
    sweep: Sweep,
    phantom: NWirePhantom,
    params: SegmentationParams | None = None,
    method: str = "hessian",
    spacing_mm: float | None = None,
    progress: Callable[[int], None] | None = None,
    keep_candidates: bool = False,
) -> SegmentedSweep:
    """Detect and label the N-wire dots of every frame; a frame without the pattern is marked failed
    (never raises for it).

    Parameters
    ----------
    progress : called with 1 after each frame (e.g. a progress bar's ``advance``).
    """
    params = params or SegmentationParams()
    if sweep.frames.dtype != np.uint8 or sweep.frames.ndim != 3:
        # detection thresholds are 8-bit grey levels: the caller converts, explicitly (issue 14)
        raise InputError(
            f"N-wire detection needs 8-bit grey frames, the sweep has {sweep.frames.dtype} x {sweep.n_components}: "
            "convert with sweep.as_uint8(method, window) (CLI: --to-uint8 dtype|window|minmax, --window LOW,HIGH)",
            sweep.source)
    spacing = _spacing_of(sweep, params) if spacing_mm is None else float(spacing_mm)
    n = len(sweep)
    n_wires = 3 * len(phantom.nwires)
    labelled = np.full((n, n_wires, 2), np.nan)
    segmented = np.zeros(n, bool)
    candidates = []
    image_ok = sweep.image_valid
    for i in range(n):
        if image_ok[i]:
            pts = detect_points(sweep.frames[i], spacing, method, params=params)
            lab = find_nwires(pts, phantom, spacing, params)
            if lab is not None:
                labelled[i] = lab
                segmented[i] = True
        else:
            pts = np.zeros((0, 2))
        if keep_candidates:
            candidates.append(pts)
        if progress is not None:
            progress(1)
    try:
        probe_to_reference, pose_ok = sweep.transform("ProbeToReference")
    except Exception as exc:  # noqa: BLE001 - reported as the user's input problem below
        raise CalibrationError(f"the sweep has no ProbeToReference pose ({exc})", sweep.source) from None
    return SegmentedSweep(labelled, segmented, segmented & pose_ok, probe_to_reference, candidates,
                          np.asarray(sweep.timestamps, float), np.asarray(pose_ok, bool))


def _timestamps_increase(seg: SegmentedSweep, exclude: np.ndarray | None = None) -> bool:
    keep = seg.pose_valid if exclude is None else seg.pose_valid & ~exclude
    times = seg.timestamps[keep]
    return len(times) >= 2 and bool(np.all(np.isfinite(times))) and bool(np.all(np.diff(times) > 0))


def _pose_track(seg: SegmentedSweep, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, ProbeToReference) of the frames with a valid pose, or None when the timestamps cannot
    place them in time (then no time offset is estimated)."""
    if seg.timestamps is None or not _timestamps_increase(seg, exclude):
        return None
    keep = seg.pose_valid & ~exclude
    return seg.timestamps[keep], seg.probe_to_reference[keep]


def _phantom_to_reference(phantom: NWirePhantom, sweep: Sweep, given) -> np.ndarray:
    if given is not None:
        return np.asarray(given, float).reshape(4, 4)
    if phantom.phantom_to_reference is not None:
        return np.asarray(phantom.phantom_to_reference, float)
    text = sweep.metadata.get("PhantomToReferenceTransform")
    if text:
        return np.asarray([float(v) for v in str(text).split()], float).reshape(4, 4)
    raise ConfigError(
        "the phantom registration (PhantomToReference) is unknown: give a PLUS device set with it in "
        "<CoordinateDefinitions> as --phantom or --config",
        getattr(sweep, "source", None),
    )


def _observations(seg: SegmentedSweep, phantom: NWirePhantom):
    idx = np.flatnonzero(seg.usable)
    n_layers = len(phantom.nwires)
    lab = seg.labelled[idx]
    pixels = lab.reshape(len(idx), n_layers, 3, 2)[:, :, 1]  # diagonal-wire dots
    points = middle_wire_points(lab, phantom)  # (F, L, 3)
    poses = np.repeat(seg.probe_to_reference[idx], n_layers, axis=0)
    return pixels.reshape(-1, 2), points.reshape(-1, 3), poses, idx


def mirror_labels(labelled: np.ndarray, n_layers: int) -> np.ndarray:
    """Swap wires 1 and 3 of every N (the view from the other side of the phantom, where the dots
    appear left to right instead of PLUS's right to left)."""
    lab = np.asarray(labelled, float)
    shape = lab.shape
    return lab.reshape(shape[:-2] + (n_layers, 3, 2))[..., ::-1, :].reshape(shape)


def _median_pre3d(seg: SegmentedSweep, phantom: NWirePhantom, ptr: np.ndarray, image_to_probe=None) -> float:
    pixels, points, poses, _ = _observations(seg, phantom)
    probe_points = phantom_points_in_probe(points, poses, ptr)
    if image_to_probe is None:
        image_to_probe, _ = solve_plus(pixels, probe_points)
    return float(np.median(pre3d_errors(image_to_probe, pixels, probe_points)))


def choose_point_order(seg: SegmentedSweep, phantom: NWirePhantom, phantom_to_reference: np.ndarray,
                       image_to_probe: np.ndarray | None = None) -> bool:
    """Whether the dots of this sweep are mirrored relative to PLUS's right-to-left order.

    A single frame cannot tell a mirrored view apart (the diagonal's position becomes 1 - alpha), but
    the tracked poses can: only the right order gives phantom points that one calibration maps
    consistently. Both orders are solved (PLUS's linear solver, or with ``image_to_probe`` when
    given) and the one with the smaller median PRE3D wins.
    """
    n_layers = len(phantom.nwires)
    plain = _median_pre3d(seg, phantom, phantom_to_reference, image_to_probe)
    flipped = SegmentedSweep(mirror_labels(seg.labelled, n_layers), seg.segmented, seg.usable,
                             seg.probe_to_reference, seg.candidates)
    return _median_pre3d(flipped, phantom, phantom_to_reference, image_to_probe) < plain


def _time_sorted(sweep: Sweep, what: str) -> tuple[Sweep, str | None]:
    """The sweep in timestamp order, and a note when it had to be sorted (or cannot be placed in
    time). Frames out of time order used to drop the lag model silently (issue 17)."""
    t = np.asarray(sweep.timestamps, float)
    if len(t) < 2 or not np.all(np.isfinite(t)):
        return sweep, None
    if np.all(np.diff(t) > 0):
        return sweep, None
    order = np.argsort(t, kind="stable")
    if np.any(np.diff(t[order]) <= 0):
        return sweep, (f"the {what} frames share timestamps, so the tracker lag cannot be estimated "
                       "or applied; calibrating without it (--no-time-offset)")
    return sweep.subset(order), f"the {what} frames were out of time order; sorted them by timestamp (frame indices in the result refer to the sorted order)"


def _check_poses(sweep: Sweep, what: str) -> np.ndarray:
    """Valid ProbeToReference poses, checked before the (slow) segmentation."""
    try:
        _, pose_ok = sweep.transform("ProbeToReference")
    except Exception as exc:  # noqa: BLE001 - reported as the user's input problem
        raise CalibrationError(f"the {what} recording has no ProbeToReference pose ({exc})", sweep.source) from None
    pose_ok = np.asarray(pose_ok, bool)
    if what == "calibration" and pose_ok.sum() < MIN_FRAMES:
        raise CalibrationError(
            f"only {int(pose_ok.sum())} of {len(sweep)} frames have a valid ProbeToReference pose (tracker "
            f"status OK for both probe and reference); calibration needs at least {MIN_FRAMES}", sweep.source)
    return pose_ok


def unexplained_layer_fraction(sweep: Sweep, seg: "SegmentedSweep", phantom: NWirePhantom,
                               params: SegmentationParams, detection: str = "hessian",
                               max_frames: int = 15) -> tuple[int, int]:
    """(frames showing an extra N-wire-like triple of dots, frames checked): on segmented frames,
    the candidate dots the labelling left over are searched for three collinear dots parallel to
    the labelled layers and of a similar span. A phantom definition that is a subset of the real
    phantom (fCal 1.0's 2 layers on an fCal 1.2 recording with 3) leaves such a layer in every
    frame and calibrates several degrees wrong with a good PRE3D (issue 17)."""
    idx = np.flatnonzero(seg.segmented)
    if len(idx) == 0:
        return 0, 0
    idx = idx[np.linspace(0, len(idx) - 1, min(max_frames, len(idx))).astype(int)]
    spacing = _spacing_of(sweep, params)
    tol_px = 2.0 * params.collinear_points_max_distance_from_line_mm / spacing
    n_layers = len(phantom.nwires)
    hits = 0
    for i in idx:
        pts = detect_points(sweep.frames[i], spacing, detection, params=params,
                            max_candidates=3 * n_layers + 9)
        lab = seg.labelled[i].reshape(n_layers, 3, 2)
        d = np.linalg.norm(pts[:, None, :] - seg.labelled[i][None], axis=-1).min(axis=1)
        rest = pts[d > 3.0]
        if len(rest) < 3:
            continue
        dirs = lab[:, 2] - lab[:, 0]
        spans = np.linalg.norm(dirs, axis=1)
        mean_dir = (dirs / spans[:, None]).mean(axis=0)
        mean_dir /= np.linalg.norm(mean_dir)
        found = False
        for a in range(len(rest)):
            for b in range(len(rest)):
                if a == b:
                    continue
                v = rest[b] - rest[a]
                span = np.linalg.norm(v)
                if span < 0.5 * spans.min() or span > 2.0 * spans.max():
                    continue
                if abs(v @ mean_dir) / span < np.cos(np.radians(5.0)):
                    continue
                normal = np.array([-v[1], v[0]]) / span
                along = (rest - rest[a]) @ v / span ** 2
                off = np.abs((rest - rest[a]) @ normal)
                middle = (along > 0.1) & (along < 0.9) & (off < tol_px)
                if middle.any():
                    found = True
                    break
            if found:
                break
        hits += found
    return hits, len(idx)


def calibrate(
    sweep: Sweep,
    phantom: NWirePhantom,
    validation: Sweep | None = None,
    solver: str = "ransac-lm",
    seed: int = 0,
    *,
    params: SegmentationParams | None = None,
    detection: str = "hessian",
    phantom_to_reference: np.ndarray | None = None,
    refine_registration: bool = False,
    registration_prior: RegistrationPrior | str | None = "auto",
    time_offset: bool = True,
    max_time_offset_s: float = 1.0,
    fixed_time_offset_s: float | None = None,
    ransac_iterations: int = 3000,
    ransac_threshold_mm: float = 0.5,
    point_order: str = "auto",
    progress: Callable[[int], None] | None = None,
    keep_candidates: bool = False,
) -> CalibrationResult:
    """Calibrate a tracked ultrasound probe from an N-wire phantom recording.

    Parameters
    ----------
    sweep : calibration recording with ``ProbeToTracker`` and ``ReferenceToTracker`` (or any transforms
        that give ``ProbeToReference``).
    phantom : the N-wire phantom; its ``phantom_to_reference`` (from a PLUS device set) is the phantom
        registration unless ``phantom_to_reference`` is given.
    validation : optional independent recording for the validation PRE3D.
    solver : ``"ransac-lm"`` (RANSAC + Levenberg-Marquardt), ``"plus"`` (PLUS's linear least squares
        with 3-sigma rejection) or ``"lm"`` (plain LM on all points, for comparison).
    seed : RANSAC's random subsets.
    params : PLUS segmentation parameters (``<Segmentation>`` of a device set); PLUS defaults if None.
    detection : ``"hessian"`` or ``"plus"`` (see :func:`~freehand3d.calibration.detect.detect_points`).
    refine_registration : also estimate PhantomToReference freely (the paper's 14-parameter model;
        poorly conditioned when the probe moves little, see docs/calibration.md).
    registration_prior : ``"ransac-lm"`` and ``"lm"`` then refine the phantom registration jointly
        with ImageToProbe, with this Gaussian prior around the given one (MAP,
        :func:`~freehand3d.calibration.solve.refine_map`); None keeps the registration fixed.
        ``"auto"``: :data:`DEFAULT_REGISTRATION_PRIOR` (a stylus landmark registration's accuracy)
        for the registration of the phantom's device set or the sweep's metadata, None (taken as
        exact) for a ``phantom_to_reference`` given here. The validation PRE3D uses the refined
        registration: the phantom must not have moved between the two recordings.
    time_offset : ``"ransac-lm"`` and ``"lm"`` also estimate a constant tracker-to-image time offset
        (poses interpolated by SLERP + linear at ``timestamp + offset``) from the calibration frames,
        and apply it to the validation frames. Skipped (``time_offset_s`` None) when the timestamps
        do not increase strictly.
    max_time_offset_s : bound of that offset.
    fixed_time_offset_s : a tracker lag measured beforehand (``temporal-calibrate``'s
        ``tracker_lag_s``, same sign): the poses are read at ``timestamp + lag`` for the calibration
        and validation frames and no lag is estimated.
    point_order : ``"right-to-left"`` (PLUS: wire 1 is the rightmost dot), ``"left-to-right"``, or
        ``"auto"``: decided from the tracked poses (:func:`choose_point_order`).
    progress : called with 1 after each segmented frame (calibration then validation).

    Returns
    -------
    CalibrationResult

    Raises
    ------
    CalibrationError
        Fewer than 10 usable frames (segmented, with a valid pose); the message gives the count.
    """
    if point_order not in ("auto", "right-to-left", "left-to-right"):
        raise ConfigError(f"unknown point order {point_order!r}; use auto, right-to-left or left-to-right")
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if not (np.isfinite(max_time_offset_s) and max_time_offset_s > 0):
        raise ConfigError(f"max_time_offset_s must be a positive number of seconds, got {max_time_offset_s!r}")
    if fixed_time_offset_s is not None:
        if not (np.isfinite(fixed_time_offset_s) and abs(fixed_time_offset_s) <= 10):
            raise ConfigError(f"the given time offset must be a finite number of seconds within +-10, "
                              f"got {fixed_time_offset_s!r}")
        time_offset = False
    started = time.perf_counter()
    params = params or SegmentationParams()
    ptr = _phantom_to_reference(phantom, sweep, phantom_to_reference)
    if isinstance(registration_prior, str):
        if registration_prior != "auto":
            raise ConfigError(f"unknown registration prior {registration_prior!r}; give a RegistrationPrior, None "
                              "or 'auto'")
        registration_prior = DEFAULT_REGISTRATION_PRIOR if phantom_to_reference is None else None
    notes: list[str] = []
    if time_offset or fixed_time_offset_s:
        sweep, note = _time_sorted(sweep, "calibration")
        if note:
            notes.append(note)
            warnings.warn(note, stacklevel=2)
        if validation is not None:
            validation, note = _time_sorted(validation, "validation")
            if note:
                notes.append(note)
                warnings.warn(note, stacklevel=2)
    pose_ok = _check_poses(sweep, "calibration")
    seg = segment_sweep(sweep, phantom, params, detection, progress=progress, keep_candidates=keep_candidates)
    if fixed_time_offset_s:
        if not _timestamps_increase(seg):
            raise CalibrationError("the frames' timestamps do not increase strictly, so --time-offset-s "
                                   "cannot be applied", sweep.source)
        seg.probe_to_reference = seg.shifted_poses(float(fixed_time_offset_s))
    n_usable = int(seg.usable.sum())
    if n_usable < MIN_FRAMES:
        raise CalibrationError(
            f"only {n_usable} of {len(sweep)} frames are usable: the N-wires were segmented in "
            f"{int(seg.segmented.sum())} frames and {int(pose_ok.sum())} have a valid pose "
            f"({int((seg.segmented & pose_ok).sum())} both); calibration needs at least {MIN_FRAMES}",
            sweep.source,
        )
    n_layers = len(phantom.nwires)
    mirrored = point_order == "left-to-right" or (point_order == "auto" and choose_point_order(seg, phantom, ptr))
    if mirrored:
        seg.labelled = mirror_labels(seg.labelled, n_layers)
    pixels, points, poses, _ = _observations(seg, phantom)
    probe_points = phantom_points_in_probe(points, poses, ptr)
    ptr_out = ptr
    idx = np.flatnonzero(seg.usable)
    frame_poses = seg.probe_to_reference
    map_fit = None
    if solver == "plus":
        itp, inliers = solve_plus(pixels, probe_points)
    else:
        itp, ptr_out, inliers = solve_ransac_lm(
            pixels, points, poses, ptr, iterations=ransac_iterations, threshold_mm=ransac_threshold_mm,
            refine_registration=refine_registration, ransac=(solver == "ransac-lm"), seed=seed,
        )
        prior = None if refine_registration else registration_prior
        if prior is not None or time_offset:
            obs_frames = np.repeat(idx, n_layers)
            # frames whose every dot was rejected (e.g. a glitching tracker) must not be interpolated
            rejected = np.ones(len(seg.usable), bool)
            rejected[obs_frames[inliers]] = False
            rejected &= seg.usable
            track = _pose_track(seg, rejected) if time_offset else None
            map_fit = refine_map(
                pixels[inliers], points[inliers], poses[inliers], ptr_out, itp, prior,
                pose_track=track, observation_times=seg.timestamps[obs_frames][inliers],
                max_time_offset_s=max_time_offset_s,
            )
            itp, ptr_out = map_fit.image_to_probe, map_fit.phantom_to_reference
            if track is not None:
                frame_poses = seg.shifted_poses(map_fit.time_offset_s, exclude=rejected)
                poses = frame_poses[obs_frames]
        probe_points = phantom_points_in_probe(points, poses, ptr_out)
    time_offset_s = None if map_fit is None or track is None else map_fit.time_offset_s
    if fixed_time_offset_s is not None:
        time_offset_s = float(fixed_time_offset_s)
    if fixed_time_offset_s is None and time_offset_s is not None and abs(time_offset_s) > 0.95 * max_time_offset_s:
        note = (f"the tracker lag estimate {time_offset_s:+.3f} s sits at its +-{max_time_offset_s:g} s bound: "
                "the true lag may be larger or the fit failed; measure it with temporal-calibrate and pass "
                "--time-offset-s, or use --no-time-offset")
        notes.append(note)
        warnings.warn(note, stacklevel=2)
    cal_mean, cal_std = best_fraction_stats(pre3d_errors(itp, pixels, probe_points))

    # in-plane error per wire on the calibration frames
    image_to_phantom = geometry.compose(geometry.invert_rigid(ptr_out), frame_poses[idx], itp)
    err2d = in_plane_errors(seg.labelled[idx], image_to_phantom, phantom)
    in_plane = {w.name: np.nanmean(np.linalg.norm(err2d[:, k], axis=-1)).item() for k, w in enumerate(phantom.wires)}

    val_seg = None
    val_mean = val_std = None
    if validation is not None:
        val_seg = segment_sweep(validation, phantom, params, detection, progress=progress,
                                keep_candidates=keep_candidates)
        if val_seg.usable.sum() >= 3:
            # the time offset found on the calibration frames holds for the validation recording too
            val_shifted = val_seg
            if time_offset_s:
                if not _timestamps_increase(val_seg):
                    raise CalibrationError("the validation frames' timestamps do not increase strictly (some "
                                           "frames share a timestamp), so the tracker lag cannot be applied "
                                           "to them; calibrate with --no-time-offset", validation.source)
                val_shifted = dataclasses.replace(val_seg, probe_to_reference=val_seg.shifted_poses(time_offset_s))
            if point_order == "left-to-right" or (
                point_order == "auto" and choose_point_order(val_shifted, phantom, ptr_out, itp)
            ):
                val_seg.labelled = val_shifted.labelled = mirror_labels(val_seg.labelled, n_layers)
            vp, vx, vposes, _ = _observations(val_shifted, phantom)
            val_mean, val_std = best_fraction_stats(pre3d_errors(itp, vp, phantom_points_in_probe(vx, vposes, ptr_out)))
    extra, checked = unexplained_layer_fraction(sweep, seg, phantom, params, detection)
    if checked and extra >= max(3, 0.6 * checked):
        note = (f"{extra} of {checked} checked frames show a further N-wire layer that the phantom definition "
                f"({len(phantom.nwires)} layers) does not have: a definition that is a subset of the real phantom "
                "calibrates several degrees wrong with a good PRE3D; check --phantom")
        notes.append(note)
        warnings.warn(note, stacklevel=2)
    return CalibrationResult(
        notes=notes,
        image_to_probe=itp,
        phantom_to_reference=ptr_out,
        phantom_to_reference_given=ptr,
        registration_prior=None if map_fit is None or solver == "plus" else prior,
        registration_change_deg=None if map_fit is None else map_fit.registration_change_deg,
        registration_change_mm=None if map_fit is None else map_fit.registration_change_mm,
        time_offset_s=time_offset_s,
        solver=solver,
        detection=detection,
        frames_total=len(sweep),
        frames_segmented=int(seg.segmented.sum()),
        failed_frames=np.flatnonzero(~seg.segmented).tolist(),
        inliers=int(inliers.sum()),
        observations=int(len(inliers)),
        pre3d_calibration_mean_mm=cal_mean,
        pre3d_calibration_std_mm=cal_std,
        pre3d_validation_mean_mm=val_mean,
        pre3d_validation_std_mm=val_std,
        validation_frames_total=None if validation is None else len(validation),
        validation_frames_segmented=None if val_seg is None else int(val_seg.segmented.sum()),
        validation_failed_frames=None if val_seg is None else np.flatnonzero(~val_seg.segmented).tolist(),
        in_plane_error_px=in_plane,
        seconds=time.perf_counter() - started,
        point_order="left-to-right" if mirrored else "right-to-left",
        calibration=seg,
        validation=val_seg,
    )


def write_overlays(sweep: Sweep, segmented: SegmentedSweep, directory: str | os.PathLike,
                   phantom: NWirePhantom, prefix: str = "frame", errors=None) -> list[Path]:
    """PNG per frame: candidate dots (yellow circles), fitted N lines (green), labelled wire points
    (cyan crosses with the wire names); a header band names the recording, the frame number, how
    many wires were found (or FAILED in red), ``errors[i]`` (mm, e.g. a per-frame PRE3D) when given,
    and the legend. Written atomically; returns the paths."""
    import cv2

    from freehand3d._atomic import atomic_path

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [w.name for w in phantom.wires]
    font, band = cv2.FONT_HERSHEY_SIMPLEX, 46
    paths = []
    for i in range(len(sweep)):
        img = cv2.cvtColor(sweep.frames[i], cv2.COLOR_GRAY2BGR)
        if segmented.candidates:
            for x, y in segmented.candidates[i]:
                cv2.circle(img, (int(round(x)), int(round(y))), 6, (0, 255, 255), 1)
        found = 0
        if segmented.segmented[i]:
            lab = segmented.labelled[i].reshape(-1, 3, 2)
            for layer in lab:
                cv2.line(img, tuple(int(v) for v in layer[0].round()), tuple(int(v) for v in layer[2].round()),
                         (0, 200, 0), 1)
            for k, (x, y) in enumerate(segmented.labelled[i]):
                if not np.isfinite(x):
                    continue
                found += 1
                cv2.drawMarker(img, (int(round(x)), int(round(y))), (255, 255, 0), cv2.MARKER_CROSS, 10, 1)
                cv2.putText(img, names[k], (int(x) + 6, int(y) - 6), font, 0.4, (255, 255, 0), 1)
        head = np.zeros((band, img.shape[1], 3), np.uint8)
        status = f"{found}/{len(names)} wires found" if segmented.segmented[i] else "FAILED: N-wire pattern not found"
        err = "" if errors is None or not np.isfinite(errors[i]) else f", error {float(errors[i]):.2f} mm"
        cv2.putText(head, f"{prefix} frame {i} of {len(sweep)} ({i + 1}/{len(sweep)}): {status}{err}", (6, 17), font,
                    0.5, (255, 255, 255) if segmented.segmented[i] else (0, 0, 255), 1)
        x = 6
        for symbol, colour, text in (("o", (0, 255, 255), "candidate dots"), ("-", (0, 200, 0), "fitted N lines"),
                                     ("+", (255, 255, 0), "labelled wires")):
            cv2.putText(head, f"{symbol} {text}", (x, 38), font, 0.45, colour, 1)
            x += 10 + cv2.getTextSize(f"{symbol} {text}", font, 0.45, 1)[0][0] + 12
        img = np.vstack([head, img])
        path = out_dir / f"{prefix}_{i:04d}.png"
        with atomic_path(path) as tmp:
            ok, buf = cv2.imencode(".png", img)
            tmp.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


__all__ = [
    "SOLVERS", "DEFAULT_REGISTRATION_PRIOR", "SegmentedSweep", "CalibrationResult", "segment_sweep", "calibrate", "write_overlays",
    "mirror_labels", "choose_point_order", "calibrate_files",
]


def calibrate_files(
    calibration_path: str | os.PathLike,
    phantom: str | os.PathLike,
    output: str | os.PathLike,
    validation_path: str | os.PathLike | None = None,
    solver: str = "ransac-lm",
    config: str | os.PathLike | None = None,
    plus_config: str | os.PathLike | None = None,
    tfm: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    detection: str = "hessian",
    seed: int = 0,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    registration_prior: RegistrationPrior | str | None = "auto",
    time_offset: bool = True,
    fixed_time_offset_s: float | None = None,
    to_uint8: str = "dtype",
    window: tuple[float, float] | None = None,
) -> CalibrationResult:
    """File-level calibration (what ``freehand3d calibrate`` runs): read the recordings, phantom and
    settings, calibrate, write ``result.json`` and the optional PLUS device set, ITK ``.tfm`` and
    overlay PNGs (all atomically).

    Parameters
    ----------
    phantom : shipped phantom name, phantom YAML, or PLUS device-set XML (which also gives the
        phantom registration and segmentation settings).
    config : PLUS device set for the segmentation settings and PhantomToReference when ``phantom``
        is a YAML (and the template of ``plus_config``).
    progress_factory : called with the number of frames to process; returns the per-frame callback.
    registration_prior, time_offset : see :func:`calibrate`; ``"auto"`` here gives the registration
        read from a device set (or the recording) :data:`DEFAULT_REGISTRATION_PRIOR`.
    to_uint8, window : how frames other than 8-bit grey become uint8 for the detection
        (:func:`freehand3d.sweep.to_uint8`: ``"dtype"`` full type range, ``"window"`` with
        ``window=(low, high)``, ``"minmax"`` of the whole recording); uint8 frames are used as they are.
    """
    import json

    from freehand3d._atomic import write_text_atomic
    from freehand3d.io import read_sweep
    from freehand3d.phantoms import load_phantom

    phantom_model = load_phantom(phantom)
    params = SegmentationParams()
    device_set_path = None
    ptr = None
    for candidate in (phantom, config):
        if candidate is not None and str(candidate).lower().endswith(".xml") and Path(candidate).exists():
            from freehand3d.io.plus_config import read_device_set

            device_set = read_device_set(candidate)
            device_set_path = candidate
            if isinstance(device_set.segmentation, SegmentationParams):
                params = device_set.segmentation
            if "PhantomToReference" in device_set.coordinate_definitions:
                ptr = device_set.coordinate_definitions["PhantomToReference"].matrix
    if config is not None and not Path(config).exists():
        raise ConfigError("device-set file not found", config)
    sweep = read_sweep(calibration_path).as_uint8(to_uint8, window)
    validation = read_sweep(validation_path).as_uint8(to_uint8, window) if validation_path is not None else None
    total = len(sweep) + (len(validation) if validation is not None else 0)
    progress = progress_factory(total) if progress_factory is not None else None
    if isinstance(registration_prior, str) and registration_prior == "auto" and ptr is not None:
        registration_prior = DEFAULT_REGISTRATION_PRIOR  # a stylus registration from the device set
    result = calibrate(sweep, phantom_model, validation, solver=solver, seed=seed, params=params,
                       detection=detection, phantom_to_reference=ptr, progress=progress,
                       keep_candidates=overlay is not None, registration_prior=registration_prior,
                       time_offset=time_offset, fixed_time_offset_s=fixed_time_offset_s)
    summary = result.to_dict()
    summary["calibration_file"] = os.fspath(calibration_path)
    summary["validation_file"] = None if validation_path is None else os.fspath(validation_path)
    write_text_atomic(output, json.dumps(summary, indent=2) + "\n")
    if plus_config is not None:
        if device_set_path is None:
            raise ConfigError("--plus-config needs a PLUS device set as --phantom or --config to copy", plus_config)
        from freehand3d.io.plus_config import write_device_set

        error = result.pre3d_validation_mean_mm if result.pre3d_validation_mean_mm is not None \
            else result.pre3d_calibration_mean_mm
        write_device_set(device_set_path, plus_config, transforms={"ImageToProbe": result.image_to_probe}, error=error)
    if tfm is not None:
        from freehand3d.io.transforms import write_itk_transform

        write_itk_transform(tfm, result.image_to_probe)
    if overlay is not None:
        write_overlays(sweep, result.calibration, Path(overlay), phantom_model, prefix="calibration")
        if validation is not None and result.validation is not None:
            write_overlays(validation, result.validation, Path(overlay), phantom_model, prefix="validation")
    return result
