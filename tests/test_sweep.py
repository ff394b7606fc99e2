"""The Sweep data model: validation, transform composition with validity, subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import freehand3d
from freehand3d import geometry
from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

PLUS = Path(freehand3d.__file__).resolve().parent / "data" / "plus"


def poses(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return geometry.params_to_matrix(np.column_stack([rng.uniform(-100, 100, (n, 3)), rng.uniform(-3, 3, (n, 3))]), "xyz")


def make_sweep(n: int = 4, **kwargs) -> Sweep:
    base = dict(
        frames=np.zeros((n, 6, 8), np.uint8),
        transforms={"ProbeToTracker": poses(n, 1), "ReferenceToTracker": poses(n, 2)},
        image_to_probe=geometry.scaling([0.1, 0.2, 1.0]) @ geometry.translation([1, 2, 0]),
    )
    base.update(kwargs)
    return Sweep(**base)


# ---------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64]
)
@pytest.mark.parametrize("components", [1, 3, 4])
def test_every_pixel_type_and_component_count_is_kept(dtype, components):
    shape = (2, 3, 4) if components == 1 else (2, 3, 4, components)
    frames = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    sweep = Sweep(frames=frames, spacing=(0.1, 0.2))
    assert sweep.frames is frames or np.shares_memory(sweep.frames, frames)  # no conversion, no copy
    assert sweep.pixel_type == np.dtype(dtype) and sweep.n_components == components
    assert sweep.frame_shape == (3, 4)
    sub = sweep.subset([1])
    assert sub.frames.dtype == np.dtype(dtype) and sub.frames.shape == (1, *shape[1:])
    assert np.dtype(dtype).name in repr(sweep)


@pytest.mark.parametrize("dtype", [bool, np.int64, np.uint64, np.float16, np.complex64, object])
def test_unsupported_pixel_types_are_rejected(dtype):
    with pytest.raises(InputError, match="pixel type"):
        Sweep(frames=np.zeros((2, 3, 4), dtype))


def test_big_endian_frames_become_native():
    frames = np.arange(24, dtype=">u2").reshape(2, 3, 4)
    sweep = Sweep(frames=frames)
    assert sweep.frames.dtype == np.uint16 and sweep.frames.dtype.isnative
    np.testing.assert_array_equal(sweep.frames, frames)


def test_frame_shapes():
    assert Sweep(frames=np.zeros((3, 4), np.uint8)).frames.shape == (1, 3, 4)
    assert Sweep(frames=np.zeros((2, 3, 4, 1), np.uint8)).frames.shape == (2, 3, 4)  # one component
    for shape in [(5,), (1, 2, 3, 4, 5)]:
        with pytest.raises(InputError, match=r"\(N, H, W\)"):
            Sweep(frames=np.zeros(shape, np.uint8))
    sweep = make_sweep(3)
    assert len(sweep) == sweep.n_frames == 3 and sweep.frame_shape == (6, 8)
    np.testing.assert_array_equal(sweep.timestamps, [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timestamps": [0.0, 1.0]}, "timestamps"),
        ({"spacing": (0.0, 0.1)}, "spacing"),
        ({"spacing": (np.nan, 0.1)}, "spacing"),
        ({"transforms": {"ProbeToTracker": np.zeros((3, 4, 4))}}, "ProbeToTracker"),
        ({"transforms": {"ProbeToTracker": np.zeros((4, 3, 3))}}, "ProbeToTracker"),
        ({"valid": {"StylusToTracker": np.ones(4, bool)}}, "unknown"),
        ({"valid": {"ProbeToTracker": np.ones(3, bool)}}, "status"),
        ({"image_to_probe": np.full((4, 4), np.nan)}, "image_to_probe"),
        ({"image_to_probe": np.eye(3)}, "image_to_probe"),
        ({"frame_fields": {"ImageStatus": ["OK"] * 3}}, "ImageStatus"),
    ],
)
def test_constructor_rejects_inconsistent_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_sweep(4, **kwargs)


def test_error_names_the_source():
    with pytest.raises(InputError) as err:
        Sweep(frames=np.zeros((2, 3, 4), np.int64), source="scan.h5")
    assert err.value.path == "scan.h5"


def test_three_value_spacing_is_an_input_error():
    with pytest.raises(InputError, match="spacing"):
        make_sweep(4, spacing=(0.1, 0.1, 1.0))


def test_bad_transform_name_is_an_input_error():
    with pytest.raises(InputError):
        make_sweep(4, transforms={"Probe2Tracker": poses(4, 3)}, source="file.mha")


def test_single_matrix_is_repeated_and_nan_marks_invalid():
    probe = poses(4, 1)
    probe[2, 0, 3] = np.nan
    sweep = make_sweep(4, transforms={"ProbeToTracker": probe, "ReferenceToTracker": np.eye(4)})
    assert sweep.transforms["ReferenceToTracker"].shape == (4, 4, 4)
    assert sweep.valid["ProbeToTracker"].tolist() == [True, True, False, True]
    # a NaN matrix is invalid whatever its status says
    sweep = make_sweep(4, transforms={"ProbeToTracker": probe}, valid={"ProbeToTracker": np.ones(4, bool)})
    assert not sweep.valid["ProbeToTracker"][2]


def test_image_status():
    sweep = make_sweep(3, frame_fields={"ImageStatus": ["OK", "INVALID", " ok "]})
    assert sweep.image_valid.tolist() == [True, False, True]
    assert make_sweep(2).image_valid.all()


# ---------------------------------------------------------------------------- transforms


def test_image_to_reference_composition():
    sweep = make_sweep(4)
    expected = geometry.image_to_reference(
        sweep.transforms["ProbeToTracker"], sweep.transforms["ReferenceToTracker"], sweep.image_to_probe
    )
    # measured max |diff| 2.8e-14 (rel 1.0e-15) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(sweep.image_to("Reference"), expected, atol=1e-12)
    mats, ok = sweep.transform("ImageToReferenceTransform")  # PLUS's field-name suffix is accepted
    np.testing.assert_allclose(mats, expected, atol=1e-12)  # measured max |diff| 2.8e-14 (rel 1.0e-15) (AMD EPYC); tolerance > 1000x that
    assert ok.all()
    with pytest.raises(InputError, match="Stylus"):
        sweep.transform("StylusToReference")


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(bool, 6),
    hnp.arrays(bool, 6),
    st.sampled_from(["ImageToReference", "ProbeToReference", "ReferenceToImage", "ImageToTracker", "TrackerToProbe"]),
)
def test_validity_is_the_and_of_the_links_used(probe_ok, reference_ok, name):
    sweep = make_sweep(6, valid={"ProbeToTracker": probe_ok, "ReferenceToTracker": reference_ok})
    _, ok = sweep.transform(name)
    frames = set(geometry.split_transform_name(name))
    expected = np.ones(6, bool)
    if frames & {"Image", "Probe"}:
        expected &= probe_ok
    if "Reference" in frames:
        expected &= reference_ok
    np.testing.assert_array_equal(ok, expected)


def test_set_transform():
    sweep = make_sweep(3)
    bad = poses(3, 5)
    bad[0] = np.nan
    sweep.set_transform("StylusToTracker", bad, valid=[True, True, False])
    assert sweep.valid["StylusToTracker"].tolist() == [False, True, False]
    sweep.set_transform("PhantomToReference", np.eye(4))
    assert sweep.transform("PhantomToTracker")[0].shape == (3, 4, 4)
    with pytest.raises(ValueError):
        sweep.set_transform("ProbeToTracker", np.zeros((2, 4, 4)))


def test_real_plus_poses_put_segmented_wires_on_the_phantom_wires():
    """Real data through the whole chain: PLUS's per-frame poses and segmented middle-wire points (results
    XML), its ImageToProbe, and the device set's PhantomToReference. Each middle-wire point, mapped by
    Sweep.transform("ImageToPhantom"), must lie within PLUS's reported 3D error of its phantom wire."""
    from freehand3d.io.plus_config import read_device_set, read_plus_calibration_results

    results = read_plus_calibration_results(PLUS / "FreehandCalibration3NWires.results.xml")
    device_set = read_device_set(PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")
    frames = results.calibration
    n = len(frames)
    sweep = Sweep(
        frames=np.zeros((n, 2, 2), np.uint8),  # pixels are not needed, only poses
        timestamps=frames.timestamps,
        transforms=frames.transforms,
        valid=frames.valid,
        image_to_probe=results.image_to_probe,
    )
    sweep.set_transform("PhantomToReference", device_set.phantom.phantom_to_reference)
    image_to_phantom, ok = sweep.transform("ImageToPhantom")
    assert ok.all()
    for column in (1, 4, 7):  # the diagonal (middle) wire of each N
        points = np.column_stack([frames.points[:, column], np.zeros(n)])
        distance = device_set.phantom.wires[column].distance_to(geometry.apply(image_to_phantom, points))
        assert (distance <= frames.errors_3d_mm[:, column] + 1e-3).all()
        assert distance.mean() < 1.2  # mm: the points really are on the wires, not merely bounded (measured 0.46-0.78 (AMD EPYC))


# ---------------------------------------------------------------------------- subsets


@pytest.mark.parametrize("indices", [slice(1, 3), np.array([2, 0]), np.array([True, False, True, False])])
def test_subset(indices):
    sweep = make_sweep(4, timestamps=[10.0, 11.0, 12.0, 13.0], frame_fields={"ImageStatus": ["OK", "OK", "INVALID", "OK"]},
                       metadata={"UltrasoundImageOrientation": "MF"}, spacing=(0.1, 0.2))
    sweep.frames[:] = np.arange(4, dtype=np.uint8)[:, None, None]
    sweep.valid["ProbeToTracker"][1] = False
    sub = sweep.subset(indices)
    idx = np.arange(4)[indices]
    assert len(sub) == len(idx)
    np.testing.assert_array_equal(sub.frames[:, 0, 0], idx)
    np.testing.assert_array_equal(sub.timestamps, sweep.timestamps[idx])
    np.testing.assert_array_equal(sub.transforms["ProbeToTracker"], sweep.transforms["ProbeToTracker"][idx])
    np.testing.assert_array_equal(sub.valid["ProbeToTracker"], sweep.valid["ProbeToTracker"][idx])
    assert sub.frame_fields["ImageStatus"] == [sweep.frame_fields["ImageStatus"][i] for i in idx]
    assert sub.metadata == sweep.metadata and sub.spacing == sweep.spacing
    # a subset is a copy
    sub.frames[:] = 99
    sub.transforms["ProbeToTracker"][:] = 0
    sub.metadata["UltrasoundImageOrientation"] = "UN"
    assert sweep.frames.max() == 3 and sweep.metadata["UltrasoundImageOrientation"] == "MF"
    assert np.abs(sweep.transforms["ProbeToTracker"]).sum() > 0


def test_copy_and_repr():
    sweep = make_sweep(2)
    clone = sweep.copy()
    np.testing.assert_array_equal(clone.image_to("Reference"), sweep.image_to("Reference"))
    assert "2 frames 8x6" in repr(sweep) and "calibrated=True" in repr(sweep)


# ---------------------------------------------------------------------------- to_uint8


def test_to_uint8_dtype_range_inverts_a_full_range_scaling():
    from freehand3d.sweep import to_uint8

    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert to_uint8(u8) is u8  # uint8 passes unchanged
    np.testing.assert_array_equal(to_uint8(u8.astype(np.uint16) * 257), u8)
    np.testing.assert_array_equal(to_uint8((u8.astype(np.int32) * 257 - 32768).astype(np.int16)), u8)
    np.testing.assert_array_equal(to_uint8(u8.astype(np.uint32) * 16843009), u8)


def test_to_uint8_is_one_map_for_the_whole_sweep_not_per_frame():
    """The issue's example: two sources at 1000..1003 and 1029..1032 must not both become 0, 1, 2, 3."""
    from freehand3d.sweep import to_uint8

    frames = np.array([[[1000, 1001, 1002, 1003]], [[1029, 1030, 1031, 1032]]], np.uint16)
    out = to_uint8(frames, "minmax")
    np.testing.assert_array_equal(out[:, 0, 0], [0, 231])  # round(29 * 255 / 32) = round(231.1)
    assert out.max() == 255 and len(set(out.ravel())) == 8
    win = to_uint8(frames.astype(np.float32), "window", (1000, 1032))
    np.testing.assert_array_equal(win, out)
    clipped = to_uint8(frames, "window", (1001, 1002))
    np.testing.assert_array_equal(clipped[0, 0], [0, 0, 255, 255])


def test_to_uint8_colour_and_bad_requests():
    from freehand3d.sweep import to_uint8

    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[0, 0, 0] = [255, 0, 0]
    rgb[0, 1, 1] = [255, 255, 255]
    grey = to_uint8(rgb)
    assert grey.shape == (1, 2, 2) and grey[0, 0, 0] == 76 and grey[0, 1, 1] == 255  # 0.299 * 255
    with pytest.raises(InputError, match="window"):
        to_uint8(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="low < high"):
        to_uint8(np.zeros((1, 2, 2), np.float32), "window", (5, 5))
    with pytest.raises(ValueError, match="unknown"):
        to_uint8(np.zeros((1, 2, 2), np.uint16), "percentile")
    with pytest.raises(InputError, match="components"):
        to_uint8(np.zeros((1, 2, 2, 2), np.uint16))
