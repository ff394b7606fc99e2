"""Phantom registration: PhantomToReference from stylus-tip landmark points.

- :func:`read_landmarks` reads ``<PhantomDefinition><Geometry><Landmarks>`` of a PLUS device set.
- :func:`detect_landmarks` finds, in a continuous tracked-stylus recording, the moments the tip
  rests on a point while the shaft pivots (PLUS's vtkPlusLandmarkDetectionAlgo rules: windows of
  ``filter_window_s``; a landmark when over ``detection_s`` the window-mean tip positions stay in a
  box of diagonal <= ``tip_max_mm`` while a point 100 mm along the tip frame's x axis sweeps a box of
  diagonal >= ``shaft_min_mm``; a landmark closer than a third of the landmarks' minimum spacing to
  an earlier one is the same landmark). ``detector="plus-2014"`` is the detector of 8 Oct 2014 that
  wrote PlusLibData's landmark-detection baseline, which it reproduces to the printed digits.
- :func:`register_landmarks` is the paired-point rigid registration (SVD, Arun/Horn) of the defined
  landmarks (phantom frame) onto the touched ones (reference frame), with the fiducial registration
  error.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from freehand3d.errors import CalibrationError, ConfigError


def read_landmarks(path) -> tuple[list[str], np.ndarray]:
    """(names, (K, 3) positions in the phantom frame, mm) of a device set's landmarks."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot be read as XML ({exc})", path) from None
    block = root.find(".//PhantomDefinition/Geometry/Landmarks")
    if block is None:
        raise ConfigError("has no <PhantomDefinition><Geometry><Landmarks>: the phantom's landmark "
                          "positions are needed for phantom registration", path)
    names, points = [], []
    for k, el in enumerate(block.findall("Landmark")):
        text = el.get("Position")
        try:
            xyz = [float(v) for v in (text or "").split()]
        except ValueError:
            xyz = []
        if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
            raise ConfigError(f"landmark {el.get('Name') or k + 1}: Position = {text!r} is not 3 numbers", path)
        names.append(el.get("Name") or f"#{k + 1}")
        points.append(xyz)
    if len(points) < 3:
        raise ConfigError(f"defines {len(points)} landmarks; a rigid registration needs at least 3", path)
    pts = np.array(points)
    if np.linalg.matrix_rank(pts - pts.mean(axis=0), tol=1e-6) < 2:
        raise ConfigError("the landmarks are collinear: they cannot fix the phantom's orientation", path)
    return names, pts


def min_landmark_spacing(points: np.ndarray) -> float:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    d[np.eye(len(points), dtype=bool)] = np.inf
    return float(d.min())


@dataclass
class RegistrationResult:
    phantom_to_reference: np.ndarray
    fre_mm: float  # RMS distance of the registered defined landmarks from the touched ones
    fre_mean_mm: float
    fre_max_mm: float
    per_landmark_mm: np.ndarray
    touched_reference: np.ndarray
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "phantom_to_reference": np.asarray(self.phantom_to_reference).tolist(),
            "fre_mm": self.fre_mm,
            "fre_mean_mm": self.fre_mean_mm,
            "fre_max_mm": self.fre_max_mm,
            "per_landmark_mm": np.asarray(self.per_landmark_mm).tolist(),
            "touched_reference": np.asarray(self.touched_reference).tolist(),
        }
        out.update(self.details)
        return out


