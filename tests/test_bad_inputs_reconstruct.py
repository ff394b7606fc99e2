"""Bad inputs of ``freehand3d reconstruct``: exit 2, one error line naming the file or option, no
traceback, no partial output — and checked before the sweep is read where possible."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from _bad_inputs import Case, check_case

PLUS = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
SPINE = str(PLUS / "SpinePhantomFreehand.igs.mha")
NN_LATE = str(PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml")
OK = ["reconstruct", SPINE, "--config", NN_LATE]


def _write(name: str, content: str | bytes):
    def setup(tmp: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (tmp / name).write_bytes(data)
    return setup


def _calibration(value) -> Callable:
    return _write("cal.json", json.dumps({"image_to_probe": value}))


def _truncated_spine(tmp: Path) -> None:
    data = Path(SPINE).read_bytes()
    (tmp / "cut.igs.mha").write_bytes(data[: len(data) // 2])


def _config_without_volrec(tmp: Path) -> None:
    text = Path(NN_LATE).read_text()
    start = text.index("<VolumeReconstruction")
    close = "</VolumeReconstruction>" if "</VolumeReconstruction>" in text else "/>"
    end = text.index(close, start) + len(close)
    (tmp / "novr.xml").write_text(text[:start] + text[end:])


def _config_with(tmp: Path, old: str, new: str, name: str = "cfg.xml") -> None:
    text = Path(NN_LATE).read_text()
    assert old in text, old
    (tmp / name).write_text(text.replace(old, new))


def _folder_in_the_way(tmp: Path) -> None:
    (tmp / "vol.nrrd").mkdir()


def _file_as_parent(tmp: Path) -> None:
    (tmp / "afile").write_text("x")


CASES = [
    # the sweep
    Case("missing-sweep", ["reconstruct", "{tmp}/nope.igs.mha", "-o", "{tmp}/v.nrrd"], mention=["nope.igs.mha"]),
    Case("sweep-is-text", ["reconstruct", "{tmp}/x.igs.mha", "-o", "{tmp}/v.nrrd"], setup=_write("x.igs.mha", "hello"), mention=["x.igs.mha"]),
    Case("sweep-empty", ["reconstruct", "{tmp}/e.igs.mha", "-o", "{tmp}/v.nrrd"], setup=_write("e.igs.mha", b""), mention=["e.igs.mha"]),
    Case("sweep-truncated", ["reconstruct", "{tmp}/cut.igs.mha", "-o", "{tmp}/v.nrrd", "--config", NN_LATE], setup=_truncated_spine, mention=["cut.igs.mha"]),
    Case("sweep-unknown-extension", ["reconstruct", "{tmp}/s.txt", "-o", "{tmp}/v.nrrd"], setup=_write("s.txt", "x"), mention=["s.txt"]),
    Case("sweep-is-folder", ["reconstruct", "{tmp}", "-o", "{tmp}/v.nrrd"]),
    Case("sweep-without-calibration", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd"], mention=["ImageToProbe"]),
    Case("unknown-pose-name", [*OK, "-o", "{tmp}/v.nrrd", "--image-to-reference", "ImageToNowhere"], mention=["Nowhere"]),
    Case("bad-pose-name", [*OK, "-o", "{tmp}/v.nrrd", "--image-to-reference", "not a transform"]),
    # the output
    Case("output-unknown-format", [*OK, "-o", "{tmp}/v.png"], mention=["v.png", ".nrrd"]),
    Case("output-no-extension", [*OK, "-o", "{tmp}/volume"], mention=["volume"]),
    Case("output-is-folder", [*OK, "-o", "{tmp}/vol.nrrd"], setup=_folder_in_the_way, mention=["vol.nrrd", "folder"]),
    Case("output-parent-is-file", [*OK, "-o", "{tmp}/afile/v.nrrd"], setup=_file_as_parent, mention=["afile"]),
    Case("preview-not-png", [*OK, "-o", "{tmp}/v.nrrd", "--preview", "{tmp}/p.jpg"], mention=["p.jpg"]),
    Case("preview-is-folder", [*OK, "-o", "{tmp}/v.nrrd", "--preview", "{tmp}"], mention=["preview"]),
    # numbers
    Case("spacing-zero", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "0"], mention=["--spacing"]),
    Case("spacing-negative", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "-1"], mention=["--spacing"]),
    Case("spacing-nan", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "nan"], mention=["--spacing"]),
    Case("spacing-inf", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "inf"], mention=["--spacing"]),
    Case("spacing-text", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "fine"]),
    Case("spacing-too-fine-for-memory", [*OK, "-o", "{tmp}/v.nrrd", "--spacing", "0.01"], mention=["GiB", "spacing of at least"]),
    Case("max-memory-too-small", [*OK, "-o", "{tmp}/v.nrrd", "--max-memory", "0.0001"], mention=["GiB", "--max-memory"]),
    Case("max-memory-zero", [*OK, "-o", "{tmp}/v.nrrd", "--max-memory", "0"], mention=["--max-memory"]),
    Case("max-memory-nan", [*OK, "-o", "{tmp}/v.nrrd", "--max-memory", "nan"], mention=["--max-memory"]),
    # options
    Case("unknown-method", [*OK, "-o", "{tmp}/v.nrrd", "--method", "cubic"]),
    Case("unknown-compounding", [*OK, "-o", "{tmp}/v.nrrd", "--compounding", "median"]),
    Case("fill-holes-unknown-kernel", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "blur:3"], mention=["fill-holes"]),
    Case("fill-holes-missing-stdev", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "gaussian:3"], mention=["fill-holes"]),
    Case("fill-holes-negative-gap", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "gap:-1"], mention=["fill-holes"]),
    Case("fill-holes-nan-gap", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "gap:nan"], mention=["fill-holes"]),
    Case("fill-holes-negative-size", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "nn:-3"], mention=["fill-holes"]),
    Case("fill-holes-ratio-above-one", [*OK, "-o", "{tmp}/v.nrrd", "--fill-holes", "nn:3:2"], mention=["fill-holes"]),
    Case("pose-and-calibration", [*OK, "-o", "{tmp}/v.nrrd", "--image-to-reference", "ImageToReference",
                                  "--calibration", "{tmp}/cal.json"], setup=_calibration([[1, 0, 0, 0]] * 4), mention=["--calibration"]),
    Case("device-unknown", [*OK, "-o", "{tmp}/v.nrrd", "--device", "tpu"]),
    # the calibration JSON
    Case("calibration-missing", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--calibration", "{tmp}/none.json"], mention=["none.json"]),
    Case("calibration-not-json", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--calibration", "{tmp}/cal.json"],
         setup=_write("cal.json", "{image_to_probe:"), mention=["cal.json"]),
    Case("calibration-not-utf8", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--calibration", "{tmp}/cal.json"],
         setup=_write("cal.json", b"\xff\xfe{\x00"), mention=["cal.json"]),
    Case("calibration-3x3", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--calibration", "{tmp}/cal.json"],
         setup=_calibration([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), mention=["4x4"]),
    Case("calibration-nan", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--calibration", "{tmp}/cal.json"],
         setup=_calibration([[float("nan")] * 4] * 4), mention=["cal.json"]),
    # the device set
    Case("config-missing", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--config", "{tmp}/none.xml"], mention=["none.xml"]),
    Case("config-not-xml", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--config", "{tmp}/c.xml"],
         setup=_write("c.xml", "<PlusConfiguration><unclosed>"), mention=["c.xml"]),
    Case("config-without-volume-reconstruction", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--config", "{tmp}/novr.xml"],
         setup=_config_without_volrec, mention=["novr.xml"]),
    Case("config-negative-spacing", ["reconstruct", SPINE, "-o", "{tmp}/v.nrrd", "--config", "{tmp}/cfg.xml"],
         setup=lambda t: _config_with(t, 'OutputSpacing="0.5 0.5 0.5"', 'OutputSpacing="-0.5 0.5 0.5"'), mention=["cfg.xml"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
