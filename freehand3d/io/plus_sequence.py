"""PLUS sequence files: tracked 2D ultrasound frames in MetaImage (.mha/.mhd) or NRRD (.nrrd).

A PLUS sequence file is an ordinary 3D image (frames stacked along the third axis) whose header
carries, for every frame, extra ``Seq_FrameNNNN_<Field>`` entries: the tracker transforms
(``ProbeToTrackerTransform``), their status (``ProbeToTrackerTransformStatus`` = ``OK``/``INVALID``),
the ``Timestamp``, the ``ImageStatus`` and any other field the recording device added.

This module parses and writes those files itself (header text + zlib/gzip pixel data) rather than
through SimpleITK, because SimpleITK sorts the header fields alphabetically, adds its own ``ITK_*``
fields, cannot tell a frame axis from a spatial one in NRRD (``kinds: list``) and turns a damaged
file into a generic RuntimeError. docs/formats.md lists the measurements behind this choice.
Files written here read back with plain SimpleITK.

Mapping to :class:`~freehand3d.sweep.Sweep`
--------------------------------------------
- ``<Name>Transform`` -> ``sweep.transforms[Name]`` (N, 4, 4) (no ``Transform`` suffix).
  A frame without the field gets a NaN matrix and ``valid`` False; the writer omits a transform
  field whose matrix is all NaN, so "missing" survives a round trip.
- ``<Name>TransformStatus`` -> ``sweep.valid[Name]`` (``OK`` -> True, anything else -> False; a
  missing status means OK). A non-finite matrix is always invalid (``Sweep`` enforces it). Status
  words other than ``OK``/``INVALID`` (older PLUS versions wrote e.g. ``MISSING``) are kept in
  ``sweep.frame_fields["<Name>TransformStatus"]`` so the writer reproduces them.
- ``Timestamp`` -> ``sweep.timestamps`` (NaN where a frame has none; NaN timestamps are omitted on
  write).
- ``ImageStatus`` and every other per-frame field -> ``sweep.frame_fields[field]``: N raw strings,
  ``""`` where a frame lacks the field (empty values are omitted on write).
- Every other header field -> ``sweep.metadata`` (file order), except the fields that describe the
  pixel data layout (sizes, element type, compression, data file), which the writer regenerates.
  NRRD's ``ultrasound image orientation`` / ``ultrasound image type`` are stored under the MetaImage
  names ``UltrasoundImageOrientation`` / ``UltrasoundImageType`` so a sweep converts between the
  two containers.
- ``UltrasoundImageOrientation`` (``MF``, ``UF``, ``MN``, ``UN``, optional third letter): frames are
  converted to MF on read (U: columns flipped, N: rows flipped, as PLUS does) and converted back on
  write, so the bytes on disk round-trip exactly. The third letter describes the slice order of 3D
  frames; sweeps hold 2D frames, so it is only carried along. Missing orientation means MF.
- ``ElementSpacing`` (MetaImage) or ``space directions``/``spacings`` (NRRD) -> ``sweep.spacing`` only
  when the in-plane values are positive, finite and not both exactly 1: PLUS writes ``1 1 1`` as a
  placeholder and keeps the real mm-per-pixel scale inside the ImageToProbe calibration.
- A header field ``ImageToProbeTransform`` (16 numbers; freehand3d's convention, PLUS itself keeps the
  calibration in the device-set XML) -> ``sweep.image_to_probe``; written back when set.

Tracker-only buffers (PLUS's stylus and tracker recordings: ``DimSize = 0 0 N``, ``ElementType =
MET_OTHER``, no pixel data) read as N frames of shape (0, 0) with their poses and timestamps, and
are written back the same way.

Pixel types
-----------
Every element type PLUS writes reads and writes unchanged (:func:`numpy_dtype` /
:func:`met_element_type` / :func:`nrrd_type` give the mapping): ``MET_UCHAR`` uint8, ``MET_CHAR``
int8, ``MET_USHORT`` uint16, ``MET_SHORT`` int16, ``MET_UINT`` uint32, ``MET_INT`` int32,
``MET_FLOAT`` float32, ``MET_DOUBLE`` float64 (NRRD: ``uint8`` ... ``double`` and their synonyms),
big- or little-endian on read, little-endian on write. Multi-component pixels
(``ElementNumberOfChannels = C`` in MetaImage, a first NRRD axis of kind ``vector`` / ``RGB-color``
/ ``RGBA-color`` / ...) become (N, H, W, C) frames. Round trips are bit-exact.

RF data (``UltrasoundImageOrientation`` ``FM``, ``NM``, ``FU`` or ``NU``: columns along the scan
line, rows across scan lines) is flipped to ``FM``, PLUS's own RF orientation, rather than to the
B-mode ``MF`` (PLUS does not convert between the two families either); written back it gets its
original orientation and bytes.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

try:  # zlib-ng inflates ~4-5x faster than CPython's zlib (docs/formats.md); same streams, optional
    from zlib_ng import zlib_ng as _inflate_lib
except ImportError:  # pragma: no cover - depends on the environment
    _inflate_lib = zlib
_ZLIB_ERRORS = (zlib.error, _inflate_lib.error)

# --------------------------------------------------------------------------- constants

_FRAME_KEY = re.compile(r"^Seq_Frame(\d+)_(.+)$")
_TRANSFORM_NAME = re.compile(r"^([A-Za-z0-9]+?)To([A-Z][A-Za-z0-9]*)$")

#: MetaImage header fields that describe the pixel data layout; regenerated on write, never kept in
#: ``Sweep.metadata``.
_META_LAYOUT = {
    "objecttype", "ndims", "dimsize", "elementtype", "elementnumberofchannels", "binarydata",
    "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata", "compresseddatasize",
    "elementdatafile", "headersize", "kinds",
}
#: NRRD fields that describe the pixel data layout (regenerated on write).
_NRRD_LAYOUT = {
    "type", "dimension", "sizes", "kinds", "endian", "encoding", "data file", "datafile",
    "line skip", "lineskip", "byte skip", "byteskip", "space dimension", "space directions",
    "space origin", "space", "spacings", "block size", "blocksize",
}
#: Standard NRRD field names (written as ``field: value``; anything else is ``key:=value``).
_NRRD_FIELDS = _NRRD_LAYOUT | {
    "content", "min", "max", "oldmin", "old min", "oldmax", "old max", "space units",
    "measurement frame", "thicknesses", "axis mins", "axismins", "axis maxs", "axismaxs",
    "centers", "centerings", "labels", "units", "number", "sample units", "sampleunits",
}
#: Geometry fields that only make sense in one container; dropped when writing the other one.
_META_ONLY = {"offset", "origin", "position", "transformmatrix", "rotation", "orientation",
              "centerofrotation", "anatomicalorientation", "elementspacing", "elementsize"}

#: MetaImage element type <-> numpy pixel type (the types PLUS writes; MetaIO's MET_LONG /
#: MET_ULONG are 4 bytes, read as int32 / uint32).
_MET_TO_DTYPE = {
    "MET_UCHAR": np.dtype(np.uint8), "MET_CHAR": np.dtype(np.int8),
    "MET_USHORT": np.dtype(np.uint16), "MET_SHORT": np.dtype(np.int16),
    "MET_UINT": np.dtype(np.uint32), "MET_INT": np.dtype(np.int32),
    "MET_ULONG": np.dtype(np.uint32), "MET_LONG": np.dtype(np.int32),
    "MET_FLOAT": np.dtype(np.float32), "MET_DOUBLE": np.dtype(np.float64),
}
_DTYPE_TO_MET = {
    np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.int8): "MET_CHAR",
    np.dtype(np.uint16): "MET_USHORT", np.dtype(np.int16): "MET_SHORT",
    np.dtype(np.uint32): "MET_UINT", np.dtype(np.int32): "MET_INT",
    np.dtype(np.float32): "MET_FLOAT", np.dtype(np.float64): "MET_DOUBLE",
}
#: NRRD type names (every synonym of the NRRD0004 spec) -> numpy pixel type.
_NRRD_TO_DTYPE = {
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), np.dtype(np.uint8)),
    **dict.fromkeys(("signed char", "int8", "int8_t"), np.dtype(np.int8)),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), np.dtype(np.uint16)),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), np.dtype(np.int16)),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), np.dtype(np.uint32)),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), np.dtype(np.int32)),
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
}
_DTYPE_TO_NRRD = {
    np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8", np.dtype(np.uint16): "uint16",
    np.dtype(np.int16): "int16", np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32",
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
}
#: NRRD axis kinds that mean "components of one pixel" (a first axis of such a kind).
_NRRD_COMPONENT_KINDS = {
    "vector", "covariant-vector", "normal", "stub", "scalar", "complex", "2-vector", "3-color",
    "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color", "3-vector", "3-gradient",
    "3-normal", "4-vector", "quaternion", "2d-symmetric-matrix", "2d-masked-symmetric-matrix",
    "2d-matrix", "2d-masked-matrix", "3d-symmetric-matrix", "3d-masked-symmetric-matrix",
    "3d-matrix", "3d-masked-matrix",
}
_NRRD_TO_META_NAMES = {
    "ultrasound image orientation": "UltrasoundImageOrientation",
    "ultrasound image type": "UltrasoundImageType",
}
_META_TO_NRRD_NAMES = {v: k for k, v in _NRRD_TO_META_NAMES.items()}

#: zlib cannot expand data by more than about 1032:1; a header claiming more is lying.
_MAX_DEFLATE_RATIO = 1100


# --------------------------------------------------------------------------- pixel types


def numpy_dtype(element_type: str) -> np.dtype:
    """numpy pixel type of a MetaImage ``ElementType`` (``"MET_SHORT"`` -> int16) or NRRD ``type``
    (``"short"``, ``"int16"``, ``"unsigned char"``, ... -> the same). Native byte order.

    Raises
    ------
    ValueError
        An element type sweeps cannot hold (e.g. ``MET_LONG_LONG``, ``MET_STRING``), or unknown.
    """
    text = str(element_type).strip()
    if text.upper() in _MET_TO_DTYPE:
        return _MET_TO_DTYPE[text.upper()]
    low = " ".join(text.lower().split())
    if low in _NRRD_TO_DTYPE:
        return _NRRD_TO_DTYPE[low]
    raise ValueError(
        f"element type {text or '(missing)'!r} is not supported; sweeps hold "
        + ", ".join(f"{m} ({_DTYPE_TO_NRRD[d]})" for d, m in _DTYPE_TO_MET.items())
    )


def met_element_type(dtype) -> str:
    """MetaImage ``ElementType`` for a numpy pixel type (int16 -> ``"MET_SHORT"``); ValueError for a
    type sweeps cannot hold."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _DTYPE_TO_MET:
        raise ValueError(f"pixel type {dt} has no PLUS element type; use one of {', '.join(d.name for d in _DTYPE_TO_MET)}")
    return _DTYPE_TO_MET[dt]


