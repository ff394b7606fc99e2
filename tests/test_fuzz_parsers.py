"""Property-based fuzzing (Hypothesis) of every file parser: PLUS sequences (.igs.mha / .seq.nrrd,
raw and compressed), PLUS device-set XML (device set, volume reconstruction, segmentation,
calibration results), h5 (DualTrack and TUS-REC layouts), npz (simulation truth, ULM RF and ground
truth), ITK ``.tfm`` and every CSV (TUS-REC calibration, batch sweep list, training sweep list,
ULM points, tracking landmarks).

Each parser is fed mutations of a small valid file (bytes flipped, cut, inserted, deleted, or
"interesting" tokens such as ``nan``, ``-1``, ``1e308``, ``\\xff`` spliced in) and, for h5/npz,
structurally random files (keys present or missing, random shapes and dtypes). The property:
the parser returns, or raises :class:`freehand3d.errors.Freehand3DError` (what the CLI turns into
one line and exit 2). Anything else escaping is a crash; an example running past ``_HANG_S`` is a
hang. Bounded time: 40 derandomized examples per parser (23 tests); measured 26 s wall at 60
examples on the 2-core build machine at load ~2, 87 s at load ~15 (15 s of CPU).
"""

from __future__ import annotations

import io
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freehand3d.errors import Freehand3DError

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
_HANG_S = 30  # one parse of a < 2 kB file taking 30 s is a hang, not load (parses take < 0.05 s)
_EXAMPLES = 40

FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,  # the build machine is shared: per-example timing is noise; hangs are caught by _HANG_S
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    derandomize=True,  # CI reproducible: the same examples every run
    database=None,
)

_TOKENS = [b"nan", b"-1", b"0", b"1e308", b"-0", b"inf", b"\xff\xfe", b"\x00", b"\n", b" = ", b"99999999999",
           b"<", b">", b"\"", b",", b";", b"#", b"\r\n", b"   ", b"1.5", b"MET_UCHAR", b"MET_FLOAT", b"True"]


@contextmanager
def _no_hang():
    def _alarm(signum, frame):  # pragma: no cover - only on a hang
        raise TimeoutError(f"parser ran for more than {_HANG_S} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(_HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def _mutation(draw, template: bytes, header_len: int | None = None) -> bytes:
    """A few random edits of ``template``; positions favour the first ``header_len`` bytes (the text
    header of a file with binary pixel data) three times in four."""
    data = bytearray(template)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data += draw(st.binary(max_size=32))
            continue
        limit = len(data) - 1
        if header_len and draw(st.integers(0, 3)) > 0:
            limit = min(limit, header_len - 1)
        pos = draw(st.integers(0, limit))
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "token", "token"]))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:
            token = draw(st.sampled_from(_TOKENS))
            # replace a run of digits/word chars at pos with the token (changes a value, keeps the layout)
            end = pos
            while end < len(data) and end - pos < 24 and chr(data[end]).isalnum() | (data[end] in b".-+"):
                end += 1
            data[pos:end] = token
    return bytes(data)


_WORK: dict[str, Path] = {}


def _workdir() -> Path:
    if "dir" not in _WORK:
        _WORK["dir"] = Path(tempfile.mkdtemp(prefix="fh3d-fuzz-"))
    return _WORK["dir"]


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    if "dir" in _WORK:
        shutil.rmtree(_WORK.pop("dir"), ignore_errors=True)


def _check(parser, name: str, content: bytes) -> None:
    path = _workdir() / name
    path.write_bytes(content)
    try:
        with _no_hang():
            parser(path)
    except Freehand3DError:
        pass


def _tiny_sweep():
    from freehand3d.sweep import Sweep

    rng = np.random.default_rng(0)
    n = 3
    poses = np.repeat(np.eye(4)[None], n, axis=0)
    poses[:, 0, 3] = np.arange(n)
    image_to_probe = np.diag([0.2, 0.25, 1.0, 1.0])
    return Sweep(frames=rng.integers(0, 255, (n, 6, 8), dtype=np.uint8), spacing=(0.2, 0.25),
                 timestamps=np.arange(n) * 0.1, transforms={"ProbeToTracker": poses, "ReferenceToTracker": poses.copy()},
                 valid={"ProbeToTracker": np.array([True, False, True])}, image_to_probe=image_to_probe)


_TEMPLATES: dict[str, tuple[bytes, int]] = {}


def _template(name: str) -> tuple[bytes, int]:
    """(bytes of a small valid file, length of its text header) built once per test session."""
    if name not in _TEMPLATES:
        from freehand3d.io.plus_sequence import write_plus_sequence

        path = _workdir() / f"template-{name}"
        compress = name.startswith("z")
        write_plus_sequence(_tiny_sweep(), path, compress=compress)
        data = path.read_bytes()
        marker = b"ElementDataFile = LOCAL\n" if name.endswith(".mha") else b"\n\n"
        cut = data.find(marker)
        _TEMPLATES[name] = (data, len(data) if cut < 0 else cut + len(marker))
    return _TEMPLATES[name]


# --------------------------------------------------------------------------- PLUS sequences


