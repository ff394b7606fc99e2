"""A whole simulated fCal setup with known truth: stylus, phantom registration, lagged tracker and
N-wire recordings, for testing the calibration chain end to end (pivot -> register -> temporal ->
spatial -> validation).

>>> setup = simulate_setup(lag_s=0.12, seed=0)                        # doctest: +SKIP
>>> setup.truth["image_to_probe"], setup.truth["lag_s"]                # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d.calibration.solve import poses_at_times
from freehand3d.simulate.nwire import nwire_probe_poses, simulate_nwire
from freehand3d.simulate.stylus import landmark_touch_poses, pivot_poses
from freehand3d.sweep import Sweep

#: the fCal 1.2 phantom's landmarks (PLUS's PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks_1.2.xml)
FCAL12_LANDMARKS = np.array([
    [95.0, 5.0, 15.0], [95.0, 40.0, 15.0], [95.0, 40.0, 0.0], [95.0, 0.0, 0.0],
    [-25.0, 40.0, 15.0], [-25.0, 0.0, 10.0], [-25.0, 0.0, 0.0], [-25.0, 40.0, 0.0],
])


def lagged_nwire(phantom, lag_s: float, duration_s: float = 12.0, frame_interval_s: float = 0.08,
                 key_interval_s: float = 0.6, phantom_to_reference=None, image_to_probe=None,
                 noise: str | float = "low", seed: int = 0) -> tuple[Sweep, dict]:
    """An N-wire recording whose tracker is late or early by ``lag_s`` (PLUS's TrackerLagSec sign:
    the image stamped t shows the probe where the tracker's pose stamped t + lag puts it).

    The probe follows a continuous path through random key poses (one per ``key_interval_s``,
    SLERP between them); frame i is rendered at the true pose at t_i and its ProbeToTracker is the
    true pose at t_i - lag. Frames whose t_i - lag falls before the recording starts are marked
    invalid."""
    from freehand3d.simulate.nwire import PLUS_FCAL_IMAGE_TO_PROBE

    itp = PLUS_FCAL_IMAGE_TO_PROBE if image_to_probe is None else image_to_probe
    n_keys = int(np.ceil(duration_s / key_interval_s)) + 2
    keys = nwire_probe_poses(phantom, itp, n_keys, seed=seed)
    key_t = np.arange(n_keys) * key_interval_s
    t = np.arange(0.0, duration_s, frame_interval_s)
    true = poses_at_times(key_t, keys, t)
    sweep, truth = simulate_nwire(phantom, image_to_probe=itp, probe_poses=true, noise=noise,
                                  phantom_to_reference=phantom_to_reference,
                                  frame_interval_s=frame_interval_s, seed=seed)
    reported = poses_at_times(key_t, keys, np.clip(t - lag_s, 0.0, None))
    ref, ptr = truth["reference_to_tracker"], truth["phantom_to_reference"]
    probe_to_tracker = geometry.compose(ref, ptr, reported)
    valid = (t - lag_s) >= 0
    transforms = dict(sweep.transforms)
    transforms["ProbeToTracker"] = probe_to_tracker
    lagged = Sweep(frames=sweep.frames, spacing=sweep.spacing, timestamps=sweep.timestamps, transforms=transforms,
                   valid={"ProbeToTracker": valid, "ReferenceToTracker": np.ones(len(t), bool)},
                   image_to_probe=sweep.image_to_probe, metadata=dict(sweep.metadata), source="simulated")
    truth = dict(truth, lag_s=float(lag_s))
    return lagged, truth


def water_tank(lag_s: float, duration_s: float = 20.0, video_fps: float = 11.5, tracker_hz: float = 40.0,
               frame_size: tuple[int, int] = (616, 820), mm_per_px: float = 0.1, seed: int = 0):
    """A water-tank temporal-calibration pair like PLUS's: (video sweep of a bright tank bottom seen
    by a probe moved up and down, tracker-only sweep of the probe's poses whose timestamps are off by
    ``lag_s`` (PLUS's TrackerLagSec sign), truth dict). The bottom is tilted a few degrees and has
    speckle-like noise; the probe height follows a sum of two random sinusoids (5-15 mm)."""
    rng = np.random.default_rng(seed)
    h, w = frame_size
    amp = rng.uniform(5, 15, 2)
    per = rng.uniform(1.2, 3.5, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)

    def height(t):
        t = np.asarray(t, float)[..., None]
        return (amp * np.sin(2 * np.pi * t / per + phase)).sum(axis=-1)

    t_video = np.arange(0, duration_s, 1.0 / video_fps) + rng.uniform(0, 0.01, int(np.ceil(duration_s * video_fps)))[
        : len(np.arange(0, duration_s, 1.0 / video_fps))]
    tilt = np.tan(np.radians(rng.uniform(-8, 8)))
    cols = np.arange(w)
    rows = np.arange(h)[:, None]
    frames = np.empty((len(t_video), h, w), np.uint8)
    for i, t in enumerate(t_video):
        depth_px = 0.45 * h + height(t) / mm_per_px  # the probe moves down: the bottom comes up
        centre = depth_px + tilt * (cols - w / 2)
        band = 220.0 * np.exp(-0.5 * ((rows - centre[None, :]) / 4.0) ** 2)
        noise = rng.gamma(2.0, 8.0, (h, w))
        frames[i] = np.clip(band + noise, 0, 255).astype(np.uint8)
    video = Sweep(frames=frames, timestamps=t_video, source="simulated water tank video")
    t_tracker = np.arange(-1.0, duration_s + 1.0, 1.0 / tracker_hz)
    poses = np.tile(np.eye(4), (len(t_tracker), 1, 1))
    # the pose stamped s is where the probe was at s - lag; the probe moves along the tracker's -y
    poses[:, 1, 3] = -height(t_tracker - lag_s) + rng.normal(0, 0.05, len(t_tracker))
    poses[:, 0, 3] = 100.0 + rng.normal(0, 0.05, len(t_tracker))
    ref = np.tile(np.eye(4), (len(t_tracker), 1, 1))
    tracker = Sweep(frames=np.zeros((len(t_tracker), 0, 0), np.uint8), timestamps=t_tracker,
                    transforms={"ProbeToTracker": poses, "ReferenceToTracker": ref}, source="simulated tracker")
    return video, tracker, {"lag_s": float(lag_s), "tilt": float(tilt), "amplitudes_mm": amp.tolist(),
                            "periods_s": per.tolist()}


@dataclass
class SimulatedSetup:
    """Recordings of one simulated setup and their truth (``truth``: image_to_probe,
    phantom_to_reference, stylus_tip_to_stylus, lag_s)."""

    pivot: Sweep
    landmarks: Sweep
    calibration: Sweep
    validation: Sweep
    truth: dict = field(default_factory=dict)

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write the four recordings as PLUS sequence files; returns their paths by name."""
        from freehand3d.io.plus_sequence import write_plus_sequence

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("pivot", "landmarks", "calibration", "validation"):
            paths[name] = folder / f"{name}.igs.mha"
            write_plus_sequence(getattr(self, name), paths[name])
        return paths


def _stylus_sweep(stylus_to_reference: np.ndarray, reference_to_tracker: np.ndarray, rate_hz: float) -> Sweep:
    n = len(stylus_to_reference)
    ref = np.repeat(reference_to_tracker[None], n, axis=0)
    return Sweep(frames=np.zeros((n, 0, 0), np.uint8), timestamps=np.arange(n) / rate_hz,
                 transforms={"StylusToTracker": ref @ stylus_to_reference, "ReferenceToTracker": ref},
                 source="simulated")


def simulate_setup(lag_s: float = 0.12, seed: int = 0, phantom=None, tracker_noise_mm: float = 0.1,
                   duration_s: float = 12.0) -> SimulatedSetup:
    """A complete fCal 1.2 setup: a stylus pivot recording, a landmark-touch recording, and lagged
    calibration and validation N-wire recordings, all with one true PhantomToReference,
    StylusTipToStylus, ImageToProbe and tracker lag."""
    from scipy.spatial.transform import Rotation

    from freehand3d.phantoms import load_phantom

    rng = np.random.default_rng(seed)
    phantom = load_phantom("fcal-1.2") if phantom is None else phantom
    reference_to_tracker = geometry.rigid(Rotation.from_euler("xyz", rng.uniform(-30, 30, 3), degrees=True).as_matrix(),
                                          rng.uniform(-200, 200, 3) + np.array([0, 0, -800.0]))
    ptr = geometry.rigid(Rotation.from_euler("xyz", [rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-180, 180)],
                                             degrees=True).as_matrix(), rng.uniform(-100, 100, 3))
    tip = np.array([rng.uniform(-3, 3), rng.uniform(-3, 3), -rng.uniform(140, 180)])
    stylus_tip_to_stylus = np.eye(4)
    stylus_tip_to_stylus[:3, 3] = tip
    pivot, _ = pivot_poses(tip, rng.uniform(-50, 50, 3), n=300, noise_mm=tracker_noise_mm, noise_deg=0.05,
                           outlier_fraction=0.05, seed=seed + 1)
    touches, _ = landmark_touch_poses(FCAL12_LANDMARKS, ptr, tip, noise_mm=tracker_noise_mm / 2, seed=seed + 2)
    cal, truth = lagged_nwire(phantom, lag_s, duration_s=duration_s, phantom_to_reference=ptr, seed=seed + 3)
    val, _ = lagged_nwire(phantom, lag_s, duration_s=duration_s / 2, phantom_to_reference=ptr, seed=seed + 4)
    truth = {
        "image_to_probe": truth["image_to_probe"],
        "phantom_to_reference": ptr,
        "stylus_tip_to_stylus": stylus_tip_to_stylus,
        "lag_s": float(lag_s),
        "landmarks_phantom": FCAL12_LANDMARKS,
    }
    return SimulatedSetup(_stylus_sweep(pivot, reference_to_tracker, 20.0),
                          _stylus_sweep(touches, reference_to_tracker, 20.0), cal, val, truth)


__all__ = ["water_tank", "lagged_nwire", "simulate_setup", "SimulatedSetup", "FCAL12_LANDMARKS"]