def nrrd_type(dtype) -> str:
    """NRRD ``type`` for a numpy pixel type (int16 -> ``"int16"``, float32 -> ``"float"``)."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _DTYPE_TO_NRRD:
        raise ValueError(f"pixel type {dt} has no NRRD type; use one of {', '.join(d.name for d in _DTYPE_TO_NRRD)}")
    return _DTYPE_TO_NRRD[dt]


# --------------------------------------------------------------------------- header parsing


@dataclass
class SequenceHeader:
    """The parsed header of a PLUS sequence file (no pixel data).

    Attributes
    ----------
    path : the file.
    container : ``"metaimage"`` or ``"nrrd"``.
    fields : header fields that are not per-frame, in file order (original names and raw values).
    frame_fields : per-frame field name -> {frame index: raw value}, names in order of first appearance.
    data_offset : byte offset of the pixel data in ``data_path``.
    data_path : file holding the pixel data (``path`` itself for ``LOCAL`` / attached NRRD).
    """

    path: Path
    container: str
    fields: dict[str, str] = field(default_factory=dict)
    frame_fields: dict[str, dict[int, str]] = field(default_factory=dict)
    data_offset: int = 0
    data_path: Path | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """Field value by case-insensitive name."""
        low = name.lower()
        for key, value in self.fields.items():
            if key.lower() == low:
                return value
        return default


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # PLUS writes whatever bytes the device gave; latin-1 never fails and round-trips bytes
        return raw.decode("latin-1")


def _add_frame_field(header: SequenceHeader, key: str, value: str) -> bool:
    m = _FRAME_KEY.match(key)
    if not m:
        return False
    index = int(m.group(1))
    header.frame_fields.setdefault(m.group(2), {})[index] = value
    return True


def _parse_metaimage_header(path: Path, blob: bytes) -> SequenceHeader:
    header = SequenceHeader(path=path, container="metaimage")
    pos, line_no, n = 0, 0, len(blob)
    while True:
        if pos >= n:
            raise InputError(
                "no ElementDataFile line found: not a MetaImage file, or its header is truncated", path
            )
        end = blob.find(b"\n", pos)
        if end < 0:
            end = n
        raw = blob[pos:end]
        pos = end + 1
        line_no += 1
        line = _decode_line(raw).strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InputError(f"header line {line_no} is not 'Key = Value': {line[:60]!r}", path)
        if line_no == 1 and key != "ObjectType" and key != "NDims":
            raise InputError(f"not a MetaImage file (first header field is {key!r})", path)
        if _add_frame_field(header, key, value):
            continue
        header.fields[key] = value
        if key == "ElementDataFile":
            break
    header.data_offset = min(pos, n)
    header.data_path = path
    target = header.fields["ElementDataFile"]
    if not target:
        raise InputError("ElementDataFile is empty (truncated header?)", path)
    if target.upper() != "LOCAL":
        if "\x00" in target:
            raise InputError("ElementDataFile contains a NUL character", path)
        if target.upper().startswith("LIST") or "%" in target or " " in target:
            raise InputError(f"ElementDataFile = {target!r}: multi-file pixel data is not supported", path)
        header.data_path = path.parent / target
        header.data_offset = 0
    return header


def _parse_nrrd_header(path: Path, blob: bytes) -> SequenceHeader:
    header = SequenceHeader(path=path, container="nrrd")
    first_end = blob.find(b"\n")
    if not blob.startswith(b"NRRD000") or first_end < 0:
        raise InputError("not a NRRD file (missing the NRRD000x magic line)", path)
    pos, line_no, n = first_end + 1, 1, len(blob)
    while True:
        if pos >= n:
            raise InputError("NRRD header has no terminating blank line: the file is truncated", path)
        end = blob.find(b"\n", pos)
        if end < 0:
            end = n
        raw = blob[pos:end].rstrip(b"\r")
        pos = end + 1
        line_no += 1
        if not raw:
            break  # the blank line ends the header; attached data follows
        line = _decode_line(raw)
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, _, value = line.partition(":=")
        else:
            key, sep, value = line.partition(": ")
            if not sep:
                raise InputError(f"header line {line_no} is neither 'field: value' nor 'key:=value'", path)
        key, value = key.strip(), value.strip()
        if not key:
            raise InputError(f"header line {line_no} has an empty field name", path)
        if _add_frame_field(header, key, value):
            continue
        header.fields[key] = value
    header.data_offset = min(pos, n)
    header.data_path = path
    target = header.get("data file") or header.get("datafile")
    if target is not None:
        if not target:
            raise InputError("data file: is empty (truncated header?)", path)
        if "\x00" in target:
            raise InputError("data file contains a NUL character", path)
        if target.upper().startswith("LIST") or "%" in target or " " in target:
            raise InputError(f"data file: {target!r}: multi-file pixel data is not supported", path)
        header.data_path = path.parent / target
        header.data_offset = 0
    return header


def read_plus_header(path: str | os.PathLike) -> SequenceHeader:
    """Parse only the header of a MetaImage or NRRD sequence file (cheap; pixel data not read).

    Raises
    ------
    InputError
        The file is missing, unreadable or its header is malformed.
    """
    path = Path(path)
    return _parse_header(path, _read_header_bytes(path))


_METAIMAGE_HEADER_END = re.compile(rb"(?:^|\n)[ \t]*ElementDataFile[ \t]*=[^\n]*\n")


def _read_header_bytes(path: Path) -> bytes:
    """The file's first bytes, up to and including the end of its header (or the whole file)."""
    try:
        with open(path, "rb") as handle:
            blob, chunk = b"", 1 << 16
            while True:
                more = handle.read(chunk)
                blob += more
                if not more:
                    return blob
                if blob.startswith(b"NRRD"):
                    if b"\n\n" in blob or b"\n\r\n" in blob:
                        return blob
                elif _METAIMAGE_HEADER_END.search(blob):
                    return blob
                chunk *= 2  # doubling keeps the repeated searches linear overall
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a sequence file", path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None


