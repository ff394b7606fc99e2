"""Progress lines of the long commands (track, calibrate, segment) and ``--quiet``.

The lines go to stderr; in-process stderr is not a terminal, so rich prints the finished lines once
at the end (as for ``reconstruct``). With ``--quiet`` a successful run prints nothing on stderr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _bad_inputs import run_cli

ROOT = Path(__file__).resolve().parents[1]
PLUS = ROOT / "freehand3d" / "data" / "plus"
TINY = ROOT / "freehand3d" / "data" / "dualtrack-tiny.pt"
VLCUS = PLUS / "segmentation" / "SegmentationTest_VLCUS_RandomStepperMotionData2.igs.mha"
VLCUS_SET = PLUS / "segmentation" / "PlusDeviceSet_iCal_CalibrationOnly_VLCUS_FrameGrabber.xml"


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    from freehand3d.io import write_sweep
    from freehand3d.sweep import Sweep

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("track") / "s.igs.mha"
    frames = rng.integers(0, 255, (3, 480, 640), dtype=np.uint8)
    write_sweep(Sweep(frames=frames, spacing=(0.2, 0.2), timestamps=np.arange(3) * 0.05), path)
    return path


@pytest.mark.parametrize("quiet", [True, False])
def test_track_progress_and_quiet(small_sweep, tmp_path, quiet):
    res = run_cli(["track", small_sweep, "-c", TINY, "-o", tmp_path / "t.igs.mha", "--device", "cpu",
                   "--kernel", "direct", "--threads", "1", *(["--quiet"] if quiet else [])])
    assert res.code == 0, res.stderr
    assert "tracked 3 frames" in res.stdout
    if quiet:
        assert res.stderr == ""
    else:
        for phase in ("reading s.igs.mha", "loading the model", "local CNN (frames)", "3/3",
                      "global context and poses", "writing t.igs.mha"):
            assert phase in res.stderr, res.stderr


@pytest.fixture(scope="module")
def small_nwire(tmp_path_factory):
    from freehand3d.io.plus_sequence import read_plus_sequence, write_plus_sequence

    path = tmp_path_factory.mktemp("seg") / "small.igs.mha"
    write_plus_sequence(read_plus_sequence(VLCUS).subset(np.arange(0, 201, 40)), path)
    return path


@pytest.mark.parametrize("quiet", [True, False])
def test_segment_progress_and_quiet(small_nwire, tmp_path, quiet):
    res = run_cli(["segment", small_nwire, "--config", VLCUS_SET, "-o", tmp_path / "p.json",
                   *(["-q"] if quiet else [])])
    assert res.code == 0, res.stderr
    if quiet:
        assert res.stderr == ""
    else:
        assert "segmenting frames" in res.stderr and "6/6" in res.stderr and "writing" in res.stderr


@pytest.mark.parametrize("quiet", [True, False])
def test_calibrate_progress_and_quiet(tmp_path, quiet):
    from freehand3d.io import write_sweep
    from freehand3d.phantoms import load_phantom
    from freehand3d.simulate.nwire import simulate_nwire

    sweep, _ = simulate_nwire(load_phantom("fcal-1.2"), n_frames=14, noise="low", seed=2)
    sweep.image_to_probe = None
    write_sweep(sweep, tmp_path / "cal.igs.mha")
    res = run_cli(["calibrate", tmp_path / "cal.igs.mha", "--phantom", "fcal-1.2", "-o", tmp_path / "c.json",
                   *(["--quiet"] if quiet else [])])
    assert res.code == 0, res.stderr
    assert "calibration PRE3D" in res.stdout
    if quiet:
        assert res.stderr == ""
    else:
        assert "segmenting frames" in res.stderr and "14/14" in res.stderr and "calibrating (ransac-lm)" in res.stderr


def test_failed_run_prints_the_error_line_alone(tmp_path):
    """A failure after a phase started erases the phase lines: only the error line is on stderr."""
    bad = tmp_path / "s.igs.mha"
    bad.write_text("not a sequence\n")
    res = run_cli(["track", bad, "-c", TINY, "-o", tmp_path / "t.igs.mha", "--device", "cpu"])
    assert res.code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("freehand3d: error:"), res.stderr
