"""PLUS sequence files: real PLUS recordings (bundled PlusLibData), round trips, orientation,
missing fields, bad input and fuzzing of the parser."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import freehand3d
from freehand3d.errors import Freehand3DError, InputError
from freehand3d.io import read_sweep, write_sweep
from freehand3d.io.plus_sequence import read_plus_header, read_plus_sequence, write_plus_sequence
from freehand3d.sweep import Sweep

PLUS = Path(freehand3d.__file__).parent / "data" / "plus"
CALIBRATION = PLUS / "fCal_Test_Calibration_3NWires.igs.mha"

# frame counts, and the valid count of every transform, of the bundled PLUS recordings
RECORDINGS = {
    "fCal_Test_Calibration_3NWires.igs.mha": (188, {"ProbeToTracker": 188, "ReferenceToTracker": 188, "StylusToTracker": 188}),
    "fCal_Test_Validation_3NWires.igs.mha": (94, {"ProbeToTracker": 94, "ReferenceToTracker": 94, "StylusToTracker": 94}),
    "SpinePhantomFreehand.igs.mha": (21, {"ProbeToTracker": 21, "ReferenceToTracker": 21, "StylusToTracker": 21}),
    "NwirePhantomFreehand.igs.mha": (97, {"ProbeToTracker": 97, "ReferenceToTracker": 97, "StylusToTracker": 0}),
}


@pytest.fixture(scope="module")
def calibration_sweep() -> Sweep:
    return read_plus_sequence(CALIBRATION)


def _sitk_frame_fields(image: sitk.Image, n: int, field: str) -> list[str]:
    return [image.GetMetaData(f"Seq_Frame{i:04d}_{field}") for i in range(n)]


# --------------------------------------------------------------------------- real PLUS files


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_bundled_recordings_match_simpleitk(name):
    """Our parser against SimpleITK's independent MetaImage reader, field by field."""
    n_expected, valid_counts = RECORDINGS[name]
    sweep = read_sweep(PLUS / name)
    assert len(sweep) == n_expected
    assert sweep.frame_shape == (616, 820)
    assert sweep.frames.dtype == np.uint8
    assert {k: int(v.sum()) for k, v in sweep.valid.items()} == valid_counts
    assert sweep.spacing is None  # PLUS's ElementSpacing 1 1 1 is a placeholder
    assert sweep.metadata["UltrasoundImageOrientation"] == "MFA"

    image = sitk.ReadImage(str(PLUS / name))
    assert np.array_equal(sweep.frames, sitk.GetArrayViewFromImage(image))  # MF: no flip
    stamps = [float(s) for s in _sitk_frame_fields(image, n_expected, "Timestamp")]
    np.testing.assert_array_equal(sweep.timestamps, stamps)
    for tname in valid_counts:
        texts = _sitk_frame_fields(image, n_expected, f"{tname}Transform")
        mats = np.array([[float(v) for v in t.split()] for t in texts]).reshape(-1, 4, 4)
        np.testing.assert_array_equal(sweep.transforms[tname], mats)
        status = _sitk_frame_fields(image, n_expected, f"{tname}TransformStatus")
        np.testing.assert_array_equal(sweep.valid[tname], [s == "OK" for s in status])
    assert sweep.frame_fields["ImageStatus"] == _sitk_frame_fields(image, n_expected, "ImageStatus")


def test_calibration_recording_known_values(calibration_sweep):
    """Values copied by hand from the first frame of the PLUS header text."""
    s = calibration_sweep
    assert s.timestamps[0] == 425.398686
    np.testing.assert_array_equal(
        s.transforms["ProbeToTracker"][0, 0], [-0.0215859, 0.20331, 0.978876, 264.765]
    )
    np.testing.assert_array_equal(s.transforms["ProbeToTracker"][0, 3], [0, 0, 0, 1])
    assert list(s.metadata) == [
        "AnatomicalOrientation", "CenterOfRotation", "ElementSpacing", "Offset", "TransformMatrix",
        "UltrasoundImageOrientation",
    ]
    assert s.frames.flags.writeable