def _read_file(path: Path) -> bytearray:
    # a bytearray, so an uncompressed MF file becomes writable frames without another 95 MB copy
    try:
        with open(path, "rb") as handle:
            buffer = bytearray(os.fstat(handle.fileno()).st_size)
            got = handle.readinto(buffer)
        del buffer[got:]
        return buffer
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a sequence file", path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None


def _parse_header(path: Path, blob: bytes) -> SequenceHeader:
    if blob.startswith(b"NRRD"):
        return _parse_nrrd_header(path, blob)
    return _parse_metaimage_header(path, blob)


# --------------------------------------------------------------------------- layout


@dataclass
class _Layout:
    width: int
    height: int
    n_frames: int
    compressed: bool
    compressed_size: int | None  # MetaImage CompressedDataSize, when given
    gzip: bool  # NRRD gzip (vs MetaImage zlib)
    header_skip: int  # MetaImage HeaderSize / NRRD byte skip for detached data (-1: take the end)
    dtype: np.dtype = np.dtype(np.uint8)  # pixel type as stored (byte order included)
    channels: int = 1  # values per pixel

    @property
    def n_bytes(self) -> int:
        return self.width * self.height * self.n_frames * self.channels * self.dtype.itemsize


def _ints(path: Path, name: str, text: str | None, count: int | None = None) -> list[int]:
    if text is None:
        raise InputError(f"header has no {name} field", path)
    try:
        values = [int(tok) for tok in text.split()]
    except ValueError:
        raise InputError(f"{name} = {text!r} is not a list of whole numbers", path) from None
    if count is not None and len(values) != count:
        raise InputError(f"{name} = {text!r} should have {count} values", path)
    return values


def _frames_from_dims(path: Path, sizes: list[int], kinds: list[str] | None, what: str) -> tuple[int, int, int]:
    """(width, height, n_frames) from the axis sizes and kinds of a 2D / 2D+t / 3D+t image."""
    if any(s < 0 for s in sizes):
        raise InputError(f"{what} = {sizes} has a negative size", path)
    if kinds is not None and len(kinds) != len(sizes):
        kinds = None  # a malformed kinds list: fall back to PLUS's rule (last axis = frames)
    if len(sizes) == 2:
        return sizes[0], sizes[1], 1
    if len(sizes) == 3:
        if kinds is not None and kinds[2].lower() in ("domain", "space") and sizes[2] > 1:
            raise InputError(
                f"is a 3D volume ({what} {sizes[0]} {sizes[1]} {sizes[2]}, three spatial axes), not a "
                "sequence of 2D frames; read it with freehand3d.io.volumes.read_volume",
                path,
            )
        return sizes[0], sizes[1], sizes[2]
    if len(sizes) == 4:
        if sizes[2] != 1:
            raise InputError(
                f"holds 3D frames ({what} {' '.join(map(str, sizes))}); sweeps need 2D frames", path
            )
        return sizes[0], sizes[1], sizes[3]
    raise InputError(f"has {len(sizes)} image axes; a sequence file has 2, 3 or 4", path)


