"""The fCal chain end to end on a simulated setup (issue 17 acceptance: ImageToProbe within
0.5 mm, lag within 10 ms of the truth)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "calibration_chain.py"


@pytest.mark.slow
def test_chain_example_recovers_the_truth(tmp_path):
    summary = runpy.run_path(str(EXAMPLE), run_name="example")["main"](["--out", str(tmp_path), "--fast"])
    # measured (seed 0, fast): tip 0.033 mm, registration 0.026 mm / 0.016 deg, lag 0.34 ms,
    # ImageToProbe 0.13 mm mean / 0.14 max over a 5x5 image grid, validation PRE3D 0.056 mm
    assert summary["stylus_tip_error_mm"] < 0.2
    assert summary["registration_error_mm"] < 0.5 and summary["registration_error_deg"] < 0.5
    assert summary["lag_error_ms"] < 10
    assert summary["image_to_probe_error_max_mm"] < 0.5
    assert Path(summary["device_set"]).exists() and Path(summary["tfm"]).exists()


def test_chain_example_documents_itself():
    doc = runpy.run_path(str(EXAMPLE), run_name="example")["__doc__"]
    assert "python examples/calibration_chain.py" in doc
    for command in ("pivot-calibrate", "register-phantom", "temporal-calibrate", "calibrate"):
        assert f"freehand3d {command}" in doc
