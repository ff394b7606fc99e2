"""Simulated tracked stylus: pivoting (pivot calibration), touching landmarks (phantom registration)
and tracker streams with a known lag, all with exact ground truth.

- :func:`plus_fake_pivot_poses`: the geometry of PLUS's FakeTracker in ``PivotCalibration`` mode
  (reference at T(300, 400, 700) Rz(90); stylus = T(205, 305, 55) Ry(phi) Rz(theta) T(-r, 0, 0)
  with theta, phi uniform in +-60 degrees and r uniform in 210 +- 1 mm) and the outliers of PLUS's
  vtkStylusCalibrationTest (a pose replaced by a random one: rotations +-160 degrees, translations
  +-1000 mm).
- :func:`pivot_poses`: a stylus with a given tip pivoting about a given point, with tracker noise
  and outliers.
- :func:`landmark_touch_poses`: a stylus touching each phantom landmark in turn (dwelling a while
  on each, moving between them), as a continuous tracker recording.
- :func:`lagged_track`: poses of a smooth trajectory sampled by a tracker whose timestamps are off
  by a known lag.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def _rot(axis: str, deg: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler(axis, deg, degrees=True).as_matrix()
    return m


def _trans(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


PLUS_FAKE_REFERENCE_TO_TRACKER = _trans(300, 400, 700) @ _rot("z", 90)


def plus_fake_pivot_poses(n: int = 100, outlier_probability: float = 0.05, seed: int = 0):
    """(StylusToReference (n, 4, 4), is_outlier (n,)) in PLUS's FakeTracker pivot geometry; the
    true tip is (r, 0, 0) with r uniform in 209..211 mm per pose (the mean: (210, 0, 0))."""
    rng = np.random.default_rng(seed)
    poses = np.empty((n, 4, 4))
    outlier = rng.random(n) < outlier_probability
    for i in range(n):
        if outlier[i]:
            rx, ry, rz = rng.uniform(-160, 160, 3)
            t = rng.uniform(-1000, 1000, 3)
            poses[i] = _trans(*t) @ _rot("x", rx) @ _rot("y", ry) @ _rot("z", rz)
            continue
        theta, phi = rng.uniform(-60, 60, 2)
        radius = rng.uniform(209.0, 211.0)
        poses[i] = _trans(205.0, 305.0, 55.0) @ _rot("y", phi) @ _rot("z", theta) @ _trans(-radius, 0, 0)
    return poses, outlier


def plus_fake_landmark_poses(landmarks_phantom: np.ndarray, stylus_tip_to_stylus: np.ndarray,
                             frames_per_landmark: int = 1):
    """PLUS's FakeTracker ``RecordPhantomLandmarks`` mode: (StylusToTracker (K*f, 4, 4),
    ReferenceToTracker (4, 4), landmark index per frame). The tip rests exactly on landmark ``c``
    (phantom at T(-75, -50, -150) in the reference frame), the stylus turned by Ry(5 c) (Ry(180)
    from the 8th on) and Rz(5 c)."""
    ptr = _trans(-75, -50, -150)
    tip_inv = np.linalg.inv(np.asarray(stylus_tip_to_stylus, float))
    poses, labels = [], []
    for c, point in enumerate(np.asarray(landmarks_phantom, float)):
        turn = _rot("y", c * 5.0) if c < 7 else _rot("y", 180.0)
        landmark_to_phantom = _trans(*point) @ turn @ _rot("z", c * 5.0)
        pose = PLUS_FAKE_REFERENCE_TO_TRACKER @ ptr @ landmark_to_phantom @ tip_inv
        for _ in range(frames_per_landmark):
            poses.append(pose)
            labels.append(c)
    return np.array(poses), PLUS_FAKE_REFERENCE_TO_TRACKER.copy(), np.array(labels)


def pivot_poses(
    tip: np.ndarray,
    pivot: np.ndarray,
    n: int = 200,
    max_angle_deg: float = 40.0,
    noise_mm: float = 0.2,
    noise_deg: float = 0.1,
    outlier_fraction: float = 0.0,
    seed: int = 0,
):
    """StylusToReference poses (n, 4, 4) of a stylus whose tip ``tip`` (marker frame, mm) rests on
    ``pivot`` (reference frame) while it is tilted up to ``max_angle_deg`` about a random axis
    and spun about its shaft; tracker noise on the marker pose (``noise_mm`` per axis,
    ``noise_deg`` rotation); ``outlier_fraction`` of the poses are glitches (tip lifted 5-30 mm).
    Returns (poses, is_outlier)."""
    rng = np.random.default_rng(seed)
    tip = np.asarray(tip, float)
    pivot = np.asarray(pivot, float)
    shaft = -tip / np.linalg.norm(tip)  # from the tip towards the marker, in the marker frame
    # marker orientation at rest: shaft pointing up (+z of the reference)
    base = Rotation.align_vectors([[0, 0, 1]], [shaft])[0]
    poses = np.empty((n, 4, 4))
    outlier = rng.random(n) < outlier_fraction
    for i in range(n):
        tilt_axis = rng.normal(size=3)
        tilt_axis[2] = 0
        tilt_axis /= np.linalg.norm(tilt_axis)
        tilt = Rotation.from_rotvec(tilt_axis * np.radians(rng.uniform(0, max_angle_deg)))
        spin = Rotation.from_rotvec(np.array([0, 0, 1.0]) * rng.uniform(-np.pi, np.pi))
        rot = tilt * spin * base
        r = rot.as_matrix()
        t = pivot - r @ tip
        if outlier[i]:
            t = t + rng.normal(size=3) / np.sqrt(3) * rng.uniform(5, 30)
        noise = Rotation.from_rotvec(rng.normal(size=3) * np.radians(noise_deg)).as_matrix()
        poses[i] = np.eye(4)
        poses[i, :3, :3] = noise @ r
        poses[i, :3, 3] = t + rng.normal(size=3) * noise_mm
    return poses, outlier


def landmark_touch_poses(
    landmarks_phantom: np.ndarray,
    phantom_to_reference: np.ndarray,
    tip: np.ndarray,
    dwell_frames: int = 60,
    move_frames: int = 40,
    noise_mm: float = 0.05,
    seed: int = 0,
):
    """A continuous stylus recording touching each landmark in turn: StylusToReference
    (N, 4, 4) and the index of the landmark touched per frame (-1 while moving). The stylus
    pivots by up to 20 degrees about its tip while it rests on a landmark."""
    rng = np.random.default_rng(seed)
    lm = geometry_apply(phantom_to_reference, np.asarray(landmarks_phantom, float))
    tip = np.asarray(tip, float)
    shaft = -tip / np.linalg.norm(tip)
    base = Rotation.align_vectors([[0.3, 0.2, 1.0]], [shaft])[0]
    poses, labels = [], []
    position = lm[0] + np.array([0, 0, 40.0])
    for k, target in enumerate(lm):
        # move from the current position to 30 mm above the landmark, then down onto it
        above = target + np.array([0, 0, 30.0])
        for s in np.linspace(0, 1, move_frames, endpoint=False):
            p = (1 - s) * position + s * above
            poses.append(_pose_with_tip(base, tip, p + rng.normal(size=3) * 0.5))
            labels.append(-1)
        for s in np.linspace(0, 1, 10, endpoint=False):
            poses.append(_pose_with_tip(base, tip, (1 - s) * above + s * target))
            labels.append(-1)
        # pivot the stylus about its resting tip (what PLUS's detector looks for)
        for j in range(dwell_frames):
            phase = 2 * np.pi * j / dwell_frames + k
            amount = np.radians(20.0) * min(1.0, 4.0 * j / dwell_frames)  # ease in: the tip settles first
            swing = Rotation.from_rotvec(amount * np.array([np.cos(phase), np.sin(phase), 0.0]))
            poses.append(_pose_with_tip(swing * base, tip, target + rng.normal(size=3) * noise_mm))
            labels.append(k)
        position = target + np.array([0, 0, 30.0])
    return np.array(poses), np.array(labels)


def _pose_with_tip(rot: Rotation, tip: np.ndarray, tip_reference: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot.as_matrix()
    m[:3, 3] = tip_reference - m[:3, :3] @ tip
    return m


def geometry_apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


__all__ = ["plus_fake_pivot_poses", "plus_fake_landmark_poses", "pivot_poses", "landmark_touch_poses", "PLUS_FAKE_REFERENCE_TO_TRACKER"]