def _tracker_only(width: int, height: int, n_frames: int) -> bool:
    """A tracker-only buffer (PLUS's stylus / tracker recordings): frames with poses and no pixels."""
    return n_frames > 0 and width * height == 0


def _metaimage_layout(header: SequenceHeader) -> _Layout:
    path = header.path
    ndims = _ints(path, "NDims", header.get("NDims"), 1)[0]
    if ndims not in (2, 3, 4):
        raise InputError(f"NDims = {ndims}; a sequence file has 2, 3 or 4", path)
    sizes = _ints(path, "DimSize", header.get("DimSize"), ndims)
    kinds_text = header.get("Kinds")
    kinds = kinds_text.split() if kinds_text else None
    width, height, n_frames = _frames_from_dims(path, sizes, kinds, "DimSize")
    element = (header.get("ElementType") or "").strip()
    pose_only = _tracker_only(width, height, n_frames)
    try:
        if pose_only:
            dtype = np.dtype(np.uint8)  # tracker buffers (DimSize = 0 0 N) have no pixels; PLUS writes MET_OTHER there
        else:
            if not element.upper().startswith("MET_"):
                raise ValueError("a MetaImage element type is one of " + ", ".join(_DTYPE_TO_MET.values()))
            dtype = numpy_dtype(element)
    except ValueError as exc:
        raise InputError(f"ElementType = {element or '(missing)'}: {exc}", path) from None
    channels = _ints(path, "ElementNumberOfChannels", header.get("ElementNumberOfChannels", "1"), 1)[0]
    if pose_only:
        channels = 1
    if channels < 1:
        raise InputError(f"ElementNumberOfChannels = {channels} is not a positive number", path)
    msb = header.get("BinaryDataByteOrderMSB") or header.get("ElementByteOrderMSB") or "False"
    if msb.strip().lower() not in ("true", "false"):
        raise InputError(f"BinaryDataByteOrderMSB = {msb!r} is neither True nor False", path)
    dtype = dtype.newbyteorder(">" if msb.strip().lower() == "true" else "<")
    if (header.get("BinaryData") or "True").strip().lower() != "true":
        raise InputError("BinaryData = False (text pixel data) is not supported", path)
    compressed = (header.get("CompressedData") or "False").strip().lower() == "true"
    csize = None
    if compressed and header.get("CompressedDataSize") is not None:
        csize = _ints(path, "CompressedDataSize", header.get("CompressedDataSize"), 1)[0]
        if csize <= 0:
            raise InputError(f"CompressedDataSize = {csize} is not positive", path)
    skip = 0
    if header.get("HeaderSize") is not None and header.data_path != header.path:
        skip = _ints(path, "HeaderSize", header.get("HeaderSize"), 1)[0]
    return _Layout(width, height, n_frames, compressed, csize, False, skip, dtype, channels)


def _nrrd_layout(header: SequenceHeader) -> _Layout:
    path = header.path
    dim = _ints(path, "dimension", header.get("dimension"), 1)[0]
    if dim not in (2, 3, 4):
        raise InputError(f"dimension: {dim}; a sequence file has 2, 3 or 4", path)
    sizes = _ints(path, "sizes", header.get("sizes"), dim)
    kinds_text = header.get("kinds")
    kinds = kinds_text.split() if kinds_text else None
    channels = 1
    if kinds is not None and len(kinds) == dim and kinds[0].lower() in _NRRD_COMPONENT_KINDS:
        if dim == 2:
            raise InputError(f"sizes: {sizes[0]} {sizes[1]} holds one line of {sizes[0]}-component pixels, not an image", path)
        channels, sizes, kinds = sizes[0], sizes[1:], kinds[1:]
        if channels < 1:
            raise InputError(f"first axis ({kinds_text.split()[0]}) has {channels} components per pixel", path)
    elif kinds is not None and len(kinds) == dim and kinds[0].lower() not in ("domain", "space", "time", "list"):
        raise InputError(
            f"first axis has kind {kinds[0]!r}: neither an image axis nor a pixel-component axis (vector, RGB-color, ...)",
            path,
        )
    width, height, n_frames = _frames_from_dims(path, sizes, kinds, "sizes")
    element = (header.get("type") or "").strip()
    try:
        if _tracker_only(width, height, n_frames):
            dtype = np.dtype(np.uint8)  # no pixels: whatever the type says does not matter
        else:
            dtype = numpy_dtype(element)
            if element.upper().startswith("MET_"):
                raise ValueError(f"{element} is a MetaImage name")
    except ValueError as exc:
        raise InputError(f"type: {element or '(missing)'}: {exc}", path) from None
    endian = (header.get("endian") or "little").strip().lower()
    if endian not in ("little", "big"):
        raise InputError(f"endian: {endian!r} is neither little nor big", path)
    if dtype.itemsize > 1:
        if header.get("endian") is None:
            raise InputError(f"type: {element} needs an 'endian:' field (little or big)", path)
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    encoding = (header.get("encoding") or "").strip().lower()
    if encoding in ("gz", "gzip"):
        compressed = True
    elif encoding == "raw":
        compressed = False
    else:
        raise InputError(f"NRRD encoding {encoding or 'missing'!r} is not supported (use raw or gzip)", path)
    skip = 0
    byte_skip = header.get("byte skip") or header.get("byteskip")
    if byte_skip is not None:
        skip = _ints(path, "byte skip", byte_skip, 1)[0]
        if header.data_path == header.path and skip < 0:
            raise InputError("byte skip: -1 is only allowed for detached data", path)
        if skip < -1:
            raise InputError(f"byte skip: {skip} is invalid", path)
    if header.get("line skip") or header.get("lineskip"):
        raise InputError("NRRD 'line skip' is not supported", path)
    return _Layout(width, height, n_frames, compressed, None, True, skip, dtype, channels)


def header_is_volume(header: SequenceHeader) -> bool:
    """True when the header describes one 3D volume (three spatial axes, e.g. a PLUS
    VolumeReconstructor output) rather than a sequence of 2D frames. Follows PLUS: without a
    ``Kinds``/``kinds`` entry the last axis is the frame axis."""
    try:
        if header.container == "metaimage":
            sizes = [int(t) for t in (header.get("DimSize") or "").split()]
            kinds = (header.get("Kinds") or "").split()
        else:
            sizes = [int(t) for t in (header.get("sizes") or "").split()]
            kinds = (header.get("kinds") or "").split()
    except ValueError:
        return False
    return (
        len(sizes) == 3 and len(kinds) == 3 and sizes[2] > 1
        and all(k.lower() in ("domain", "space") for k in kinds)
    )