def test_volume_file_is_rejected_with_a_pointer_to_read_volume():
    with pytest.raises(InputError, match="3D volume"):
        read_plus_sequence(PLUS / "vtkVolumeReconstructorTestNNLATEvolumeRef.mha")


# --------------------------------------------------------------------------- round trips


def _assert_same_sweep(a: Sweep, b: Sweep, metadata: bool = True) -> None:
    # np.array_equal: numpy.testing's version is ~20x slower on 95 MB of frames
    assert a.frames.shape == b.frames.shape and np.array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert list(a.transforms) == list(b.transforms)
    for k in a.transforms:
        np.testing.assert_array_equal(a.transforms[k], b.transforms[k])
        np.testing.assert_array_equal(a.valid[k], b.valid[k])
    assert a.frame_fields == b.frame_fields
    assert a.spacing == b.spacing
    if metadata:
        # the writer adds PLUS's default geometry fields (Offset, ...) when they are absent
        assert a.metadata.items() <= b.metadata.items()


@pytest.mark.parametrize("suffix, compress", [(".igs.mha", True), (".igs.mha", False), (".igs.nrrd", True)])
def test_round_trip_calibration_recording(calibration_sweep, tmp_path, suffix, compress):
    """All 188 frames: bit-exact pixels, every transform, status, timestamp and per-frame field."""
    out = tmp_path / f"calib{suffix}"
    # level 6 (PLUS's) for the compressed MetaImage so its bytes can be compared with PLUS's below
    write_sweep(calibration_sweep, out, compress=compress, compression_level=6 if suffix == ".igs.mha" else 1)
    back = read_sweep(out)
    _assert_same_sweep(calibration_sweep, back, metadata=suffix.endswith(".mha"))
    if suffix.endswith(".mha"):
        image = sitk.ReadImage(str(out))  # plain SimpleITK reads the written file to the same pixels
        assert np.array_equal(sitk.GetArrayViewFromImage(image), calibration_sweep.frames)
        assert image.GetMetaData("Seq_Frame0187_Timestamp") == "440.246214"
    if suffix == ".igs.mha" and compress:
        ours, theirs = read_plus_header(out), read_plus_header(CALIBRATION)
        assert list(ours.fields) == list(theirs.fields)  # PLUS's order, field by field
        # the same text for every per-frame value, except that PLUS pads some timestamps with zeros
        assert ours.frame_fields.keys() == theirs.frame_fields.keys()
        for name in theirs.frame_fields:
            if name == "Timestamp":
                assert {i: float(v) for i, v in ours.frame_fields[name].items()} == {
                    i: float(v) for i, v in theirs.frame_fields[name].items()
                }
            else:
                assert ours.frame_fields[name] == theirs.frame_fields[name]
        # zlib level 6 as PLUS: even the compressed bytes come out identical
        assert ours.fields["CompressedDataSize"] == theirs.fields["CompressedDataSize"].strip()
        assert out.read_bytes()[ours.data_offset:] == CALIBRATION.read_bytes()[theirs.data_offset:]


@pytest.mark.parametrize(
    "suffix, compress",
    [(".igs.mha", True), (".seq.mha", False), (".igs.nrrd", True), (".seq.nrrd", False), (".mhd", True), (".mhd", False)],
)
def test_round_trip_is_stable_and_simpleitk_reads_it(calibration_sweep, tmp_path, suffix, compress):
    """Every container on the first 24 real frames (SimpleITK's NRRD reader takes seconds on all 188):
    two write/read generations agree, metadata included, and SimpleITK sees the same pixels."""
    part = calibration_sweep.subset(slice(0, 24))
    out = tmp_path / f"calib{suffix}"
    write_sweep(part, out, compress=compress)
    back = read_sweep(out)
    _assert_same_sweep(part, back, metadata=not suffix.endswith(".nrrd"))
    out2 = tmp_path / f"again{suffix}"
    write_sweep(back, out2, compress=compress)
    again = read_sweep(out2)
    _assert_same_sweep(back, again)
    assert list(again.metadata.items()) == list(back.metadata.items())

    image = sitk.ReadImage(str(out))
    pixels = sitk.GetArrayFromImage(image)
    if suffix.endswith(".nrrd"):
        # ITK treats the NRRD "list" frame axis as pixel components: (H, W, N)
        assert image.GetNumberOfComponentsPerPixel() == len(part)
        pixels = np.moveaxis(pixels, -1, 0)
    assert np.array_equal(pixels, part.frames)
    assert float(image.GetMetaData("Seq_Frame0023_Timestamp")) == part.timestamps[23]


