"""Phantom landmark registration against PLUS's expected PhantomToReference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from freehand3d.calibration.landmarks import read_landmarks, register_landmarks, register_phantom_files
from freehand3d.io.plus_config import read_device_set
from freehand3d.simulate.stylus import plus_fake_landmark_poses

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus" / "phantom-registration"
RECORDING = DATA / "EightLandmarkPointsTrackedForPhantomRegistration.igs.mha"


def _diff(a, b):
    r = a[:3, :3].T @ b[:3, :3]
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3])), float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_landmark_detection_matches_plus(tmp_path):
    baseline = read_device_set(DATA / "PhantomRegistrationLandmarkDetection.results.xml").coordinate_definitions
    out = tmp_path / "reg.json"
    res = register_phantom_files(RECORDING, DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml", out)
    mm, deg = _diff(res.phantom_to_reference, baseline["PhantomToReference"].matrix)
    # PLUS's vtkPhantomRegistrationLandmarkDetectionTest allows 0.1 mm / 0.2 deg.
    # Measured: 0.086 mm, 0.131 deg (PLUS's baseline dates from 2014 and an older detector; the
    # 2014 and current detectors replayed here give 0.14 mm / 0.21 deg and 0.086 / 0.131)
    assert mm < 0.1 and deg < 0.2
    # PLUS's Error 0.198 mm (mean landmark distance); measured mean 0.195, RMS 0.213
    assert res.fre_mean_mm == pytest.approx(baseline["PhantomToReference"].error, abs=0.02)
    assert len(json.loads(out.read_text())["landmark_frames"]) == 8


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
    assert mm < 0.3 and deg < 0.5


def test_cli_register_phantom_writes_device_set_calibrate_reads(tmp_path):
    from tests._bad_inputs import run_cli

    out, xml = tmp_path / "reg.json", tmp_path / "set.xml"
    res = run_cli(["register-phantom", RECORDING, "--config", DATA / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml",
                   "--detect-landmarks", "-o", out, "--plus-config", xml])
    assert res.code == 0, res.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"phantom_to_reference", "fre_mm"}
    ds = read_device_set(xml)
    np.testing.assert_allclose(ds.coordinate_definitions["PhantomToReference"].matrix, data["phantom_to_reference"],
                               atol=1e-9)
    # the phantom model calibrate reads carries the new registration
    assert ds.phantom is not None
    np.testing.assert_allclose(ds.phantom.phantom_to_reference, data["phantom_to_reference"], atol=1e-9)