# --------------------------------------------------------------------------- pixel data


def _decompress(path: Path, data: bytes, expected: int, gzip: bool) -> bytes:
    if expected > _MAX_DEFLATE_RATIO * max(len(data), 1) + 1024:
        raise InputError(
            f"the header promises {expected} pixel bytes but only {len(data)} compressed bytes follow "
            "(truncated file, or sizes in the header are wrong)",
            path,
        )
    # wbits 47 accepts zlib and gzip streams; NRRD writers differ in which they produce. One call
    # per stream is the fast path (no max_length chunking); the ratio check above bounds the memory.
    wbits = 47 if gzip else 15
    parts, rest = [], data
    try:
        while True:
            inflater = _inflate_lib.decompressobj(wbits)
            parts.append(inflater.decompress(rest))
            if not inflater.eof:
                raise InputError(
                    f"compressed pixel data ends early: {sum(map(len, parts))} of {expected} bytes "
                    "(truncated file?)",
                    path,
                )
            rest = inflater.unused_data
            # gzip allows several concatenated members; zlib data is one stream
            if not (gzip and rest.startswith(b"\x1f\x8b")):
                break
        if rest:
            raise InputError(
                f"{len(rest)} unexpected bytes follow the compressed pixel data (wrong CompressedDataSize?)",
                path,
            )
    except _ZLIB_ERRORS as exc:
        raise InputError(f"compressed pixel data is corrupt ({exc})", path) from None
    out = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(out) != expected:
        raise InputError(
            f"compressed pixel data holds {len(out)} bytes, but DimSize/sizes need {expected} "
            "(the header sizes are wrong or the file is truncated)",
            path,
        )
    return out


def _pixel_bytes(header: SequenceHeader, layout: _Layout, blob: bytearray):
    path = header.path
    if header.data_path != path:
        try:
            data = memoryview(_read_file(header.data_path))
        except InputError as exc:
            raise InputError(f"pixel data file {header.data_path.name} (named in the header): {exc.problem}", path) from None
    else:
        data = memoryview(blob)[header.data_offset:]  # a view: no copy of the pixel bytes
    expected = layout.n_bytes
    if layout.header_skip > 0:
        data = data[layout.header_skip:]
    if layout.compressed:
        if layout.compressed_size is not None:
            if layout.compressed_size > len(data):
                raise InputError(
                    f"CompressedDataSize = {layout.compressed_size} but only {len(data)} bytes follow the "
                    "header (truncated file?)",
                    path,
                )
            data = data[: layout.compressed_size]
        return _decompress(path, data, expected, layout.gzip)
    if layout.header_skip == -1:
        data = data[len(data) - expected:] if len(data) >= expected else data
    if len(data) != expected:
        raise InputError(
            f"pixel data has {len(data)} bytes but the header sizes need {expected} "
            f"({layout.width}x{layout.height}x{layout.n_frames}"
            + (f", {layout.channels} components" if layout.channels > 1 else "")
            + (f", {layout.dtype.itemsize} bytes each" if layout.dtype.itemsize > 1 else "")
            + "): "
            + ("truncated file or wrong sizes" if len(data) < expected else "the header sizes are wrong"),
            path,
        )
    return data


# --------------------------------------------------------------------------- orientation


def _orientation_flips(path, text: str | None) -> tuple[bool, bool]:
    """(flip columns, flip rows) that take frames stored in orientation ``text`` to MF (and back);
    RF orientations (``FM``, ``NM``, ``FU``, ``NU``) go to ``FM``."""
    code = (text or "MF").strip().upper()
    if len(code) == 2 and code[0] in "FN" and code[1] in "MU":
        return code[0] == "N", code[1] == "U"
    if len(code) not in (2, 3) or code[0] not in "MU" or code[1] not in "FN" or (len(code) == 3 and code[2] not in "AD"):
        raise InputError(
            f"UltrasoundImageOrientation {text!r} is not supported (expected MF, UF, MN or UN, optionally "
            "followed by A or D, or the RF orientations FM, NM, FU, NU)",
            path,
        )
    return code[0] == "U", code[1] == "N"


def _orient(frames: np.ndarray, flip_columns: bool, flip_rows: bool) -> np.ndarray:
    if flip_columns:
        frames = frames[:, :, ::-1]
    if flip_rows:
        frames = frames[:, ::-1, :]
    return frames


# --------------------------------------------------------------------------- values


def _parse_float_token(tok: str) -> float:
    try:
        return float(tok)
    except ValueError:
        # MSVC-era PLUS builds printed non-finite numbers as 1.#QNAN, -1.#IND, 1.#INF
        low = tok.lower()
        if "#q" in low or "#ind" in low or "#s" in low:
            return math.nan
        if "#inf" in low:
            return -math.inf if low.startswith("-") else math.inf
        raise


def _parse_matrix(path: Path, frame: int | None, name: str, text: str) -> np.ndarray:
    where = "header" if frame is None else f"frame {frame}"
    tokens = text.split()
    try:
        values = [_parse_float_token(tok) for tok in tokens]
    except ValueError:
        raise InputError(f"{where}: {name} = {text[:60]!r} is not 16 numbers", path) from None
    if len(values) != 16:
        raise InputError(f"{where}: {name} has {len(values)} numbers, a 4x4 matrix needs 16", path)
    return np.array(values, dtype=np.float64).reshape(4, 4)


def _format_number(x: float) -> str:
    x = float(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)  # shortest text that reads back to the same float


def _format_matrix(m: np.ndarray) -> str:
    return " ".join(_format_number(v) for v in np.asarray(m, dtype=np.float64).reshape(-1))


def _is_transform_field(name: str) -> str | None:
    """Sweep transform name for a ``<From>To<To>Transform`` field name, else None."""
    if name.endswith("Transform"):
        base = name[: -len("Transform")]
        if _TRANSFORM_NAME.match(base):
            return base
    return None


def _is_status_field(name: str) -> str | None:
    if name.endswith("TransformStatus"):
        base = name[: -len("TransformStatus")]
        if _TRANSFORM_NAME.match(base):
            return base
    return None


