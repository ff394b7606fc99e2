"""`freehand3d demo`: the report lists the numbers and links the PNGs it wrote."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from freehand3d.cli import app


def _check_report(out, expect_sections):
    report = (out / "report.md").read_text()
    for title in expect_sections:
        assert title in report
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    return report


def test_demo_reconstruction_step_matches_plus_reference(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--skip", "calibration",
                                      "--skip", "tracking", "--skip", "ulm"])
    assert result.exit_code == 0, result.output
    report = _check_report(tmp_path, ["b. Reconstruction"])
    assert "| voxels_equal_pct | 100.000 |" in report
    assert (tmp_path / "reconstruction" / "spine_nn_late.nrrd").is_file()


@pytest.mark.slow
def test_full_demo(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = _check_report(tmp_path, ["a. Calibration", "b. Reconstruction", "c. Sensorless tracking", "d. Geometric ULM"])
    gpe = float(re.search(r"\| GPE_mm \| ([0-9.]+) \|", report).group(1))
    gpe_zero = float(re.search(r"\| GPE_zero_motion_mm \| ([0-9.]+) \|", report).group(1))
    assert gpe < gpe_zero
    assert "| frames_segmented | 188/188 |" in report
