"""``freehand3d info`` / ``freehand3d convert`` on the bundled PLUS data, and the error path."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import freehand3d
from freehand3d.cli import app
from freehand3d.errors import InputError
from freehand3d.io import read_sweep
from freehand3d.io.summary import summarize_file

PLUS = Path(freehand3d.__file__).parent / "data" / "plus"
runner = CliRunner()

# frames and (valid, invalid) per transform, from the recordings' headers
RECORDINGS = {
    "fCal_Test_Calibration_3NWires.igs.mha": (188, {"ProbeToTracker": (188, 0), "ReferenceToTracker": (188, 0), "StylusToTracker": (188, 0)}),
    "fCal_Test_Validation_3NWires.igs.mha": (94, {"ProbeToTracker": (94, 0), "ReferenceToTracker": (94, 0), "StylusToTracker": (94, 0)}),
    "SpinePhantomFreehand.igs.mha": (21, {"ProbeToTracker": (21, 0), "ReferenceToTracker": (21, 0), "StylusToTracker": (21, 0)}),
    "NwirePhantomFreehand.igs.mha": (97, {"ProbeToTracker": (97, 0), "ReferenceToTracker": (97, 0), "StylusToTracker": (0, 97)}),
}


@functools.lru_cache(maxsize=None)  # several tests look at the same bundled file
def _info(path: Path) -> str:
    result = runner.invoke(app, ["info", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _row(name: str, valid: int, invalid: int, non_finite: int = 0) -> re.Pattern:
    return re.compile(rf"{name}\W+{valid}\W+{invalid}\W+{non_finite}\W")


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_info_on_every_bundled_recording(name):
    n, transforms = RECORDINGS[name]
    out = _info(PLUS / name)
    assert re.search(rf"frames\s+{n}[ ]*\n", out)
    assert "820 x 616 px" in out
    assert "MFA" in out and f"image status  OK {n}" in out
    for tname, (valid, invalid) in transforms.items():
        assert _row(tname, valid, invalid).search(out), out
    assert "MetaImage, zlib" in out


def test_info_time_span_and_rate_of_the_calibration_recording():
    # first and last Timestamp in the header: 425.398686 and 440.246214 -> 187 intervals
    out = _info(PLUS / "fCal_Test_Calibration_3NWires.igs.mha")
    assert "425.399 .. 440.246 s (14.848 s)" in out
    assert f"mean frame rate {187 / (440.246214 - 425.398686):.2f} frames/s" in out


def test_info_on_plus_volume_device_set_and_calibration_report():
    out = _info(PLUS / "vtkVolumeReconstructorTestLNMEANvolumeRef.mha")
    assert "80 x 93 x 98 voxels" in out and "0.5 x 0.5 x 0.5 mm" in out and "-57.0272, 168.545, 30.5384" in out
    out = _info(PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")
    assert "3 N-wires, 9 wires" in out and "PhantomToReference" in out
    out = _info(PLUS / "FreehandCalibration3NWires.results.xml")
    assert "validation 94, calibration 188" in out and "1.2468" in out  # PLUS's 1.24684 mm


def _sequence_with_nan_transform(path: Path) -> None:
    frames = np.zeros((3, 4, 5), np.uint8)
    eye = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "CompressedData = True",
             f"CompressedDataSize = {len(zlib.compress(frames.tobytes()))}", "DimSize = 5 4 3",
             "ElementType = MET_UCHAR", "UltrasoundImageOrientation = MF"]
    for i, (matrix, status) in enumerate([(eye, "OK"), ("nan " + eye[2:], "OK"), (eye, "INVALID")]):
        lines += [f"Seq_Frame{i:04d}_ProbeToTrackerTransform = {matrix}",
                  f"Seq_Frame{i:04d}_ProbeToTrackerTransformStatus = {status}",
                  f"Seq_Frame{i:04d}_Timestamp = {i * 0.1}", f"Seq_Frame{i:04d}_ImageStatus = OK"]
    lines.append("ElementDataFile = LOCAL")
    path.write_bytes(("\n".join(lines) + "\n").encode() + zlib.compress(frames.tobytes()))


def test_info_shows_a_nan_transform_as_invalid_and_non_finite(tmp_path):
    path = tmp_path / "nan.igs.mha"
    _sequence_with_nan_transform(path)
    out = _info(path)
    assert _row("ProbeToTracker", 1, 2, 1).search(out), out
    summary = summarize_file(path)
    assert summary["transforms"]["ProbeToTracker"] == {"valid": 1, "invalid": 2, "non_finite": 1}


@pytest.mark.parametrize("target, compressed_word", [("out.seq.nrrd", "NRRD, raw"), ("out.igs.mha", "MetaImage, raw")])
def test_convert_no_compress_keeps_everything(tmp_path, target, compressed_word):
    source = PLUS / "SpinePhantomFreehand.igs.mha"
    out = tmp_path / target
    result = runner.invoke(app, ["convert", str(source), str(out), "--no-compress"])
    assert result.exit_code == 0, result.output
    a, b = read_sweep(source), read_sweep(out)
    assert np.array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    for name in a.transforms:
        np.testing.assert_array_equal(a.transforms[name], b.transforms[name])
        np.testing.assert_array_equal(a.valid[name], b.valid[name])
    assert out.stat().st_size > a.frames.size  # really uncompressed
    assert compressed_word in _info(out)


def test_convert_refuses_to_overwrite_its_input(tmp_path):
    path = tmp_path / "s.igs.mha"
    _sequence_with_nan_transform(path)
    result = runner.invoke(app, ["convert", str(path), str(path)])
    assert isinstance(result.exception, InputError)


@pytest.mark.parametrize("damage", ["truncate", "sizes"])
def test_cli_runner_sees_the_freehand3d_error(tmp_path, damage):
    path = tmp_path / "broken.igs.mha"
    _sequence_with_nan_transform(path)
    blob = path.read_bytes()
    path.write_bytes(blob[:-10] if damage == "truncate" else blob.replace(b"DimSize = 5 4 3", b"DimSize = 5 4 30"))
    result = runner.invoke(app, ["info", str(path)])
    assert isinstance(result.exception, InputError)
    assert "broken.igs.mha" in str(result.exception)


def test_bad_file_gives_one_stderr_line_and_exit_code_2(tmp_path):
    """The real entry point (python -m freehand3d): cli.main maps the error to exit code 2."""
    path = tmp_path / "bad.igs.mha"
    _sequence_with_nan_transform(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    proc = subprocess.run([sys.executable, "-m", "freehand3d", "info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("freehand3d: error: ") and str(path) in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("h5_format, word", [("dualtrack", "DualTrack h5"), ("tusrec", "TUS-REC h5")])
def test_convert_to_h5_and_info_on_it(tmp_path, h5_format, word):
    """info works for every read_sweep format; the h5 writers need a calibration, so give the spine
    sweep PLUS's fCal result (ImageToProbe from FreehandCalibration3NWires.results.xml)."""
    sweep = read_sweep(PLUS / "SpinePhantomFreehand.igs.mha")
    sweep.image_to_probe = np.array([[0.00183186, 0.0729281, -0.0100928, 11.1551],
                                     [-0.0777188, 0.00280788, 0.00822424, 45.9713],
                                     [0.008793, 0.00953226, 0.0747944, -7.35909], [0, 0, 0, 1]])
    source = tmp_path / "spine.igs.mha"
    from freehand3d.io import write_sweep

    write_sweep(sweep, source)
    out = tmp_path / "spine.h5"
    result = runner.invoke(app, ["convert", str(source), str(out), "--h5-format", h5_format])
    assert result.exit_code == 0, result.output
    text = _info(out)
    assert word in text and re.search(r"frames\s+21[ ]*\n", text) and "820 x 616 px" in text
    assert _row("ProbeToTracker", 21, 0).search(text)
    summary = summarize_file(out)
    # measured: exact (max |diff| 0, AMD EPYC)
    np.testing.assert_allclose(summary["calibration_pixel_size"],
                               np.linalg.norm(sweep.image_to_probe[:3, :2], axis=0), rtol=1e-5)