def rigid_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rigid transform (4, 4) mapping ``source`` points onto ``target`` points."""
    src = np.asarray(source, float)
    dst = np.asarray(target, float)
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    h = (src - cs).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = cd - rot @ cs
    return out


def register_landmarks(defined_phantom: np.ndarray, touched_reference: np.ndarray) -> RegistrationResult:
    """PhantomToReference from corresponding landmark positions (same order)."""
    defined = np.asarray(defined_phantom, float)
    touched = np.asarray(touched_reference, float)
    if defined.shape != touched.shape or defined.ndim != 2 or defined.shape[1] != 3:
        raise CalibrationError(f"{len(touched)} touched landmarks for {len(defined)} defined ones: "
                               "every defined landmark must be touched once, in order")
    if len(defined) < 3:
        raise CalibrationError("a rigid registration needs at least 3 landmarks")
    ptr = rigid_fit(defined, touched)
    res = np.linalg.norm(defined @ ptr[:3, :3].T + ptr[:3, 3] - touched, axis=1)
    return RegistrationResult(ptr, float(np.sqrt(np.mean(res ** 2))), float(res.mean()), float(res.max()),
                              res, touched)


#: PLUS detector versions :func:`detect_landmarks` follows (see its docstring)
DETECTORS = ("plus", "plus-2014")


def _plus_estimate_slice(n_windows: int) -> slice:
    """The samples PLUS averages into a landmark, counted from the start of its buffer.

    PLUS (vtkIGSIOLandmarkDetectionAlgo::EstimateLandmarkPosition, and the 2014
    vtkLandmarkDetectionAlgo after its 8 Oct 2014 refactoring) meant to skip the first 10 % of the
    windows and average the rest, but assigns the number of windows to skip to the window size as
    well (``numberOfWindowsSkip = filterWindowSize = round(0.1 * n_windows)``, at least 1), so it
    averages samples ``[s * s, n_windows * s)`` with ``s = max(1, round(0.1 * n_windows))``: with
    the default 0.2 s / 1.0 s, samples 1..4 of the buffer.
    """
    skip = int(math.floor(n_windows * 0.1 + 0.5))
    size = max(1, skip)
    return slice(size * skip, n_windows * size)


def detect_landmarks(
    stylus_tip_to_reference: np.ndarray,
    acquisition_rate_hz: float,
    min_spacing_mm: float = 15.0,
    *,
    filter_window_s: float = 0.2,
    detection_s: float = 1.0,
    shaft_min_mm: float = 30.0,
    tip_max_mm: float = 1.5,
    max_landmarks: int | None = None,
    estimate: str = "plus",
    detector: str = "plus",
) -> tuple[np.ndarray, list[int]]:
    """Landmark positions (K, 3) in the reference frame, in the order touched, and the frame index
    at which each was accepted.

    ``detector="plus"`` is PLUS's current detector (vtkIGSIOLandmarkDetectionAlgo, PLUS 2.8+):
    every completed window's mean tip and shaft point go into bounding boxes; the tip moving
    (box diagonal > ``tip_max_mm``) clears the buffer; a landmark once the buffer holds
    ``detection_s`` and the shaft box diagonal is >= ``shaft_min_mm`` (the buffer keeps growing
    while the shaft has not moved enough).

    ``detector="plus-2014"`` is the detector PLUS had when it wrote PlusLibData's
    ``PhantomRegistrationLandmarkDetection.results.xml`` (vtkLandmarkDetectionAlgo, PlusLib commit
    02d6a8fb4, 8 Oct 2014; the baseline is dated 8 Oct 2014 15:39): the first window after a
    (re)start is not put in the boxes; when the tip moves, the buffer keeps its last window and
    the boxes restart from it; after ``detection_s`` the shaft criterion is the SUM of the shaft
    box's side lengths (> ``shaft_min_mm``), and when it fails the buffer again keeps only its last
    window, so a landmark is always estimated from a buffer of exactly ``detection_s``.

    ``estimate="plus"`` averages the samples PLUS averages (:func:`_plus_estimate_slice`: samples
    1..4 of the buffer with the default windows); ``"dwell"`` averages the whole buffer but its
    first window.
    """
    poses = np.asarray(stylus_tip_to_reference, float)
    if not (np.isfinite(acquisition_rate_hz) and acquisition_rate_hz > 0):
        raise CalibrationError(f"acquisition rate {acquisition_rate_hz!r} Hz is not positive")
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, not {detector!r}")
    if estimate not in ("plus", "dwell"):
        raise ValueError(f"estimate must be 'plus' or 'dwell', not {estimate!r}")
    window = max(1, int(math.floor(acquisition_rate_hz * filter_window_s + 0.5)))
    n_windows = int(detection_s / filter_window_s)
    if n_windows < 1:
        raise CalibrationError("detection time must be longer than the filter window")
    plus_slice = _plus_estimate_slice(n_windows)
    plus_count = len(range(*plus_slice.indices(10 ** 9)))
    shaft_point = np.array([100.0, 0.0, 0.0, 1.0])
    found: list[np.ndarray] = []
    frames: list[int] = []
    buf: list[int] = []
    tip_box: list[np.ndarray] = []
    shaft_box: list[np.ndarray] = []

    def lengths(points):
        arr = np.array(points)
        return arr.max(axis=0) - arr.min(axis=0)

    def accept(i) -> str:
        """Estimate the landmark from ``buf``: "short", "same" (an earlier landmark), "new", "done"."""
        if estimate == "plus":
            use = buf[plus_slice]
            if len(use) != plus_count:  # PLUS: "Not right number of points", no landmark
                return "short"
        else:
            use = buf[window:]
        point = poses[use, :3, 3].mean(axis=0)
        if any(np.linalg.norm(point - p) < min_spacing_mm / 3 for p in found):
            return "same"
        found.append(point)
        frames.append(i)
        return "done" if max_landmarks is not None and len(found) >= max_landmarks else "new"

    for i in range(len(poses)):
        if not np.isfinite(poses[i]).all():
            continue
        buf.append(i)
        if len(buf) % window:
            continue
        tip_mean = poses[buf[-window:], :3, 3].mean(axis=0)
        shaft = (poses[i] @ shaft_point)[:3]
        n_done = len(buf) // window
        if detector == "plus":
            tip_box.append(tip_mean)
            shaft_box.append(shaft)
            if np.linalg.norm(lengths(tip_box)) > tip_max_mm:
                buf, tip_box, shaft_box = [], [], []
                continue
            if n_done < n_windows or np.linalg.norm(lengths(shaft_box)) < shaft_min_mm:
                continue
            status = accept(i)
            buf, tip_box, shaft_box = [], [], []
        else:  # plus-2014
            if n_done > 1:
                tip_box.append(tip_mean)
                shaft_box.append(shaft)
                if not np.linalg.norm(lengths(tip_box)) < tip_max_mm:
                    buf, tip_box, shaft_box = buf[-window:], [tip_mean], [shaft]
            if n_done < n_windows:
                continue
            moved = float(lengths(shaft_box).sum()) if shaft_box else -math.inf
            if not moved > shaft_min_mm:
                buf, tip_box, shaft_box = buf[-window:], [tip_mean], [shaft]
                continue
            status = accept(i)
            tip_box, shaft_box = [], []
            if status != "short":  # 2014: the buffer is only cleared once a position was estimated
                buf = []
        if status == "done":
            break
    return (np.array(found) if found else np.zeros((0, 3))), frames


def register_phantom_files(
    stylus_path,
    config,
    output,
    *,
    detect: bool = True,
    stylus_tip_to_stylus: np.ndarray | None = None,
    estimate: str = "plus",
    plus_config=None,
    landmark_frames: list[int] | None = None,
    detector: str = "plus",
) -> RegistrationResult:
    """What ``freehand3d register-phantom`` runs.

    ``stylus_path``: tracked stylus recording (StylusToTracker + ReferenceToTracker, or
    StylusToReference). ``config``: device set with the phantom's landmarks and (unless
    ``stylus_tip_to_stylus`` is given) the StylusTipToStylus calibration. With ``detect`` the
    landmarks are found automatically; otherwise ``landmark_frames`` gives, per defined landmark,
    the frame index at which the tip rested on it (averaged over +-0.1 s). ``detector``: see
    :func:`detect_landmarks`.
    """
    import json
    from pathlib import Path

    from freehand3d._atomic import write_text_atomic
    from freehand3d.calibration.pivot import stylus_poses
    from freehand3d.errors import InputError
    from freehand3d.io import read_sweep
    from freehand3d.io.plus_config import read_device_set, write_device_set

    for p in (stylus_path,):
        if not Path(p).exists():
            raise InputError("file not found", p)
    if not Path(config).exists():
        raise ConfigError("device-set file not found", config)
    if Path(output).is_dir():
        raise ConfigError("is a folder; give a .json file name", output)
    names, defined = read_landmarks(config)
    ds = read_device_set(config)
    if stylus_tip_to_stylus is None:
        if "StylusTipToStylus" not in ds.coordinate_definitions:
            raise ConfigError("has no StylusTipToStylus transform: run pivot-calibrate first and pass "
                              "its result with --stylus-calibration", config)
        stylus_tip_to_stylus = ds.coordinate_definitions["StylusTipToStylus"].matrix
    sweep = read_sweep(stylus_path)
    if not detect and landmark_frames is None:
        raise ConfigError("give --landmark-frames (one frame index per landmark) or use --detect-landmarks")
    # the sweep's valid stylus poses in time order
    if "StylusToReference" in sweep.transforms:
        ok = sweep.valid["StylusToReference"].copy()
    elif {"StylusToTracker", "ReferenceToTracker"} <= set(sweep.transforms):
        ok = sweep.valid["StylusToTracker"] & sweep.valid["ReferenceToTracker"]
    else:
        stylus_poses(sweep)  # raises the one-line error naming what is there
        ok = np.zeros(len(sweep), bool)
    t = np.asarray(sweep.timestamps, float)
    idx = np.flatnonzero(ok & np.isfinite(t))
    idx = idx[np.argsort(t[idx], kind="stable")]
    if len(idx) < 10:
        raise InputError(f"has only {len(idx)} frames with a valid stylus pose", stylus_path)
    full = stylus_poses(sweep.subset(idx)) @ stylus_tip_to_stylus
    if detect:
        dt = t[idx[1]] - t[idx[0]]
        if not dt > 0:
            raise InputError("the first two frames share a timestamp: cannot tell the acquisition rate", stylus_path)
        touched, at = detect_landmarks(full, 1.0 / dt, min_landmark_spacing(defined),
                                       max_landmarks=len(defined), estimate=estimate, detector=detector)
        if len(touched) < len(defined):
            raise CalibrationError(
                f"detected {len(touched)} of the {len(defined)} landmarks (hold the tip still on each "
                "landmark for 1 s while pivoting the stylus by 20-30 degrees)", stylus_path)
        frames = [int(idx[a]) for a in at]
    else:
        if len(landmark_frames) != len(defined):
            raise ConfigError(f"--landmark-frames gives {len(landmark_frames)} frames for {len(defined)} landmarks")
        touched = []
        for f in landmark_frames:
            if not 0 <= f < len(sweep):
                raise ConfigError(f"--landmark-frames: frame {f} is outside 0..{len(sweep) - 1}")
            near = np.flatnonzero(np.abs(t[idx] - t[f]) <= 0.1)
            touched.append(full[near, :3, 3].mean(axis=0))
        touched = np.array(touched)
        frames = list(landmark_frames)
    result = register_landmarks(defined, touched)
    result.details.update({"landmark_names": names, "landmark_frames": frames, "detected": bool(detect),
                           "detector": detector if detect else None,
                           "stylus_tip_to_stylus": np.asarray(stylus_tip_to_stylus).tolist(),
                           "stylus_file": str(stylus_path), "config": str(config)})
    write_text_atomic(output, json.dumps(result.to_json(), indent=2) + "\n")
    if plus_config is not None:
        write_device_set(config, plus_config, transforms={"PhantomToReference": result.phantom_to_reference,
                                                         "StylusTipToStylus": np.asarray(stylus_tip_to_stylus)},
                         error={"PhantomToReference": result.fre_mm})
    return result


__all__ = ["read_landmarks", "detect_landmarks", "register_landmarks", "rigid_fit", "RegistrationResult",
           "register_phantom_files", "min_landmark_spacing", "DETECTORS"]