def _spacing_from(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    sx, sy = values[0], values[1]
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        return None
    if sx == 1.0 and sy == 1.0:
        return None  # PLUS's placeholder: the real scale is in ImageToProbe
    return (sx, sy)


def _parse_spacing(header: SequenceHeader) -> tuple[float, float] | None:
    try:
        if header.container == "metaimage":
            text = header.get("ElementSpacing")
            return _spacing_from([float(t) for t in text.split()]) if text else None
        text = header.get("spacings")
        if text:
            return _spacing_from([float(t) for t in text.split() if t.lower() != "nan"])
        text = header.get("space directions")
        if text:
            norms = []
            for tok in text.split():
                if tok.lower() == "none":
                    continue
                vec = [float(v) for v in tok.strip("()").split(",")]
                norms.append(math.sqrt(sum(v * v for v in vec)))
            return _spacing_from(norms)
    except ValueError:
        return None  # spacing is informative only; a malformed one is treated as unknown
    return None


# --------------------------------------------------------------------------- read


def read_plus_sequence(path: str | os.PathLike) -> Sweep:
    """Read a PLUS sequence file (``.igs.mha``, ``.seq.mha``, ``.mha``, ``.mhd``, ``.igs.nrrd``,
    ``.seq.nrrd``, ``.nrrd``; compressed or not) into a :class:`~freehand3d.sweep.Sweep`.

    Parameters
    ----------
    path : str or os.PathLike
        The sequence file.

    Returns
    -------
    Sweep
        Frames (N, H, W) or (N, H, W, C) of the file's pixel type, in MF orientation (RF: FM), timestamps, every per-frame transform with its
        validity, every other per-frame field (``frame_fields``) and header field (``metadata``).
        The module docstring gives the exact mapping.

    Raises
    ------
    InputError
        The file is missing, truncated, inconsistent (sizes that do not match the data), of an
        element type sweeps cannot hold, or malformed; the message names the file and the problem.

    Examples
    --------
    >>> sweep = read_plus_sequence("fCal_Test_Calibration_3NWires.igs.mha")  # doctest: +SKIP
    >>> sweep.frames.shape, sweep.valid["ProbeToTracker"].sum()  # doctest: +SKIP
    ((188, 616, 820), 188)
    """
    path = Path(path)
    blob = _read_file(path)
    header = _parse_header(path, blob)
    layout = _metaimage_layout(header) if header.container == "metaimage" else _nrrd_layout(header)
    n, h, w = layout.n_frames, layout.height, layout.width
    if n == 0:
        raise InputError(f"holds no image data (size {w}x{h}, {n} frames)", path)
    if _tracker_only(w, h, n):
        # tracker-only: N frames of poses, no pixels (any pixel bytes present are ignored)
        if not header.frame_fields:
            raise InputError(f"holds no image data and no per-frame fields (size {w}x{h}, {n} frames)", path)
        raw = b""
    else:
        raw = _pixel_bytes(header, layout, blob)
    shape = (n, h, w) if layout.channels == 1 else (n, h, w, layout.channels)
    frames = np.frombuffer(raw, dtype=layout.dtype).reshape(shape)

    orientation_key = "UltrasoundImageOrientation" if header.container == "metaimage" else "ultrasound image orientation"
    if _tracker_only(w, h, n):  # no pixels to orient; PLUS writes orientation XX there
        flip_columns = flip_rows = False
    else:
        flip_columns, flip_rows = _orientation_flips(path, header.get(orientation_key))
    frames = np.ascontiguousarray(_orient(frames, flip_columns, flip_rows))
    if not frames.dtype.isnative:
        frames = frames.astype(frames.dtype.newbyteorder("="))  # a copy, native and aligned
    if not (frames.flags.writeable and frames.flags.aligned):
        frames = frames.copy()

    for name, by_frame in header.frame_fields.items():
        bad = [i for i in by_frame if i >= n]
        if bad:
            raise InputError(
                f"has per-frame field {name} for frame {bad[0]}, but the image has only {n} frames", path
            )

    timestamps = np.full(n, np.nan)
    transforms: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    frame_fields: dict[str, list[str]] = {}
    statuses: dict[str, dict[int, str]] = {}
    for name, by_frame in header.frame_fields.items():
        tname = _is_transform_field(name)
        sname = _is_status_field(name)
        if name == "Timestamp":
            for i, text in by_frame.items():
                try:
                    timestamps[i] = _parse_float_token(text.strip())
                except ValueError:
                    raise InputError(f"frame {i}: Timestamp = {text[:40]!r} is not a number", path) from None
        elif tname is not None:
            mats = np.full((n, 4, 4), np.nan)
            for i, text in by_frame.items():
                mats[i] = _parse_matrix(path, i, name, text)
            transforms[tname] = mats
        elif sname is not None:
            statuses[sname] = by_frame
        else:
            frame_fields[name] = [by_frame.get(i, "") for i in range(n)]

    for tname, mats in transforms.items():
        by_frame = statuses.pop(tname, {})
        ok = np.isfinite(mats).all(axis=(1, 2))
        words = []
        for i in range(n):
            word = by_frame.get(i)
            words.append("" if word is None else word)
            if word is not None and word.strip().upper() != "OK":
                ok[i] = False
        valid[tname] = ok
        if any(w.strip() not in ("", "OK", "INVALID") for w in words):
            frame_fields[f"{tname}TransformStatus"] = words
    for sname, by_frame in statuses.items():
        # a status without any matrix: keep the words, there is nothing to mark
        frame_fields[f"{sname}TransformStatus"] = [by_frame.get(i, "") for i in range(n)]

    metadata: dict[str, str] = {}
    image_to_probe = None
    layout_names = _META_LAYOUT if header.container == "metaimage" else _NRRD_LAYOUT
    for key, value in header.fields.items():
        low = key.lower()
        if low == "imagetoprobetransform":
            image_to_probe = _parse_matrix(path, None, key, value)
            if not np.isfinite(image_to_probe).all():
                raise InputError("ImageToProbeTransform in the header is not finite", path)
            continue
        if low in layout_names and low not in ("space directions", "space origin", "space", "space dimension", "spacings"):
            continue
        metadata[_NRRD_TO_META_NAMES.get(low, key) if header.container == "nrrd" else key] = value

    try:
        return Sweep(
            frames=frames,
            spacing=_parse_spacing(header),
            timestamps=timestamps,
            transforms=transforms,
            valid=valid,
            image_to_probe=image_to_probe,
            metadata=metadata,
            frame_fields=frame_fields,
            source=str(path),
        )
    except ValueError as exc:  # e.g. a transform name Sweep rejects
        raise InputError(str(exc), path) from None


# --------------------------------------------------------------------------- write


def _clean_value(key: str, value, path: Path) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, np.bool_)):
        text = "True" if value else "False"
    elif isinstance(value, (int, float, np.integer, np.floating)):
        text = _format_number(value)
    else:
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            text = " ".join(_format_number(v) for v in arr)
        except (TypeError, ValueError):
            text = str(value)
    if "\n" in text or "\r" in text:
        raise InputError(f"metadata field {key!r} contains a line break and cannot be written to a header", path)
    return text