@pytest.mark.slow
def test_full_nrrd_round_trip_read_by_simpleitk(calibration_sweep, tmp_path):
    out = tmp_path / "calib.igs.nrrd"
    write_sweep(calibration_sweep, out)
    image = sitk.ReadImage(str(out))  # keep a reference: the array view does not own the pixels
    pixels = sitk.GetArrayViewFromImage(image)
    assert all(np.array_equal(pixels[..., k], calibration_sweep.frames[k]) for k in range(len(calibration_sweep)))


def _small_sweep(n=3, h=6, w=8, seed=0, **kwargs) -> Sweep:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(n, 3)) * 10
    defaults = dict(
        frames=frames,
        timestamps=np.arange(n) * 0.05 + 12.5,
        transforms={"ProbeToTracker": poses},
        frame_fields={"ImageStatus": ["OK"] * n},
        metadata={"UltrasoundImageOrientation": "MF"},
    )
    defaults.update(kwargs)
    return Sweep(**defaults)


@pytest.mark.parametrize("orientation", ["MF", "UF", "MN", "UN", "UNA", "MFD"])
@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_orientation_is_converted_to_mf_and_back(tmp_path, orientation, suffix):
    sweep = _small_sweep(metadata={"UltrasoundImageOrientation": orientation})
    out = tmp_path / f"o{suffix}"
    write_plus_sequence(sweep, out, compress=False)
    on_disk = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    if suffix == ".nrrd":
        on_disk = np.moveaxis(on_disk, -1, 0)
    expected = sweep.frames
    if orientation[0] == "U":
        expected = expected[:, :, ::-1]
    if orientation[1] == "N":
        expected = expected[:, ::-1, :]
    np.testing.assert_array_equal(on_disk, expected)
    back = read_plus_sequence(out)
    np.testing.assert_array_equal(back.frames, sweep.frames)
    assert back.metadata["UltrasoundImageOrientation"] == orientation


