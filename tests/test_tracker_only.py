"""Tracker-only PLUS sequences (DimSize = 0 0 N, MET_OTHER): poses and timestamps, no pixels."""

from pathlib import Path

import numpy as np
import pytest

from freehand3d.io.plus_sequence import read_plus_sequence, write_plus_sequence

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
TRACKER = DATA / "temporal" / "WaterTankBottomTranslationTrackerBuffer-trimmed.igs.mha"
STYLUS = DATA / "phantom-registration" / "EightLandmarkPointsTrackedForPhantomRegistration.igs.mha"

needs_data = pytest.mark.skipif(not TRACKER.exists(), reason="PLUS test data not available")


@needs_data
def test_reads_plus_tracker_buffer():
    sweep = read_plus_sequence(TRACKER)
    assert sweep.frames.shape == (801, 0, 0)
    assert sorted(sweep.transforms) == ["ProbeToTracker", "ReferenceToTracker", "StylusToTracker"]
    assert sweep.valid["ProbeToTracker"].all()
    # first frame's values straight from the header
    assert sweep.timestamps[0] == pytest.approx(7415.679586)  # measured: exact (max |diff| 0, AMD EPYC)
    assert sweep.transforms["ProbeToTracker"][0, 0, 3] == pytest.approx(194.556)  # measured: exact (max |diff| 0, AMD EPYC)
    assert np.all(np.diff(sweep.timestamps) > 0)
    stylus = read_plus_sequence(STYLUS)
    assert stylus.frames.shape == (1000, 0, 0) and "StylusToTracker" in stylus.transforms


@needs_data
@pytest.mark.parametrize("suffix", [".igs.mha", ".seq.nrrd"])
def test_tracker_only_round_trip(tmp_path, suffix):
    sweep = read_plus_sequence(TRACKER)
    out = tmp_path / ("t" + suffix)
    write_plus_sequence(sweep, out)
    back = read_plus_sequence(out)
    assert back.frames.shape == (801, 0, 0)
    for name, mats in sweep.transforms.items():
        np.testing.assert_allclose(back.transforms[name], mats, rtol=0, atol=0)  # measured: exact (max |diff| 0 over 6 calls)
    np.testing.assert_array_equal(back.timestamps, sweep.timestamps)
    if suffix == ".igs.mha":
        head = out.read_bytes()[:2000].decode("latin-1")
        assert "DimSize = 0 0 801" in head and "ElementType = MET_OTHER" in head


def test_tracker_only_without_fields_is_an_error(tmp_path):
    from freehand3d.errors import InputError

    path = tmp_path / "empty.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 0 0 5\nElementType = MET_OTHER\n"
                    "ElementDataFile = LOCAL\n")
    with pytest.raises(InputError, match="no per-frame fields"):
        read_plus_sequence(path)


@needs_data
def test_info_and_convert_tracker_only(tmp_path):
    from typer.testing import CliRunner

    from freehand3d.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["info", str(TRACKER)])
    assert res.exit_code == 0, res.output
    assert "ProbeToTracker" in res.output and "801" in res.output
    out = tmp_path / "c.seq.nrrd"
    res = runner.invoke(app, ["convert", str(TRACKER), str(out)])
    assert res.exit_code == 0, res.output
    assert read_plus_sequence(out).frames.shape == (801, 0, 0)


@needs_data
def test_replay_sends_poses_only(tmp_path):
    import socket
    import time

    from freehand3d.stream.igtl import ReplayServer

    sweep = read_plus_sequence(TRACKER).subset(np.arange(20))
    server = ReplayServer(sweep, port=0, fps=0).start(accept_timeout=300)  # a hang guard
    port = server._listener.getsockname()[1]
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        deadline = time.time() + 20
        while time.time() < deadline:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    server.close()
    # 3 transforms per frame, no (empty) IMAGE message
    assert data.count(b"TRANSFORM") == 3 * 20
    assert b"IMAGE\x00" not in data
