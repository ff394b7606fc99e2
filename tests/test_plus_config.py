"""PLUS device-set XML, PLUS calibration results XML and ITK .tfm files, against the bundled PLUS data."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import freehand3d
from freehand3d import geometry
from freehand3d.errors import ConfigError, Freehand3DError, InputError
from freehand3d.io.plus_config import (
    DeviceSet,
    format_matrix,
    parse_matrix,
    read_device_set,
    read_plus_calibration_results,
    write_device_set,
)
from freehand3d.io.transforms import (
    read_itk_transform,
    read_slicer_transform,
    write_itk_transform,
    write_slicer_transform,
)
from freehand3d.phantoms import PHANTOM_DIR, load_phantom

PLUS = Path(freehand3d.__file__).resolve().parent / "data" / "plus"
FCAL12 = PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml"
FCAL20_SIM = PLUS / "phantom-configs" / "PlusDeviceSet_fCal_Sim_SpatialCalibration_2.0.xml"
FCAL20_L14 = PLUS / "phantom-configs" / "PlusDeviceSet_fCal_Ultrasonix_L14-5_Ascension3DG_2.0.xml"
FCAL3 = PLUS / "phantom-configs" / "PlusDeviceSet_fCal_Ultrasonix_C5-2_NDIPolaris_fCal3.xml"
VOLREC = sorted(PLUS.glob("PlusDeviceSet_VolumeReconstructionOnly_*.xml"))
RESULTS = PLUS / "FreehandCalibration3NWires.results.xml"


def xml_attr_numbers(path: Path, tag: str, **match) -> list[float]:
    """Numbers of the first element ``tag`` whose attributes match, read with plain ElementTree."""
    for elem in ET.parse(path).getroot().iter(tag):
        if all(elem.get(k) == v for k, v in match.items()):
            return [float(v) for v in (elem.get("Matrix") or elem.get("Position")).split()]
    raise AssertionError(f"no {tag} {match} in {path}")


def same_geometry(a, b) -> bool:
    return (
        [w.name for w in a.wires] == [w.name for w in b.wires]
        and all(np.array_equal(x.front, y.front) and np.array_equal(x.back, y.back) for x, y in zip(a.wires, b.wires))
        and a.landmarks.keys() == b.landmarks.keys()
        and all(np.array_equal(a.landmarks[k], b.landmarks[k]) for k in a.landmarks)
    )


# ---------------------------------------------------------------------------- device sets


@pytest.mark.parametrize(
    "path, version, n_landmarks, has_registration",
    [(FCAL12, "1.2", 8, True), (FCAL20_SIM, "2.0", 8, True), (FCAL20_L14, "2.0", 8, False), (FCAL3, "3.0", 12, False)],
)
def test_phantom_from_every_device_set(path, version, n_landmarks, has_registration):
    ds = read_device_set(path)
    phantom = ds.phantom
    assert ds.phantom_description["Version"] == version
    assert len(phantom.nwires) == 3 and len(phantom.wires) == 9
    assert len(phantom.landmarks) == n_landmarks
    # every wire end point is what the XML says
    for wire in phantom.wires:
        elem = next(e for e in ET.parse(path).getroot().iter("Wire") if e.get("Name") == wire.name)
        assert wire.front.tolist() == [float(v) for v in elem.get("EndPointFront").split()]
        assert wire.back.tolist() == [float(v) for v in elem.get("EndPointBack").split()]
    if has_registration:
        expected = np.reshape(xml_attr_numbers(path, "Transform", From="Phantom", To="Reference"), (4, 4))
        np.testing.assert_array_equal(phantom.phantom_to_reference, expected)
        np.testing.assert_allclose(ds.transform("ReferenceToPhantom") @ expected, np.eye(4), atol=1e-12)  # measured max |diff| 1.4e-14 over 2 calls
    else:
        assert phantom.phantom_to_reference is None
    # the fixed transform every fCal device set has
    np.testing.assert_array_equal(ds.coordinate_definitions["ImageToTransducerOriginPixel"].matrix[:3, 3], [-410, 5, 0])
    assert ds.device_set_name.startswith("fCal")
    assert load_phantom(path).wires[0].name == phantom.wires[0].name


def test_fcal12_details():
    ds = read_device_set(FCAL12)
    ptr = ds.coordinate_definitions["PhantomToReference"]
    assert ptr.error == pytest.approx(0.404711) and ptr.date == "012712_152104"  # measured: exact (max |diff| 0, AMD EPYC)
    assert geometry.is_rigid(ptr.matrix, atol=1e-4)  # measured deviation 8.6e-7 (the file's 7 digits; AMD EPYC)
    assert ds.segmentation is not None and ds.volume_reconstruction is not None
    assert same_geometry(ds.phantom, load_phantom("fcal-1.2"))


@pytest.mark.parametrize("path", VOLREC)
def test_volume_reconstruction_device_sets(path):
    ds = read_device_set(path)
    assert ds.phantom is None
    itp = ds.coordinate_definitions["ImageToProbe"].matrix
    np.testing.assert_array_equal(itp.ravel(), xml_attr_numbers(path, "Transform", From="Image", To="Probe"))
    assert ds.volume_reconstruction is not None
    with pytest.raises(ConfigError, match="PhantomDefinition"):
        load_phantom(path)


@pytest.mark.parametrize(
    "yaml_name, xmls", [("fcal-1.2", [FCAL12]), ("fcal-2.0", [FCAL20_SIM, FCAL20_L14]), ("fcal-3.0", [FCAL3])]
)
def test_shipped_yaml_equals_device_set(yaml_name, xmls):
    shipped = load_phantom(yaml_name)
    for xml in xmls:
        assert same_geometry(shipped, read_device_set(xml).phantom), xml.name


def test_yaml_export_recipe_of_the_readme(tmp_path):
    data = read_device_set(FCAL3).phantom.to_dict()
    out = tmp_path / "triple-n.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    assert same_geometry(load_phantom(out), load_phantom("fcal-3.0"))
    assert (PHANTOM_DIR / "README.md").is_file()


def test_write_device_set_round_trip(tmp_path):
    result = read_plus_calibration_results(RESULTS).image_to_probe
    out = tmp_path / "calibrated.xml"
    registration = geometry.params_to_matrix([1.5, -2.25, 3.0, 10.0, -20.0, 30.0], "xyz", degrees=True)
    write_device_set(FCAL12, out, {"ImageToProbe": result, "PhantomToReference": registration}, error=0.75, date="112226_040000")
    ds = read_device_set(out)
    itp = ds.coordinate_definitions["ImageToProbe"]
    np.testing.assert_array_equal(itp.matrix, result)
    assert itp.error == 0.75 and itp.date == "112226_040000"
    # replaced in place (no duplicate), with full float64 precision
    root = ET.parse(out).getroot()
    assert len([t for t in root.iter("Transform") if t.get("From") == "Phantom" and t.get("To") == "Reference"]) == 1
    np.testing.assert_array_equal(ds.phantom.phantom_to_reference, registration)
    # everything else is kept
    original = read_device_set(FCAL12)
    assert same_geometry(ds.phantom, original.phantom)
    np.testing.assert_array_equal(ds.coordinate_definitions["StylusTipToStylus"].matrix, original.coordinate_definitions["StylusTipToStylus"].matrix)
    assert root.find("fCal").attrib == ET.parse(FCAL12).getroot().find("fCal").attrib
    assert ds.device_set_name == original.device_set_name
    # writing from a DeviceSet object, with no error: the stale Error attribute goes
    write_device_set(ds, out, {"PhantomToReference": np.eye(4)})
    again = read_device_set(out)
    assert again.coordinate_definitions["PhantomToReference"].error is None
    assert again.coordinate_definitions["ImageToProbe"].error == 0.75
    assert not list(tmp_path.glob(".tmp-*"))


def test_write_device_set_creates_coordinate_definitions(tmp_path):
    src = tmp_path / "bare.xml"
    src.write_text('<PlusConfiguration version="2.1"><DataCollection/></PlusConfiguration>')
    write_device_set(src, src, {"ImageToProbe": np.diag([0.1, 0.2, 0.3, 1.0])})
    assert read_device_set(src).transform("ImageToProbe")[2, 2] == 0.3


def test_matrix_text():
    m = geometry.params_to_matrix([1e-7, 123.456, -7, 0.1, 0.2, 0.3], "xyz")
    np.testing.assert_array_equal(parse_matrix(format_matrix(m), "m"), m)
    with pytest.raises(ConfigError, match="16 numbers, got 15"):
        parse_matrix(" ".join(["1"] * 15), "ImageToProbe")
    with pytest.raises(ConfigError, match="not a number"):
        parse_matrix("1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x", "ImageToProbe")


# ---------------------------------------------------------------------------- bad files


def test_malformed_xml_gives_line_number(tmp_path):
    bad = tmp_path / "bad.xml"
    text = FCAL12.read_text()
    bad.write_text(text.replace("</Pattern>", "</Patern>", 1))
    with pytest.raises(ConfigError) as err:
        read_device_set(bad)
    assert str(bad) in str(err.value) and "line" in err.value.problem
    with pytest.raises(ConfigError, match="not found"):
        read_device_set(tmp_path / "missing.xml")
    bad.write_text("<Something/>")
    with pytest.raises(ConfigError, match="PlusConfiguration"):
        read_device_set(bad)


@pytest.mark.parametrize(
    "old, new, match",
    [
        ('EndPointFront="20.0 0.0 10.0"', 'EndPointFront="20.0 0.0"', "EndPointFront"),
        ('Matrix="1 0 0 -410 0 1 0 5 0 0 1 0 0 0 0 1"', 'Matrix="1 0 0 -410 0 1 0 5 0 0 1 0 0 0 0"', "16 numbers"),
        ('Error="0.404711"', 'Error="big"', "Error"),
        ('<Wire Name="3:J2_j2" EndPointFront="45.0 0.0 10.0" EndPointBack="45.0 40.0 10.0" />', "", "exactly 3 wires"),
        ('Position="95.0 5.0 15.0"', 'Position="95.0 nan 15.0"', "Position"),
    ],
)
def test_bad_values_name_the_problem(tmp_path, old, new, match):
    text = FCAL12.read_text()
    assert old in text
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=match) as err:
        read_device_set(bad)
    assert err.value.path == str(bad)


def _mutate(data: bytes, kind: int, position: float, payload: bytes, number_count: int) -> bytes:
    """One of: byte flip, truncation, attribute edit, wrong number of matrix values, byte insertion."""
    at = int(position * (len(data) - 1))
    if kind == 0:
        return data[:at] + bytes([data[at] ^ (payload[0] if payload else 0xFF) or 1]) + data[at + 1 :]
    if kind == 1:
        return data[:at]
    if kind == 2:
        # replace the value of the attribute nearest to `at` with random bytes
        start = data.find(b'="', at)
        end = data.find(b'"', start + 2) if start >= 0 else -1
        if start < 0 or end < 0:
            return data + payload
        return data[: start + 2] + payload + data[end:]
    if kind == 3:
        start = data.find(b'Matrix="', at)
        if start < 0:
            start = data.find(b'Matrix="')
        end = data.find(b'"', start + 8)
        values = b" ".join(b"%d" % (i % 3) for i in range(number_count))
        return data[: start + 8] + values + data[end:]
    return data[:at] + payload + data[at:]


DEVICE_SET_BYTES = FCAL12.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.integers(0, 4),
    position=st.floats(0, 1),
    payload=st.binary(min_size=0, max_size=12),
    number_count=st.integers(0, 20),
)
def test_fuzz_device_set_only_freehand3d_errors(tmp_path, kind, position, payload, number_count):
    path = tmp_path / "fuzz.xml"
    path.write_bytes(_mutate(DEVICE_SET_BYTES, kind, position, payload, number_count))
    try:
        ds = read_device_set(path)
    except Freehand3DError as exc:
        assert exc.path == str(path)
        return
    assert isinstance(ds, DeviceSet)


def _small_results_xml() -> bytes:
    """The real report cut down to 3 frames per section, so fuzzing stays fast."""
    root = ET.parse(RESULTS).getroot()
    for section in root.iter():
        if section.tag in ("ValidationData", "CalibrationData"):
            for frame in section.findall("Frame")[3:]:
                section.remove(frame)
    return ET.tostring(root)


RESULTS_SMALL = _small_results_xml()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.integers(0, 4),
    position=st.floats(0, 1),
    payload=st.binary(min_size=0, max_size=12),
    number_count=st.integers(0, 20),
)
def test_fuzz_results_only_freehand3d_errors(tmp_path, kind, position, payload, number_count):
    path = tmp_path / "fuzz.results.xml"
    path.write_bytes(_mutate(RESULTS_SMALL, kind, position, payload, number_count))
    try:
        read_plus_calibration_results(path)
    except Freehand3DError as exc:
        assert exc.path == str(path)


# ---------------------------------------------------------------------------- calibration results


@pytest.fixture(scope="module")
def results():
    return read_plus_calibration_results(RESULTS)


def test_results_calibration_and_statistics(results):
    np.testing.assert_array_equal(
        results.image_to_probe.ravel(), xml_attr_numbers(RESULTS, "Transform", From="Image", To="Probe")
    )
    assert results.reprojection_3d == {
        "validation_mean_mm": 1.24684,
        "validation_std_mm": 0.493905,
        "calibration_mean_mm": 1.15532,
        "calibration_std_mm": 0.519517,
    }
    assert len(results.reprojection_2d) == 9
    np.testing.assert_array_equal(results.reprojection_2d["5:F3_j3"]["calibration_std_px"], [11.9869, 3.91676])


def test_results_per_frame_arrays(results):
    val, cal = results.validation, results.calibration
    # the two recordings of the bundled data: 94 validation and 188 calibration frames
    assert len(val) == 94 and len(cal) == 188
    assert val.points.shape == (94, 9, 2) and cal.points.shape == (188, 9, 2)
    assert set(val.status) == {"OK"} and not np.isnan(cal.points).any()
    np.testing.assert_array_equal(cal.index, np.arange(188))
    np.testing.assert_array_equal(val.points[0, 0], [584.51, 286.834])
    assert set(cal.transforms) == {"ProbeToTracker", "ReferenceToTracker", "StylusToTracker"}
    assert cal.valid["ProbeToTracker"].all()
    assert np.all(np.diff(val.timestamps) > 0)
    assert geometry.is_rigid(cal.transforms["ProbeToTracker"], atol=1e-4).all()  # measured max deviation 1.2e-6 (AMD EPYC)


def test_results_reproduce_plus_error_statistics(results):
    """The per-frame numbers are consistent with PLUS's own summary: its 3D error of a middle-wire point is
    |ImageToProbe · image point - probe point|, and its statistics are over the best 95 % of the errors."""
    cal = results.calibration
    distance = np.linalg.norm(
        geometry.apply(results.image_to_probe, cal.middle_wires_image) - cal.middle_wires_probe, axis=-1
    )
    middle = [1, 4, 7]  # the diagonal wires
    np.testing.assert_allclose(distance, cal.errors_3d_mm[:, middle], atol=1e-3)  # measured max |diff| 1.1e-04
    for section, key in ((cal, "calibration"), (results.validation, "validation")):
        errors = np.sort(section.errors_3d_mm[:, middle].ravel())
        best = errors[: int(round(0.95 * errors.size))]
        # measured max |diff| 4.1e-06 (rel 3.6e-06) (AMD EPYC); tolerance 2.43x that
        assert best.mean() == pytest.approx(results.reprojection_3d[f"{key}_mean_mm"], abs=1e-5)
        # measured max |diff| 3.8e-07 (rel 7.7e-07) (AMD EPYC); tolerance 26.3x that
        assert best.std() == pytest.approx(results.reprojection_3d[f"{key}_std_mm"], abs=1e-5)


def test_results_wrong_root(tmp_path):
    with pytest.raises(ConfigError, match="calibration report"):
        read_plus_calibration_results(FCAL12)


# ---------------------------------------------------------------------------- ITK transform files


def _affine(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = geometry.params_to_matrix(np.concatenate([rng.uniform(-100, 100, 3), rng.uniform(-3, 3, 3)]), "xyz")
    return m @ geometry.scaling(rng.uniform(0.05, 2, 3))


@pytest.mark.parametrize("lps", [False, True])
def test_tfm_round_trip(tmp_path, lps):
    m = _affine(1)
    path = tmp_path / "t.tfm"
    write_itk_transform(path, m, lps=lps)
    np.testing.assert_array_equal(read_itk_transform(path, lps=lps), m)
    lines = path.read_text().splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert lines[2] == "Transform: AffineTransform_double_3_3" and lines[4] == "FixedParameters: 0 0 0"


def test_tfm_lps_flips_x_and_y(tmp_path):
    m = _affine(2)
    write_itk_transform(tmp_path / "ras.tfm", m, lps=True)
    raw = read_itk_transform(tmp_path / "ras.tfm")
    point = np.array([10.0, -20.0, 30.0])
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(geometry.apply(raw, point * flip), geometry.apply(m, point) * flip, atol=1e-12)  # measured: exact (max |diff| 0)


def test_simpleitk_reads_our_file_and_maps_points_the_same(tmp_path):
    import SimpleITK as sitk

    m = _affine(3)
    path = tmp_path / "ours.tfm"
    write_itk_transform(path, m)
    transform = sitk.ReadTransform(str(path))
    for point in ([0.0, 0.0, 0.0], [12.5, -3.25, 40.0], [-100.0, 55.0, 7.0]):
        np.testing.assert_allclose(transform.TransformPoint(point), geometry.apply(m, point), atol=1e-9)  # measured max |diff| 7.1e-15 over 3 calls


def test_we_read_what_simpleitk_writes_with_a_centre(tmp_path):
    import SimpleITK as sitk

    m = _affine(4)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(m[:3, :3].ravel().tolist())
    affine.SetTranslation(m[:3, 3].tolist())
    affine.SetCenter([5.0, -7.0, 11.0])  # ITK: y = M (x - c) + c + t
    path = tmp_path / "sitk.tfm"
    sitk.WriteTransform(affine, str(path))
    ours = read_itk_transform(path)
    point = [3.0, 4.0, -5.0]
    np.testing.assert_allclose(geometry.apply(ours, point), affine.TransformPoint(point), atol=1e-9)  # measured max |diff| 1.4e-14


def test_slicer_transform_is_inverse_in_lps(tmp_path):
    to_parent = _affine(5)
    path = tmp_path / "slicer.tfm"
    write_slicer_transform(path, to_parent)
    np.testing.assert_allclose(read_slicer_transform(path), to_parent, atol=1e-9)  # measured max |diff| 1.4e-14
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(read_itk_transform(path), flip @ np.linalg.inv(to_parent) @ flip, atol=1e-9)  # measured max |diff| 1.1e-13


def test_bad_tfm_files(tmp_path):
    path = tmp_path / "bad.tfm"
    path.write_text("hello\n")
    with pytest.raises(InputError, match="Insight"):
        read_itk_transform(path)
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\nParameters: 1 0 0\nFixedParameters: 0 0 0\n")
    with pytest.raises(InputError, match="12"):
        read_itk_transform(path)
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\nParameters: 1\n")
    with pytest.raises(InputError, match="unsupported"):
        read_itk_transform(path)
    with pytest.raises(ValueError):
        write_itk_transform(path, np.full((4, 4), np.nan))