@pytest.mark.parametrize("orientation", ["MN", "UF"])
def test_single_2d_image_from_simpleitk_is_one_frame(tmp_path, orientation):
    pixels = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    image = sitk.GetImageFromArray(pixels)
    image.SetMetaData("UltrasoundImageOrientation", orientation)
    out = tmp_path / "single.mha"
    sitk.WriteImage(image, str(out))
    sweep = read_plus_sequence(out)
    assert sweep.frames.shape == (1, 5, 7)
    expected = pixels[::-1, :] if orientation == "MN" else pixels[:, ::-1]
    np.testing.assert_array_equal(sweep.frames[0], expected)
    write_plus_sequence(sweep, tmp_path / "again.mha")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again.mha")))[0], pixels)
    write_plus_sequence(sweep, tmp_path / "again.nrrd")  # NRRD: one frame is a plain 2D image
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again.nrrd"))), pixels)
    np.testing.assert_array_equal(read_plus_sequence(tmp_path / "again.nrrd").frames, sweep.frames)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_spacing_rule_and_calibration_round_trip(tmp_path, suffix):
    itp = np.array([[0.1, 0, 0, 5], [0, 0.1, 0, -3], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    sweep = _small_sweep(spacing=(0.2, 0.3), image_to_probe=itp)
    out = tmp_path / f"s{suffix}"
    write_plus_sequence(sweep, out)
    back = read_plus_sequence(out)
    assert back.spacing == (0.2, 0.3)
    np.testing.assert_array_equal(back.image_to_probe, itp)
    # SimpleITK sees the spacing too
    assert sitk.ReadImage(str(out)).GetSpacing()[:2] == (0.2, 0.3)
    # the PLUS placeholder 1 1 means "unknown"
    write_plus_sequence(_small_sweep(), out)
    assert read_plus_sequence(out).spacing is None


# --------------------------------------------------------------------------- missing / odd fields


def _metaimage_bytes(frames: np.ndarray, frame_lines: list[str], extra: str = "", compress: bool = False,
                     element="MET_UCHAR", dims: str | None = None, csize: int | None = None) -> bytes:
    n, h, w = frames.shape
    data = frames.tobytes()
    head = ["ObjectType = Image", "NDims = 3", "BinaryData = True"]
    if compress:
        data = zlib.compress(data)
        head += ["CompressedData = True", f"CompressedDataSize = {len(data) if csize is None else csize}"]
    else:
        head += ["CompressedData = False"]
    head += [f"DimSize = {dims or f'{w} {h} {n}'}", "Kinds = domain domain list", f"ElementType = {element}",
             "UltrasoundImageOrientation = MF"]
    if extra:
        head.append(extra)
    head += frame_lines + ["ElementDataFile = LOCAL"]
    return ("\n".join(head) + "\n").encode() + data


def test_missing_fields_nan_transform_and_odd_status_words(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    eye = " ".join(["1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"])
    nan = "nan 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"
    lines = [
        f"Seq_Frame0000_ProbeToTrackerTransform = {eye}", "Seq_Frame0000_ProbeToTrackerTransformStatus = OK",
        "Seq_Frame0000_Timestamp = 1.5", "Seq_Frame0000_FrameNumber = 7",
        # frame 1: no transform, no timestamp, a status word from older PLUS versions
        "Seq_Frame0001_ProbeToTrackerTransformStatus = MISSING", "Seq_Frame0001_FrameNumber = 8",
        # frame 2: a NaN matrix that claims OK, no FrameNumber
        f"Seq_Frame0002_ProbeToTrackerTransform = {nan}", "Seq_Frame0002_ProbeToTrackerTransformStatus = OK",
        "Seq_Frame0002_Timestamp = 1.7",
    ]
    path = tmp_path / "odd.seq.mha"
    path.write_bytes(_metaimage_bytes(frames, lines, extra="Custom = hello world"))
    s = read_plus_sequence(path)
    np.testing.assert_array_equal(s.valid["ProbeToTracker"], [True, False, False])
    assert np.isnan(s.transforms["ProbeToTracker"][1]).all()  # missing -> NaN, never identity
    assert np.isnan(s.timestamps[1]) and s.timestamps[2] == 1.7
    assert s.frame_fields["FrameNumber"] == ["7", "8", ""]
    assert s.frame_fields["ProbeToTrackerTransformStatus"] == ["OK", "MISSING", "OK"]
    assert s.metadata["Custom"] == "hello world"

    out = tmp_path / "odd_again.seq.mha"
    write_plus_sequence(s, out)
    header = read_plus_header(out)
    assert 1 not in header.frame_fields["ProbeToTrackerTransform"]  # still missing
    assert 1 not in header.frame_fields["Timestamp"]
    assert header.frame_fields["ProbeToTrackerTransformStatus"] == {0: "OK", 1: "MISSING", 2: "INVALID"}
    assert 2 not in header.frame_fields["FrameNumber"]
    back = read_plus_sequence(out)
    _assert_same_sweep(
        Sweep(frames=s.frames, timestamps=s.timestamps, transforms=s.transforms, valid=s.valid,
              metadata=s.metadata,
              frame_fields={**s.frame_fields, "ProbeToTrackerTransformStatus": ["OK", "MISSING", "INVALID"]}),
        back,
    )


def test_windows_nan_text_is_read_as_invalid(tmp_path):
    frames = np.zeros((1, 2, 2), np.uint8)
    lines = ["Seq_Frame0000_ProbeToTrackerTransform = 1.#QNAN 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",
             "Seq_Frame0000_ProbeToTrackerTransformStatus = OK"]
    path = tmp_path / "win.mha"
    path.write_bytes(_metaimage_bytes(frames, lines))
    assert not read_plus_sequence(path).valid["ProbeToTracker"][0]


def test_detached_mhd_and_raw(tmp_path):
    sweep = _small_sweep()
    write_plus_sequence(sweep, tmp_path / "d.mhd", compress=False)
    assert (tmp_path / "d.raw").stat().st_size == sweep.frames.size
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "d.mhd"))), sweep.frames)
    _assert_same_sweep(sweep, read_plus_sequence(tmp_path / "d.mhd"))
    (tmp_path / "d.raw").unlink()
    with pytest.raises(InputError, match=r"d\.raw.*not found"):
        read_plus_sequence(tmp_path / "d.mhd")