@pytest.mark.parametrize("name", ["raw.igs.mha", "zlib.igs.mha", "raw.seq.nrrd", "zgzip.seq.nrrd"])
def test_plus_sequence_reader_survives_mutations(name):
    from freehand3d.io.plus_sequence import read_plus_header, read_plus_sequence

    template, header_len = _template(name)
    suffix = ".igs.mha" if name.endswith(".mha") else ".seq.nrrd"

    @FUZZ
    @given(content=_mutation(template, header_len))
    def run(content):
        _check(read_plus_sequence, "f" + suffix, content)
        _check(read_plus_header, "h" + suffix, content)

    run()


def test_plus_sequence_template_reads():
    """The templates themselves parse (else every mutation would only test the error path)."""
    from freehand3d.io.plus_sequence import read_plus_sequence

    for name in ["raw.igs.mha", "zlib.igs.mha", "raw.seq.nrrd", "zgzip.seq.nrrd"]:
        path = _workdir() / ("t" + name)
        path.write_bytes(_template(name)[0])
        assert read_plus_sequence(path).frames.shape == (3, 6, 8)


# --------------------------------------------------------------------------- PLUS XML

_XML_FILES = {
    "device_set": "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
    "volume_reconstruction": "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml",
    "segmentation": "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
    "calibration_results": "FreehandCalibration3NWires.results.xml",
}


def _xml_parser(kind):
    from freehand3d.io import plus_config, plus_segmentation, plus_volrec

    return {
        "device_set": plus_config.read_device_set,
        "volume_reconstruction": plus_volrec.read_volume_reconstruction,
        "segmentation": plus_segmentation.read_segmentation,
        "calibration_results": plus_config.read_plus_calibration_results,
    }[kind]


@pytest.mark.parametrize("kind", sorted(_XML_FILES))
def test_plus_xml_readers_survive_mutations(kind):
    parser = _xml_parser(kind)
    template = (DATA / _XML_FILES[kind]).read_bytes()
    parser(DATA / _XML_FILES[kind])  # the template itself parses

    @FUZZ
    @given(content=_mutation(template))
    def run(content):
        _check(parser, "config.xml", content)

    run()


# --------------------------------------------------------------------------- h5

_DTYPES = st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_, "S4"])


@st.composite
def _array(draw, shapes):
    shape = draw(st.sampled_from(shapes))
    dtype = draw(_DTYPES)
    if dtype == "S4":
        return np.full(shape, b"ab", dtype="S4")
    values = draw(st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 0.25]))
    with np.errstate(invalid="ignore"):
        arr = np.full(shape, values).astype(dtype) if np.isfinite(values) or np.dtype(dtype).kind == "f" else np.zeros(shape, dtype)
    if arr.ndim >= 2 and arr.shape[-2:] == (4, 4) and arr.dtype.kind in "fiu" and draw(st.booleans()):
        arr = np.broadcast_to(np.eye(4, dtype=arr.dtype), arr.shape).copy()  # valid poses, other keys random
    return arr


_H5_KEYS = {
    "dualtrack": {"images": [(3, 6, 8), (6, 8), (0, 6, 8), (3, 0, 8)], "tracking": [(3, 4, 4), (2, 4, 4), (3, 16), (4, 4)],
                  "spacing": [(3,), (2,), (1,), (4,), ()], "dimensions": [(2,), (3,), (1,), ()],
                  "pixel_to_image": [(4, 4), (3, 3), (16,)]},
    "tusrec": {"frames": [(3, 6, 8), (6, 8), (0, 6, 8)], "tforms": [(3, 4, 4), (2, 4, 4), (3, 3, 4), (4, 4)]},
}


@pytest.mark.parametrize("layout", sorted(_H5_KEYS))
def test_h5_readers_survive_random_content(layout):
    import h5py

    from freehand3d.io.dualtrack_h5 import read_dualtrack_h5
    from freehand3d.io.tusrec import read_tusrec

    parser = read_dualtrack_h5 if layout == "dualtrack" else read_tusrec
    keys = _H5_KEYS[layout]

    @FUZZ
    @given(content=st.fixed_dictionaries({}, optional={k: _array(shapes) for k, shapes in keys.items()}),
           as_group=st.sampled_from([None, *keys]))
    def run(content, as_group):
        path = _workdir() / f"{layout}.h5"
        with h5py.File(path, "w") as f:
            for key, arr in content.items():
                if key == as_group:
                    f.create_group(key)
                else:
                    f.create_dataset(key, data=arr)
        try:
            with _no_hang():
                parser(path)
        except Freehand3DError:
            pass

    run()


@pytest.mark.parametrize("layout", ["dualtrack", "tusrec"])
def test_h5_readers_survive_byte_mutations(layout):
    from freehand3d.io.dualtrack_h5 import read_dualtrack_h5, write_dualtrack_h5
    from freehand3d.io.tusrec import read_tusrec, write_tusrec

    path = _workdir() / f"template-{layout}.h5"
    if layout == "dualtrack":
        write_dualtrack_h5(_tiny_sweep(), path, compression=None)
        parser = read_dualtrack_h5
    else:
        write_tusrec(_tiny_sweep(), path, calib_path=_workdir() / "calib_matrix.csv")
        parser = read_tusrec
    template = path.read_bytes()

    @FUZZ
    @given(content=_mutation(template, header_len=min(len(template), 4096)))
    def run(content):
        _check(parser, f"m-{layout}.h5", content)

    run()


