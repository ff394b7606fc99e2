"""Bad inputs of ``freehand3d info`` and ``freehand3d convert`` (and the pixel-type options of
calibrate / track): exit 2, one error line naming the file or option, no traceback, no partial
output. Each row is a mistake a user makes with real files: truncated downloads, headers edited by
hand, a wrong element type or size, pixel types or containers the target cannot hold."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from _bad_inputs import Case, check_case

PLUS = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
RF = PLUS / "UltrasonixLinearRfData.igs.mha"
SPINE = PLUS / "SpinePhantomFreehand.igs.mha"
DEVICE_SET = PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml"


def _mha(name: str, fields: str, data: bytes = b"", element="MET_SHORT", dims="4 3 2"):
    """A MetaImage sequence with ``fields`` between the standard lines (``{element}``/``{dims}``)."""
    def setup(tmp: Path) -> None:
        head = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nDimSize = {dims}\n"
                f"ElementType = {element}\n{fields}ElementDataFile = LOCAL\n").encode()
        (tmp / name).write_bytes(head + data)
    return setup


def _nrrd(name: str, header: str, data: bytes = b""):
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(("NRRD0004\n" + header + "\n").encode() + data)
    return setup


def _rf_edit(name: str, old: bytes, new: bytes, cut: int | None = None):
    def setup(tmp: Path) -> None:
        blob = RF.read_bytes().replace(old, new, 1)
        (tmp / name).write_bytes(blob if cut is None else blob[:cut])
    return setup


def _both(*setups):
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return setup


_SHORTS = np.arange(24, dtype="<i2").tobytes()  # 4 x 3 x 2 int16 frames

CASES = [
    # ---- info: truncated and inconsistent files
    Case("rf-truncated", ["info", "{tmp}/rf.igs.mha"], _rf_edit("rf.igs.mha", b"", b"", cut=600_000),
         mention=["rf.igs.mha", "truncated"]),
    Case("rf-header-only", ["info", "{tmp}/rf.igs.mha"], _rf_edit("rf.igs.mha", b"", b"", cut=500),
         mention=["rf.igs.mha"]),
    Case("rf-dimsize-too-big", ["info", "{tmp}/rf.igs.mha"], _rf_edit("rf.igs.mha", b"2080 256 1", b"2080 256 2"),
         mention=["rf.igs.mha", "header sizes"]),
    Case("rf-dimsize-too-small", ["info", "{tmp}/rf.igs.mha"], _rf_edit("rf.igs.mha", b"2080 256 1", b"2000 256 1"),
         mention=["rf.igs.mha", "header sizes are wrong"]),
    Case("rf-element-type-bigger", ["info", "{tmp}/rf.igs.mha"],
         _rf_edit("rf.igs.mha", b"MET_SHORT", b"MET_FLOAT"), mention=["rf.igs.mha", "4 bytes each"]),
    Case("rf-element-type-unknown", ["info", "{tmp}/rf.igs.mha"],
         _rf_edit("rf.igs.mha", b"MET_SHORT", b"MET_LONG_LONG"), mention=["rf.igs.mha", "MET_LONG_LONG"]),
    Case("element-type-typo", ["info", "{tmp}/a.mha"], _mha("a.mha", "", _SHORTS, element="MET_SHRT"),
         mention=["a.mha", "MET_SHRT"]),
    Case("element-type-nrrd-name-in-metaimage", ["info", "{tmp}/a.mha"], _mha("a.mha", "", _SHORTS, element="short"),
         mention=["a.mha", "short"]),
    Case("element-type-missing", ["info", "{tmp}/a.mha"], _mha("a.mha", "", _SHORTS, element=""),
         mention=["a.mha", "ElementType"]),
    Case("channels-mismatch", ["info", "{tmp}/a.mha"], _mha("a.mha", "ElementNumberOfChannels = 3\n", _SHORTS),
         mention=["a.mha", "3 components"]),
    Case("channels-zero", ["info", "{tmp}/a.mha"], _mha("a.mha", "ElementNumberOfChannels = 0\n", _SHORTS),
         mention=["a.mha", "ElementNumberOfChannels"]),
    Case("channels-not-a-number", ["info", "{tmp}/a.mha"], _mha("a.mha", "ElementNumberOfChannels = RGB\n", _SHORTS),
         mention=["a.mha", "ElementNumberOfChannels"]),
    Case("byte-order-word", ["info", "{tmp}/a.mha"], _mha("a.mha", "BinaryDataByteOrderMSB = maybe\n", _SHORTS),
         mention=["a.mha", "BinaryDataByteOrderMSB"]),
    Case("odd-byte-count", ["info", "{tmp}/a.mha"], _mha("a.mha", "", _SHORTS[:-1]),
         mention=["a.mha", "47 bytes"]),
    Case("compressed-wrong-type", ["info", "{tmp}/a.mha"],
         _mha("a.mha", "CompressedData = True\n", zlib.compress(_SHORTS), element="MET_DOUBLE"),
         mention=["a.mha", "compressed pixel data holds 48 bytes"]),
    Case("compressed-corrupt", ["info", "{tmp}/a.mha"],
         _mha("a.mha", "CompressedData = True\n", b"\x78\x9c" + bytes(range(200))), mention=["a.mha", "corrupt"]),
    Case("compressed-truncated", ["info", "{tmp}/a.mha"],
         _mha("a.mha", "CompressedData = True\n", zlib.compress(bytes(range(256)) * 400)[:300], dims="100 100 10",
              element="MET_UCHAR"), mention=["a.mha"]),
    Case("rf-orientation-typo", ["info", "{tmp}/rf.igs.mha"], _rf_edit("rf.igs.mha", b"= NM", b"= NX"),
         mention=["rf.igs.mha", "UltrasoundImageOrientation"]),
    # ---- info: NRRD
    Case("nrrd-unknown-type", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: half\ndimension: 3\nsizes: 4 3 2\nkinds: domain domain list\nendian: little\nencoding: raw\n",
               _SHORTS), mention=["a.nrrd", "half"]),
    Case("nrrd-metaimage-type-name", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: MET_SHORT\ndimension: 3\nsizes: 4 3 2\nkinds: domain domain list\nendian: little\n"
                         "encoding: raw\n", _SHORTS), mention=["a.nrrd", "MET_SHORT"]),
    Case("nrrd-16bit-without-endian", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: short\ndimension: 3\nsizes: 4 3 2\nkinds: domain domain list\nencoding: raw\n", _SHORTS),
         mention=["a.nrrd", "endian"]),
    Case("nrrd-bad-endian", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: short\ndimension: 3\nsizes: 4 3 2\nkinds: domain domain list\nendian: middle\n"
                         "encoding: raw\n", _SHORTS), mention=["a.nrrd", "endian"]),
    Case("nrrd-sizes-mismatch", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: short\ndimension: 3\nsizes: 4 3 3\nkinds: domain domain list\nendian: little\n"
                         "encoding: raw\n", _SHORTS), mention=["a.nrrd", "truncated"]),
    Case("nrrd-rgb-short-data", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: uint8\ndimension: 4\nsizes: 3 4 3 2\nkinds: RGB-color domain domain list\n"
                         "encoding: raw\n", bytes(48)), mention=["a.nrrd", "3 components"]),
    Case("nrrd-odd-first-axis-kind", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: uint8\ndimension: 3\nsizes: 4 3 2\nkinds: bogus domain list\nencoding: raw\n", bytes(24)),
         mention=["a.nrrd", "bogus"]),
    Case("nrrd-vector-line", ["info", "{tmp}/a.nrrd"],
         _nrrd("a.nrrd", "type: uint8\ndimension: 2\nsizes: 3 4\nkinds: vector domain\nencoding: raw\n", bytes(12)),
         mention=["a.nrrd", "not an image"]),
    # ---- convert
    Case("convert-truncated-source", ["convert", "{tmp}/rf.igs.mha", "{tmp}/out.igs.nrrd"],
         _rf_edit("rf.igs.mha", b"", b"", cut=700_000), mention=["rf.igs.mha"]),
    Case("convert-wrong-element-type", ["convert", "{tmp}/rf.igs.mha", "{tmp}/out.igs.mha"],
         _rf_edit("rf.igs.mha", b"MET_SHORT", b"MET_STRING"), mention=["rf.igs.mha", "MET_STRING"]),
    Case("convert-to-unknown-suffix", ["convert", str(RF), "{tmp}/out.png"], mention=["out.png"]),
    Case("convert-onto-itself", ["convert", "{tmp}/rf.igs.mha", "{tmp}/rf.igs.mha"],
         _rf_edit("rf.igs.mha", b"", b""), mention=["rf.igs.mha", "input"]),
    Case("convert-nhdr", ["convert", str(RF), "{tmp}/out.nhdr"], mention=["out.nhdr", "nhdr"]),
    Case("convert-unknown-h5-format", ["convert", str(RF), "{tmp}/out.h5", "--h5-format", "matlab"],
         mention=["matlab"]),
    # ---- the explicit 8-bit conversion of calibrate / track
    Case("calibrate-unknown-conversion", ["calibrate", str(RF), "-p", str(DEVICE_SET), "-o", "{tmp}/r.json",
                                          "--to-uint8", "percentile"], mention=["--to-uint8", "percentile"]),
    Case("calibrate-window-without-method", ["calibrate", str(RF), "-p", str(DEVICE_SET), "-o", "{tmp}/r.json",
                                             "--window", "0,100"], mention=["--window"]),
    Case("calibrate-window-method-without-window", ["calibrate", str(RF), "-p", str(DEVICE_SET), "-o",
                                                    "{tmp}/r.json", "--to-uint8", "window"], mention=["--window"]),
    Case("track-window-reversed", ["track", str(SPINE), "-c", "none.pt", "-o", "{tmp}/t.igs.mha",
                                   "--to-uint8", "window", "--window", "100,0"], mention=["--window"]),
    Case("track-window-not-numbers", ["track", str(SPINE), "-c", "none.pt", "-o", "{tmp}/t.igs.mha",
                                      "--to-uint8", "window", "--window", "low,high"], mention=["--window"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