# --------------------------------------------------------------------------- bad input


def _one_line(exc: InputError, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text


@pytest.fixture
def small_files(tmp_path):
    sweep = _small_sweep(n=4, h=16, w=20)
    files = {}
    for name, compress in [("z.mha", True), ("r.mha", False), ("z.nrrd", True), ("r.nrrd", False)]:
        write_plus_sequence(sweep, tmp_path / name, compress=compress)
        files[name] = tmp_path / name
    return files


@pytest.mark.parametrize("name", ["z.mha", "r.mha", "z.nrrd", "r.nrrd"])
@pytest.mark.parametrize("keep", [0.999, 0.9, 0.5])
def test_truncated_file(small_files, name, keep):
    path = small_files[name]
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(InputError) as info:
        read_plus_sequence(path)
    _one_line(info.value, path)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dims", ["20 16 5", "20 16 3", "21 16 4", "20 16 4000000"])
def test_header_sizes_that_lie(tmp_path, compress, dims):
    frames = np.random.default_rng(2).integers(0, 256, (4, 16, 20), dtype=np.uint8)
    path = tmp_path / "lie.mha"
    path.write_bytes(_metaimage_bytes(frames, [], compress=compress, dims=dims))
    with pytest.raises(InputError) as info:
        read_plus_sequence(path)
    _one_line(info.value, path)


@pytest.mark.parametrize("csize", [10, 10**9])
def test_compressed_data_size_that_lies(tmp_path, csize):
    frames = np.random.default_rng(3).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    path = tmp_path / "csize.mha"
    path.write_bytes(_metaimage_bytes(frames, [], compress=True, csize=csize))
    with pytest.raises(InputError, match="CompressedDataSize|compressed pixel data"):
        read_plus_sequence(path)


def test_missing_local_data_and_missing_external_file(tmp_path):
    frames = np.zeros((2, 4, 4), np.uint8)
    path = tmp_path / "nodata.mha"
    path.write_bytes(_metaimage_bytes(frames, [])[: -frames.size])
    with pytest.raises(InputError, match="pixel data has 0 bytes"):
        read_plus_sequence(path)
    header = path.read_bytes().replace(b"ElementDataFile = LOCAL", b"ElementDataFile = elsewhere.raw")
    (tmp_path / "ext.mhd").write_bytes(header)
    with pytest.raises(InputError, match="elsewhere.raw"):
        read_plus_sequence(tmp_path / "ext.mhd")


PIXEL_CASES = [
    (dtype, components)
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
    for components in (1, 3)
] + [(np.uint8, 4), (np.float32, 2)]


def _random_frames(dtype, components, shape=(3, 5, 7), seed=0) -> np.ndarray:
    """Frames that use the type's whole range (extremes included), so a wrong type, byte order or
    component order cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    full = shape if components == 1 else (*shape, components)
    if np.dtype(dtype).kind == "f":
        frames = (rng.standard_normal(full) * 1e4).astype(dtype)
        frames.flat[:4] = [np.finfo(dtype).max, np.finfo(dtype).min, np.finfo(dtype).tiny, -0.0]
    else:
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, info.max, full, endpoint=True, dtype=dtype)
        frames.flat[:2] = [info.min, info.max]
    return frames


@pytest.mark.parametrize("dtype, components", PIXEL_CASES)
@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_sitk_written_frames_of_every_type_read_exactly(tmp_path, dtype, components, suffix):
    """ITK (the reference MetaImage/NRRD implementation) writes every element type and multi-component
    pixels; the reader returns the same values, type and shape."""
    pixels = _random_frames(dtype, components)
    image = sitk.GetImageFromArray(pixels, isVector=components > 1)
    path = tmp_path / f"frames{suffix}"
    sitk.WriteImage(image, str(path), useCompression=components == 3)
    if suffix == ".nrrd":  # ITK calls every axis 'domain'; the last one is the frame axis ('list')
        blob = path.read_bytes()
        line = re.search(rb"\nkinds: [^\n]*\n", blob)
        path.write_bytes(blob[: line.end() - 8] + blob[line.end() - 8:].replace(b"domain\n", b"list\n", 1))
    sweep = read_plus_sequence(path)
    assert sweep.frames.dtype == np.dtype(dtype)
    assert sweep.n_components == components
    assert sweep.frames.shape == pixels.shape
    assert sweep.frames.tobytes() == pixels.tobytes()


@pytest.mark.parametrize("dtype, components", PIXEL_CASES)
@pytest.mark.parametrize("suffix", [".igs.mha", ".igs.nrrd", ".mhd"])
@pytest.mark.parametrize("compress", [True, False])
def test_every_pixel_type_round_trips_bit_exact(tmp_path, dtype, components, suffix, compress):
    pixels = _random_frames(dtype, components)
    sweep = Sweep(pixels, transforms={"ProbeToTracker": np.eye(4)}, spacing=(0.25, 0.5),
                  metadata={"UltrasoundImageOrientation": "UN"})
    first = tmp_path / f"a{suffix}"
    write_plus_sequence(sweep, first, compress=compress)
    back = read_plus_sequence(first)
    assert back.frames.dtype == np.dtype(dtype) and back.frames.shape == pixels.shape
    assert back.frames.tobytes() == pixels.tobytes()
    assert back.spacing == (0.25, 0.5)
    # read -> write reproduces the file byte for byte (detached .mhd names its own data file)
    second = tmp_path / f"a2{suffix}"
    write_plus_sequence(back, second, compress=compress)
    if suffix != ".mhd":
        assert second.read_bytes() == first.read_bytes()
    if suffix == ".igs.nrrd":
        return  # ITK's NRRD reader takes a 'list' axis for pixel components (see the module doc)
    # and plain ITK reads the same pixels
    image = sitk.ReadImage(str(first))
    assert image.GetNumberOfComponentsPerPixel() == components
    on_disk = sitk.GetArrayFromImage(image).reshape(pixels.shape)
    assert on_disk.dtype == np.dtype(dtype)
    assert np.array_equal(on_disk, pixels[:, ::-1, ::-1], equal_nan=True)  # UN on disk


def test_big_endian_metaimage_reads(tmp_path):
    pixels = _random_frames(np.int16, 1)
    head = (b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
            b"DimSize = 7 5 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    (tmp_path / "be.mha").write_bytes(head + pixels.astype(">i2").tobytes())
    sweep = read_plus_sequence(tmp_path / "be.mha")
    assert sweep.frames.dtype == np.int16 and sweep.frames.dtype.isnative
    assert np.array_equal(sweep.frames, pixels)


RF_FILE = PLUS / "UltrasonixLinearRfData.igs.mha"


def test_plus_rf_data_reads_and_round_trips(tmp_path):
    """PLUS's MET_SHORT RF recording: read with the file's type, the RF orientation NM flipped to
    FM, and written back to the same pixel bytes (the header differs only in DimSize's trailing
    blanks, which PLUS pads)."""
    sweep = read_plus_sequence(RF_FILE)
    assert sweep.frames.dtype == np.int16 and sweep.frames.shape == (1, 256, 2080)
    assert sweep.metadata["UltrasoundImageOrientation"] == "NM"
    assert sweep.metadata["UltrasoundImageType"] == "RF_I_LINE_Q_LINE"
    assert sweep.frame_fields["ImageStatus"] == ["OK"]
    assert sweep.timestamps[0] == 116.045605
    raw = RF_FILE.read_bytes()
    on_disk = np.frombuffer(raw[len(raw) - 2080 * 256 * 2:], "<i2").reshape(256, 2080)
    assert np.array_equal(sweep.frames[0], on_disk[:, ::-1])  # N: samples stored far to near
    for suffix, compress in [(".igs.mha", False), (".igs.mha", True), (".igs.nrrd", True), (".igs.nrrd", False)]:
        out = tmp_path / f"rf{suffix}"
        write_plus_sequence(sweep, out, compress=compress)
        back = read_plus_sequence(out)
        assert back.frames.dtype == np.int16 and back.frames.tobytes() == sweep.frames.tobytes()
        assert back.metadata["UltrasoundImageOrientation"] == "NM"
    out = tmp_path / "rf.igs.mha"
    write_plus_sequence(sweep, out, compress=False)
    assert out.read_bytes()[-len(on_disk.tobytes()):] == on_disk.tobytes()
    assert out.read_bytes().replace(b" ", b"") == raw.replace(b" ", b"")


def test_element_type_mapping_is_public_and_inverse():
    from freehand3d.io.plus_sequence import met_element_type, nrrd_type, numpy_dtype

    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64):
        assert numpy_dtype(met_element_type(dtype)) == np.dtype(dtype)
        assert numpy_dtype(nrrd_type(dtype)) == np.dtype(dtype)
    assert numpy_dtype("MET_SHORT") == np.int16 and numpy_dtype("unsigned short") == np.uint16
    with pytest.raises(ValueError, match="MET_LONG_LONG"):
        numpy_dtype("MET_LONG_LONG")
    with pytest.raises(ValueError, match="int64"):
        met_element_type(np.int64)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "no ElementDataFile"),
        (b"hello world\n", "not 'Key = Value'"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not 'Key = Value'"),
        (b"NRRD0004\ntype: uint8\ndimension: 3\n", "truncated"),
        (b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: bzip2\n\nxxxx", "bzip2"),
        (b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 1\nElementType = MET_UCHAR\n"
         b"Seq_Frame0005_Timestamp = 1\nElementDataFile = LOCAL\nabcd", "frame 5"),
        (b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 1\nElementType = MET_UCHAR\n"
         b"Seq_Frame0000_ProbeToTrackerTransform = 1 2 3\nElementDataFile = LOCAL\nabcd", "16"),
        (b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 1\nElementType = MET_UCHAR\n"
         b"UltrasoundImageOrientation = FF\nElementDataFile = LOCAL\nabcd", "UltrasoundImageOrientation"),
    ],
)
def test_malformed_files(tmp_path, content, problem):
    path = tmp_path / "bad.seq.mha"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as info:
        read_plus_sequence(path)
    _one_line(info.value, path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_plus_sequence(tmp_path / "absent.igs.mha")
    (tmp_path / "dir.mha").mkdir()
    with pytest.raises(InputError, match="folder"):
        read_plus_sequence(tmp_path / "dir.mha")


def test_writer_refuses_unwritable_metadata_and_leaves_nothing(tmp_path):
    sweep = _small_sweep(metadata={"Bad = Key": "x"})
    out = tmp_path / "w.mha"
    with pytest.raises(InputError, match="Bad = Key"):
        write_plus_sequence(sweep, out)
    assert list(tmp_path.iterdir()) == []  # atomic: no half-written or temp file


# --------------------------------------------------------------------------- fuzzing


def _fuzz_seeds() -> list[bytes]:
    import tempfile

    sweep = _small_sweep(n=3, h=5, w=6)
    sweep.frame_fields["ProbeToTrackerTransformStatus"] = ["OK", "MISSING", "OK"]
    sweep.valid["ProbeToTracker"][1] = False
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, compress in [("a.mha", True), ("b.mha", False), ("c.nrrd", True), ("d.nrrd", False)]:
            path = Path(tmp) / name
            write_plus_sequence(sweep, path, compress=compress)
            seeds.append(path.read_bytes())
    return seeds


_SEEDS = _fuzz_seeds()
_HEADER_EDITS = [
    (b"DimSize = 6 5 3", b"DimSize = 6 5 300"), (b"DimSize = 6 5 3", b"DimSize = -6 5 3"),
    (b"DimSize = 6 5 3", b"DimSize = 6 5"), (b"NDims = 3", b"NDims = 9"), (b"NDims = 3", b"NDims = x"),
    (b"MET_UCHAR", b"MET_DOUBLE"), (b"CompressedData = True", b"CompressedData = False"),
    (b"CompressedData = False", b"CompressedData = True"), (b"ElementDataFile = LOCAL", b"ElementDataFile = x\x00y"),
    (b"sizes: 6 5 3", b"sizes: 6 5 30000000"), (b"encoding: gzip", b"encoding: raw"),
    (b"encoding: raw", b"encoding: gzip"), (b"dimension: 3", b"dimension: 1"), (b"type: uint8", b"type: float"),
    (b"Transform = ", b"Transform = 1e999 "), (b"Timestamp = ", b"Timestamp = x"), (b"Timestamp:=", b"Timestamp:=nan"),
    (b"Seq_Frame0001", b"Seq_Frame9999"), (b"= MF", b"= QQ"), (b":=MF", b":=UNA"), (b"\n", b"\r\n"),
    (b"ProbeToTracker", b"probetotracker"), (b"kinds: domain domain list", b"kinds: RGB-color domain domain"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(range(len(_SEEDS))),
    edits=st.lists(
        st.one_of(
            st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
            st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
            st.tuples(st.just("header"), st.integers(0, len(_HEADER_EDITS) - 1), st.just(0)),
            st.tuples(st.just("insert"), st.floats(0, 1), st.integers(0, 255)),
            st.tuples(st.just("dropline"), st.floats(0, 1), st.just(0)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzzed_sequence_files_raise_only_freehand3d_errors(tmp_path_factory, seed, edits):
    blob = bytearray(_SEEDS[seed])
    for kind, where, value in edits:
        if not blob:
            break
        if kind == "flip":
            i = min(int(where * len(blob)), len(blob) - 1)
            blob[i] ^= value
        elif kind == "cut":
            del blob[int(where * len(blob)):]
        elif kind == "insert":
            blob.insert(int(where * len(blob)), value)
        elif kind == "header":
            old, new = _HEADER_EDITS[where]
            blob = bytearray(bytes(blob).replace(old, new, 1))
        else:
            lines = bytes(blob).split(b"\n")
            del lines[min(int(where * len(lines)), len(lines) - 1)]
            blob = bytearray(b"\n".join(lines))
    suffix = ".nrrd" if _SEEDS[seed].startswith(b"NRRD") else ".mha"
    path = tmp_path_factory.mktemp("fuzz") / f"f{suffix}"
    path.write_bytes(bytes(blob))
    try:
        sweep = read_plus_sequence(path)
    except Freehand3DError as exc:
        assert "\n" not in str(exc)
        return
    # success is fine, but then the result must be a consistent sweep
    assert sweep.frames.dtype == np.uint8 and sweep.frames.ndim == 3
    assert len(sweep.timestamps) == len(sweep)


def test_header_only_read_matches_the_full_parse_and_rejects_truncated_headers(tmp_path):
    header = read_plus_header(CALIBRATION)  # reads only the first ~200 kB
    assert header.data_offset == len(CALIBRATION.read_bytes()) - int(header.fields["CompressedDataSize"])
    assert len(header.frame_fields["Timestamp"]) == 188 and header.fields["DimSize"] == "820 616 188"
    cut = tmp_path / "cut.igs.mha"
    blob = CALIBRATION.read_bytes()
    cut.write_bytes(blob[: header.data_offset - len(b"ElementDataFile = LOCAL\n")])  # a whole-line cut
    with pytest.raises(InputError, match="no ElementDataFile"):
        read_plus_header(cut)
    cut.write_bytes(blob[: header.data_offset - 30])  # cut inside the last per-frame line
    with pytest.raises(InputError, match="not 'Key = Value': 'Seq_Frame0187_ImageStatus'"):
        read_plus_header(cut)