# --------------------------------------------------------------------------- npz


def _npz_parsers():
    from freehand3d.simulate._truth import load_truth
    from freehand3d.simulate.rf import load_ground_truth, load_rf

    return {"truth": load_truth, "rf": load_rf, "ground_truth": load_ground_truth}


_NPZ_KEYS = {
    "truth": {"poses": [(3, 4, 4), (4, 4)], "image_to_probe": [(4, 4), (3,)], "spacing": [(2,), ()]},
    "rf": {"rf": [(2, 8, 4), (8, 4), (8,), ()], "tx_angle": [(), (2,)], "t0": [()], "probe_n_elements": [(), (2,)],
           "probe_pitch": [()], "probe_f0": [()], "probe_c": [()], "probe_fs": [()]},
    "ground_truth": {"ListPos": [(2, 3, 4), (2, 4), (2, 2, 4), ()], "wavelength": [(), (2,)], "units": [()]},
}


@pytest.mark.parametrize("kind", sorted(_NPZ_KEYS))
def test_npz_readers_survive_random_content(kind):
    parser = _npz_parsers()[kind]
    keys = _NPZ_KEYS[kind]

    @FUZZ
    @given(content=st.fixed_dictionaries({}, optional={k: _array(shapes) for k, shapes in keys.items()}),
           mutate=st.data())
    def run(content, mutate):
        buf = io.BytesIO()
        np.savez(buf, **content)
        data = buf.getvalue()
        if mutate.draw(st.booleans()):
            data = mutate.draw(_mutation(data))
        _check(parser, f"{kind}.npz", data)

    run()


def test_empty_npz_is_an_input_error(tmp_path):
    """An empty (0-byte) .npz: numpy raises EOFError, which click would turn into a bare 'Aborted.'."""
    for kind, parser in _npz_parsers().items():
        path = tmp_path / f"{kind}.npz"
        path.write_bytes(b"")
        with pytest.raises(Freehand3DError, match="npz"):
            parser(path)


# --------------------------------------------------------------------------- .tfm

def test_itk_transform_reader_survives_mutations():
    from freehand3d.io.transforms import read_itk_transform, read_slicer_transform, write_itk_transform

    path = _workdir() / "template.tfm"
    write_itk_transform(path, np.array([[0, -1, 0, 3], [1, 0, 0, -2.5], [0, 0, 1, 7], [0, 0, 0, 1]], float))
    template = path.read_bytes()

    @FUZZ
    @given(content=_mutation(template))
    def run(content):
        _check(read_itk_transform, "t.tfm", content)
        _check(read_slicer_transform, "s.tfm", content)

    run()


# --------------------------------------------------------------------------- CSV


def _csv_cases():
    from freehand3d.batch import read_sweep_csv as read_batch_csv
    from freehand3d.io.tusrec import read_tusrec_calibration
    from freehand3d.tracking.data import read_sweep_csv as read_train_csv
    from freehand3d.tracking.workflows import _read_landmarks
    from freehand3d.ulm.files import read_points_csv

    calib = (b"Pixel to image scaling\n0.2,0,0,0\n0,0.2,0,0\n0,0,1,0\n0,0,0,1\n"
             b"Image to tool\n1,0,0,1.5\n0,1,0,-2\n0,0,1,3\n0,0,0,1\n")
    return {
        "tusrec_calibration": (read_tusrec_calibration, "calib_matrix.csv", calib),
        "batch_sweeps": (read_batch_csv, "sweeps.csv", b"sweep_id,path\nsw1,a.igs.mha\nsw2,sub/b.h5\n"),
        "train_sweeps": (read_train_csv, "train.csv", b"sweep_id,path,split\ns1,a.h5,train\ns2,b.h5,val\n"),
        "ulm_points": (read_points_csv, "points.csv", b"# wavelength_mm=0.308\nframe,x_mm,z_mm\n0,1.5,20.25\n1,-3,21\n"),
        "landmarks": (_read_landmarks, "landmarks.csv", b"0,10,20\n1,11.5,22\n"),
    }


@pytest.mark.parametrize("kind", ["tusrec_calibration", "batch_sweeps", "train_sweeps", "ulm_points", "landmarks"])
def test_csv_readers_survive_mutations(kind):
    parser, name, template = _csv_cases()[kind]
    with tempfile.TemporaryDirectory() as d:  # the template itself parses
        (Path(d) / name).write_bytes(template)
        try:
            parser(Path(d) / name)
        except Freehand3DError as exc:  # the sweep lists name files that do not exist here
            assert kind in ("train_sweeps",), exc

    @FUZZ
    @given(content=_mutation(template))
    def run(content):
        _check(parser, name, content)

    run()