def _check_key(key: str, path: Path, nrrd: bool) -> None:
    bad = ("=", "\n", "\r") if not nrrd else (":=", "\n", "\r")
    if not key or any(b in key for b in bad) or key != key.strip() or key.startswith("#"):
        raise InputError(f"metadata key {key!r} cannot be written to a {'NRRD' if nrrd else 'MetaImage'} header", path)


def _frame_lines(sweep: Sweep, path: Path) -> list[list[tuple[str, str]]]:
    """Per frame, the (field name, value) pairs to write, in a stable order."""
    n = len(sweep)
    raw_status = {}
    for name, words in sweep.frame_fields.items():
        tname = _is_status_field(name)
        if tname is not None and tname in sweep.transforms:
            raw_status[tname] = words
    per_frame: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    for tname, mats in sweep.transforms.items():
        if not _TRANSFORM_NAME.match(tname):
            raise InputError(f"transform name {tname!r} is not of the form <From>To<To>", path)
        mask = sweep.valid.get(tname, np.ones(n, bool))
        words = raw_status.get(tname)
        for i in range(n):
            m = mats[i]
            if not np.isnan(m).all():
                per_frame[i].append((f"{tname}Transform", _format_matrix(m)))
            status = "OK" if mask[i] else "INVALID"
            if words is not None:
                word = words[i].strip()
                # keep the original word only while it still agrees with the validity mask
                if word and (word.upper() == "OK") == bool(mask[i]):
                    status = word
            per_frame[i].append((f"{tname}TransformStatus", status))
    for i, t in enumerate(sweep.timestamps):
        if not np.isnan(t):
            per_frame[i].append(("Timestamp", _format_number(t)))
    for name, values in sweep.frame_fields.items():
        tname = _is_status_field(name)
        if tname is not None and tname in sweep.transforms:
            continue
        if not name or any(c in name for c in "=:\n\r "):
            raise InputError(f"per-frame field name {name!r} cannot be written to a header", path)
        for i, value in enumerate(values):
            text = _clean_value(name, value, path)
            if text:
                per_frame[i].append((name, text))
    return per_frame


def _padded_triple(text: str | None, default: str, count: int) -> str:
    if text is None:
        return default
    tokens = text.split()
    return text if len(tokens) == count else default


def _le_bytes(frame: np.ndarray) -> bytes:
    """One frame's pixel bytes, little-endian (what the headers written here declare)."""
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()


def _compress_frames(frames: np.ndarray, gzip: bool, level: int) -> list[bytes]:
    # frame by frame so memory stays at the compressed size plus one frame
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31 if gzip else 15)
    chunks = [compressor.compress(_le_bytes(frame)) for frame in frames]
    chunks.append(compressor.flush())
    return [c for c in chunks if c]


def _disk_frames(sweep: Sweep, orientation: str | None, path: Path) -> np.ndarray:
    if sweep.frames.size == 0:
        return sweep.frames
    flip_columns, flip_rows = _orientation_flips(path, orientation)
    return _orient(sweep.frames, flip_columns, flip_rows)


