"""The ``freehand3d ulm`` commands: simulate -> localize -> evaluate -> render, and error exits."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from freehand3d.cli import app
from freehand3d.ulm.files import read_points_csv, write_points_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ulm")
    result = runner.invoke(app, ["ulm", "simulate", "-o", str(out), "--frames", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


def test_simulate_writes_rf_and_listpos(sim_dir):
    with np.load(sim_dir / "rf.npz") as rf:
        assert rf["rf"].ndim == 3 and rf["rf"].shape[0] == 2 and rf["rf"].shape[2] == 128
        assert float(rf["probe_center_frequency"]) == pytest.approx(15.625e6)  # measured: exact (max |diff| 0, AMD EPYC)
        assert "pulse" in rf.files
    with np.load(sim_dir / "gt.npz") as gt:
        assert gt["ListPos"].shape[1:] == (3, 2)


@pytest.mark.parametrize("method, channels", [("gulm", "16"), pytest.param("das-wa", "128", marks=pytest.mark.slow)])
def test_localize_evaluate_render(sim_dir, tmp_path, method, channels):
    points = tmp_path / "points.csv"
    result = runner.invoke(app, ["ulm", "localize", str(sim_dir / "rf.npz"), "-o", str(points), "--channels", channels, "--method", method])
    assert result.exit_code == 0, result.output
    pts, wavelength = read_points_csv(points)
    assert pts.shape[1] == 3 and len(pts) > 0 and wavelength == pytest.approx(0.09856)  # measured: exact (max |diff| 0, AMD EPYC)
    result = runner.invoke(app, ["ulm", "evaluate", str(points), str(sim_dir / "gt.npz"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    for key in ("error_lambda10", "error_std_lambda10", "jaccard", "tp", "fp", "fn", "ssim"):
        assert key in scores
    assert scores["tp"] > 0 and 0 < scores["jaccard"] <= 1
    png = tmp_path / "density.png"
    result = runner.invoke(app, ["ulm", "render", str(points), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0


def test_points_csv_roundtrip(tmp_path):
    pts = np.array([[0, 1.25, 7.5], [3, -2.0, 9.125]])
    write_points_csv(tmp_path / "p.csv", pts, 0.1)
    back, wavelength = read_points_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(back, pts)  # measured: exact (max |diff| 0, AMD EPYC)
    assert wavelength == pytest.approx(0.1)  # measured: exact (max |diff| 0, AMD EPYC)


def test_user_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,points,file\n")
    proc = subprocess.run([sys.executable, "-m", "freehand3d.cli", "ulm", "render", str(bad), "-o", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "bad.csv" in proc.stderr
    from freehand3d.errors import InputError

    result = runner.invoke(app, ["ulm", "localize", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "p.csv")])
    assert isinstance(result.exception, InputError) and "missing.npz" in str(result.exception)


def test_demo_step_reports_scores_and_images(tmp_path):
    from freehand3d.ulm.demo import run_ulm_demo

    numbers, pngs = run_ulm_demo(tmp_path, frames=1, backend="analytic")
    assert 0 < numbers["G-ULM 128 ch Jaccard"] <= 1 and 0 < numbers["DAS+WA 128 ch Jaccard"] <= 1
    assert len(pngs) == 3 and all(p.stat().st_size > 0 for p in pngs)


def test_simulate_with_snr_and_no_pulse_then_localize_warns(tmp_path):
    out = tmp_path / "sim"
    result = runner.invoke(app, ["ulm", "simulate", "-o", str(out), "--frames", "1", "--seed", "2", "--snr-db", "40", "--no-pulse"])
    assert result.exit_code == 0, result.output
    with np.load(out / "rf.npz") as rf:
        assert "pulse" not in rf.files and float(rf["snr_db"]) == 40.0
    from freehand3d.ulm.files import ULMWarning, localize_file

    with pytest.warns(ULMWarning, match="estimated from the data"):
        points = localize_file(out / "rf.npz", tmp_path / "p.csv", channels=32)
    assert len(points) > 0
