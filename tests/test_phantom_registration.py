"""Phantom landmark registration against PLUS's expected PhantomToReference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from freehand3d.calibration.landmarks import read_landmarks, register_landmarks, register_phantom_files
from freehand3d.io.plus_config import read_device_set
from freehand3d.simulate.stylus import plus_fake_landmark_poses

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus" / "phantom-registration"
RECORDING = DATA / "EightLandmarkPointsTrackedForPhantomRegistration.igs.mha"


def _orthonormal(m):
    u, _, vt = np.linalg.svd(np.asarray(m, float)[:3, :3])
    return u @ vt


def _diff(a, b):
    """(mm, deg) between two poses. The angle comes from the rotation vector of the orthonormalised
    rotations: arccos((trace - 1) / 2) is ill-conditioned near 0 and, on PLUS's 6-digit baselines,
    is off by up to ~0.03 deg."""
    r = Rotation.from_matrix(_orthonormal(a).T @ _orthonormal(b))
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3])), float(np.degrees(np.linalg.norm(r.as_rotvec())))


def test_landmark_detection_reproduces_plus_baseline(tmp_path):
    """detector="plus-2014" is the PLUS detector that wrote the baseline (8 Oct 2014)."""
    baseline = read_device_set(DATA / "PhantomRegistrationLandmarkDetection.results.xml").coordinate_definitions
    out = tmp_path / "reg.json"
    res = register_phantom_files(RECORDING, DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml", out,
                                 detector="plus-2014")
    mm, deg = _diff(res.phantom_to_reference, baseline["PhantomToReference"].matrix)
    # issue 17 asks for 0.1 mm / 0.1 deg; measured 0.00004 mm, < 0.00001 deg (the baseline's
    # 6 printed digits): the bound is 100x the print precision
    assert mm < 0.001 and deg < 0.001
    # PLUS's Error 0.198046 mm (mean landmark distance); measured 0.198047
    assert res.fre_mean_mm == pytest.approx(baseline["PhantomToReference"].error, abs=1e-5)
    data = json.loads(out.read_text())
    assert data["landmark_frames"] == [92, 188, 290, 380, 545, 653, 743, 851] and data["detector"] == "plus-2014"


def test_landmark_detection_current_plus_detector(tmp_path):
    """The current PLUS detector (vtkIGSIOLandmarkDetectionAlgo) is what PLUS's test runs today."""
    baseline = read_device_set(DATA / "PhantomRegistrationLandmarkDetection.results.xml").coordinate_definitions
    res = register_phantom_files(RECORDING, DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml",
                                 tmp_path / "reg.json")
    mm, deg = _diff(res.phantom_to_reference, baseline["PhantomToReference"].matrix)
    # PLUS's vtkPhantomRegistrationLandmarkDetectionTest allows 0.1 mm / 0.2 deg against the 2014
    # baseline; measured 0.0864 mm / 0.1282 deg: the windows it averages (samples 1..4 after each
    # restart) start 0-3 frames later than the 2014 detector's (docs/calibration.md)
    assert mm < 0.1 and deg < 0.2
    # PLUS's Error 0.198 mm (mean landmark distance); measured mean 0.1954
    assert res.fre_mean_mm == pytest.approx(baseline["PhantomToReference"].error, abs=0.02)
    assert res.details["landmark_frames"] == [95, 191, 290, 380, 548, 653, 743, 848]


@pytest.mark.parametrize("detector", ["plus", "plus-2014"])
def test_detectors_on_simulated_touches(detector):
    """Both detectors find every simulated touch and recover the registration."""
    from freehand3d.calibration.landmarks import detect_landmarks, min_landmark_spacing
    from freehand3d.simulate.stylus import landmark_touch_poses

    _, defined = read_landmarks(DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks_1.2.xml")
    tip = np.array([0.0, 0.0, -150.0])
    tip_to_stylus = np.eye(4)
    tip_to_stylus[:3, 3] = tip
    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix()
    truth[:3, 3] = [20.0, -40.0, 30.0]
    poses, labels = landmark_touch_poses(defined, truth, tip, noise_mm=0.05, seed=3)
    touched, frames = detect_landmarks(poses @ tip_to_stylus, 20.0, min_landmark_spacing(defined), max_landmarks=len(defined),
                                       detector=detector)
    assert len(touched) == len(defined)
    assert all(labels[f] == k for k, f in enumerate(frames))  # accepted while resting on the right one
    mm, deg = _diff(register_landmarks(defined, touched).phantom_to_reference, truth)
    # 4 samples of 0.05 mm noise per landmark. Measured seed 3: plus 0.016 mm / 0.018 deg, plus-2014
    # 0.016 / 0.014; seeds 0-5 at most 0.028 mm / 0.068 deg
    assert mm < 0.1 and deg < 0.1, (mm, deg)


def test_fake_tracker_landmarks_reproduce_plus_registration():
    cfg = DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks_1.2.xml"
    baseline = read_device_set(DATA / "PhantomRegistration.results.xml").coordinate_definitions
    _, defined = read_landmarks(cfg)
    tip = read_device_set(cfg).coordinate_definitions["StylusTipToStylus"].matrix
    stylus_to_tracker, ref_to_tracker, labels = plus_fake_landmark_poses(defined, tip)
    tips = (np.linalg.inv(ref_to_tracker) @ stylus_to_tracker @ tip)[:, :3, 3]
    res = register_landmarks(defined, tips)
    mm, deg = _diff(res.phantom_to_reference, baseline["PhantomToReference"].matrix)
    # PLUS's baseline is T(-75.0002, -50, -150) with ~2e-6 rad rotation; measured 0.0002 mm, 0.0002 deg
    assert mm < 0.01 and deg < 0.01
    assert res.fre_mm < 1e-9


def test_manual_landmark_frames(tmp_path):
    cfg = DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml"
    auto = register_phantom_files(RECORDING, cfg, tmp_path / "a.json")
    frames = [f - 5 for f in auto.details["landmark_frames"]]  # a moment inside each rest
    manual = register_phantom_files(RECORDING, cfg, tmp_path / "m.json", detect=False, landmark_frames=frames)
    mm, deg = _diff(manual.phantom_to_reference, auto.phantom_to_reference)
    assert mm < 0.3 and deg < 0.5  # measured 0.260 mm / 0.299 deg (AMD EPYC)


def test_cli_register_phantom_writes_device_set_calibrate_reads(tmp_path):
    from tests._bad_inputs import run_cli

    out, xml = tmp_path / "reg.json", tmp_path / "set.xml"
    res = run_cli(["register-phantom", RECORDING, "--config", DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml",
                   "--detect-landmarks", "-o", out, "--plus-config", xml])
    assert res.code == 0, res.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"phantom_to_reference", "fre_mm"}
    ds = read_device_set(xml)
    # measured: exact (max |diff| 0, AMD EPYC)
    np.testing.assert_allclose(ds.coordinate_definitions["PhantomToReference"].matrix, data["phantom_to_reference"],
                               atol=1e-9)
    # the phantom model calibrate reads carries the new registration
    assert ds.phantom is not None
    # measured: exact (max |diff| 0, AMD EPYC)
    np.testing.assert_allclose(ds.phantom.phantom_to_reference, data["phantom_to_reference"], atol=1e-9)