def write_plus_sequence(
    sweep: Sweep,
    path: str | os.PathLike,
    compress: bool = True,
    compression_level: int = 6,
) -> None:
    """Write a sweep as a PLUS sequence file; the container follows the name (``.nrrd`` -> NRRD,
    ``.mha`` -> MetaImage with attached data, ``.mhd`` -> MetaImage header + ``.raw``/``.zraw``).

    Frames are written in the orientation named by ``sweep.metadata["UltrasoundImageOrientation"]``
    (MF when absent), every transform with its ``...TransformStatus``, the timestamps and every
    per-frame field; the other metadata fields follow the layout fields. The write is atomic.

    Parameters
    ----------
    sweep : Sweep
        The sweep to write.
    path : str or os.PathLike
        Output file.
    compress : bool
        zlib (MetaImage) / gzip (NRRD) pixel data, as PLUS writes by default.
    compression_level : int
        zlib level 1 (fast) .. 9 (small); PLUS uses 6.

    Raises
    ------
    InputError
        A metadata key or value cannot be represented in the header, or the orientation is unknown.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".nrrd") or name.endswith(".nhdr"):
        if name.endswith(".nhdr"):
            raise InputError("detached NRRD (.nhdr) writing is not supported; use .nrrd", path)
        _write_nrrd(sweep, path, compress, compression_level)
    elif name.endswith(".mha") or name.endswith(".mhd"):
        _write_metaimage(sweep, path, compress, compression_level, detached=name.endswith(".mhd"))
    else:
        raise InputError("unknown sequence file type (expected .mha, .mhd or .nrrd)", path)


def _element_type_for_write(sweep: Sweep, path: Path) -> str:
    try:
        return met_element_type(sweep.frames.dtype)
    except ValueError as exc:
        raise InputError(str(exc), path) from None


def _orientation_for_write(sweep: Sweep, path: Path) -> str:
    orientation = sweep.metadata.get("UltrasoundImageOrientation")
    orientation = "MF" if orientation is None else str(orientation).strip()
    if len(sweep) and sweep.frame_shape[0] * sweep.frame_shape[1] == 0:
        return orientation  # tracker-only: nothing to orient (PLUS writes XX)
    _orientation_flips(path, orientation)
    return orientation


def _write_metaimage(sweep: Sweep, path: Path, compress: bool, level: int, detached: bool) -> None:
    n, (h, w) = len(sweep), sweep.frame_shape
    orientation = _orientation_for_write(sweep, path)
    frames = _disk_frames(sweep, orientation, path)
    meta = {k: v for k, v in sweep.metadata.items()}
    lowered = {k.lower(): k for k in meta}

    def take(name: str):
        key = lowered.get(name.lower())
        return None if key is None else _clean_value(key, meta[key], path)

    spacing = take("ElementSpacing")
    if sweep.spacing is not None:
        third = spacing.split()[2] if spacing and len(spacing.split()) == 3 else "1"
        spacing = f"{_format_number(sweep.spacing[0])} {_format_number(sweep.spacing[1])} {third}"
    if spacing is not None and len(spacing.split()) == 2:
        spacing = spacing + " 1"
    pose_only = w * h == 0  # tracker-only sweep: PLUS's layout, MET_OTHER and no pixel data
    if pose_only:
        compress = False
    element_type = "MET_OTHER" if pose_only else _element_type_for_write(sweep, path)
    chunks = _compress_frames(frames, False, level) if compress else None

    lines = [("ObjectType", "Image"), ("NDims", "3")]
    ordered = [
        ("AnatomicalOrientation", take("AnatomicalOrientation") or "RAI"),
        ("BinaryData", "True"),
        ("BinaryDataByteOrderMSB", "False"),
        ("CenterOfRotation", _padded_triple(take("CenterOfRotation"), "0 0 0", 3)),
        ("CompressedData", "True" if compress else "False"),
    ]
    if compress:
        ordered.append(("CompressedDataSize", str(sum(len(c) for c in chunks))))
    ordered += [
        ("DimSize", f"{w} {h} {n}"),
        ("Kinds", "domain domain list"),
        *([("ElementNumberOfChannels", str(sweep.n_components))] if sweep.n_components > 1 else []),
        ("ElementSpacing", _padded_triple(spacing, "1 1 1", 3)),
        ("ElementType", element_type),
        ("Offset", _padded_triple(take("Offset"), "0 0 0", 3)),
        ("TransformMatrix", _padded_triple(take("TransformMatrix"), "1 0 0 0 1 0 0 0 1", 9)),
        ("UltrasoundImageOrientation", orientation),
    ]
    lines += ordered
    written = {k.lower() for k, _ in ordered} | {"objecttype", "ndims"}
    for key, value in meta.items():
        low = key.lower()
        if low in written or low in _META_LAYOUT or low in _NRRD_LAYOUT or low == "imagetoprobetransform":
            continue
        if _FRAME_KEY.match(key):
            continue
        _check_key(key, path, nrrd=False)
        lines.append((key, _clean_value(key, value, path)))
    if sweep.image_to_probe is not None:
        lines.append(("ImageToProbeTransform", _format_matrix(sweep.image_to_probe)))
    for i, pairs in enumerate(_frame_lines(sweep, path)):
        prefix = f"Seq_Frame{i:04d}_"
        lines += [(prefix + k, v) for k, v in pairs]

    if detached:
        data_name = path.name[: -len(".mhd")] + (".zraw" if compress else ".raw")
        lines.append(("ElementDataFile", data_name))
    else:
        lines.append(("ElementDataFile", "LOCAL"))
    head = "".join(f"{k} = {v}\n" for k, v in lines).encode("utf-8")

    def write_pixels(handle) -> None:
        if compress:
            for chunk in chunks:
                handle.write(chunk)
        else:
            for frame in frames:
                handle.write(_le_bytes(frame))

    if detached:
        with atomic_path(path.parent / data_name) as tmp, open(tmp, "wb") as handle:
            write_pixels(handle)
        with atomic_path(path) as tmp:
            tmp.write_bytes(head)
    else:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(head)
            write_pixels(handle)


def _write_nrrd(sweep: Sweep, path: Path, compress: bool, level: int) -> None:
    n, (h, w) = len(sweep), sweep.frame_shape
    orientation = _orientation_for_write(sweep, path)
    frames = _disk_frames(sweep, orientation, path)
    meta = dict(sweep.metadata)
    lowered = {k.lower(): k for k in meta}
    sx, sy = sweep.spacing if sweep.spacing is not None else (1.0, 1.0)
    directions = f"({_format_number(sx)},0) (0,{_format_number(sy)})"
    _element_type_for_write(sweep, path)
    type_name = nrrd_type(sweep.frames.dtype)
    c = sweep.n_components
    comp_size, comp_kind, comp_dir = ("", "", "") if c == 1 else (
        f"{c} ", {3: "RGB-color ", 4: "RGBA-color "}.get(c, "vector "), "none ")
    # PLUS's layout: a 2D+t image is three axes, the last a list of frames; one frame is plain 2D;
    # multi-component pixels add a first (component) axis
    if n > 1:
        head = [f"type: {type_name}", f"dimension: {3 + (c > 1)}", "space dimension: 2",
                f"sizes: {comp_size}{w} {h} {n}", f"kinds: {comp_kind}domain domain list",
                f"space directions: {comp_dir}{directions} none"]
    else:
        head = [f"type: {type_name}", f"dimension: {2 + (c > 1)}", "space dimension: 2",
                f"sizes: {comp_size}{w} {h}", f"kinds: {comp_kind}domain domain",
                f"space directions: {comp_dir}{directions}"]
    origin = None
    if "space origin" in lowered:
        text = _clean_value("space origin", meta[lowered["space origin"]], path)
        if re.fullmatch(r"\(\s*[^,()\s]+\s*,\s*[^,()\s]+\s*\)", text):
            origin = text.replace(" ", "")
    head += ["endian: little", f"encoding: {'gzip' if compress else 'raw'}", f"space origin: {origin or '(0,0)'}"]
    lines = ["NRRD0004", "# PLUS sequence file written by freehand3d", *head]
    lines.append(f"{_META_TO_NRRD_NAMES['UltrasoundImageOrientation']}:={orientation}")
    for key, value in meta.items():
        low = key.lower()
        if low in _NRRD_LAYOUT or low in _META_LAYOUT or low in _META_ONLY or low == "imagetoprobetransform":
            continue
        if key == "UltrasoundImageOrientation" or _FRAME_KEY.match(key):
            continue
        out_key = _META_TO_NRRD_NAMES.get(key, key)
        _check_key(out_key, path, nrrd=True)
        text = _clean_value(key, value, path)
        if out_key.lower() in _NRRD_FIELDS:
            lines.append(f"{out_key}: {text}")
        else:
            lines.append(f"{out_key}:={text}")
    if sweep.image_to_probe is not None:
        lines.append(f"ImageToProbeTransform:={_format_matrix(sweep.image_to_probe)}")
    for i, pairs in enumerate(_frame_lines(sweep, path)):
        prefix = f"Seq_Frame{i:04d}_"
        lines += [f"{prefix}{k}:={v}" for k, v in pairs]
    head_bytes = ("\n".join(lines) + "\n\n").encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(head_bytes)
        if compress:
            for chunk in _compress_frames(frames, True, level):
                handle.write(chunk)
        else:
            for frame in frames:
                handle.write(_le_bytes(frame))


__all__ = [
    "read_plus_sequence", "write_plus_sequence", "read_plus_header", "header_is_volume", "SequenceHeader",
    "numpy_dtype", "met_element_type", "nrrd_type",
]
