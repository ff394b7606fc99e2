"""Compounding of sweeps of every pixel type (issue 14): the same compiled kernels with float
accumulation, the volume type chosen by the user (default: the frames' type).

The reference is the uint8 path itself: a uint8 sweep cast to float32 must give the uint8 volume
voxel for voxel (exactly for LATEST / MAXIMUM; for MEAN / importance the float volume keeps the exact
mean and rounds to the uint8 volume), and with a uint8 output type it must be the uint8 volume.
PLUS's own uint8 reference volumes are checked in test_compound_plus.py / test_compound_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_compound import _random_setup

from freehand3d.compound import OutputGrid, Reconstructor, frame_mask, reconstruct
from freehand3d.errors import ConfigError, InputError
from freehand3d.sweep import Sweep

MODES = ["latest", "max", "mean", "importance"]


def _setup():
    frames, mats, size = _random_setup(seed=11, n_frames=7, shape=(13, 17))
    frames[:, 4, 5:9] = 3  # dark pixels, rejected by the threshold
    mask = frame_mask(frames.shape[1:], clip_origin=(1, 0), clip_size=(15, 12), fan_angles_deg=(-35, 30),
                      fan_origin=(8, -3), fan_radius_start=4.5, fan_radius_stop=15)  # fmt: skip
    grid = OutputGrid((0.3, -0.2, 0.1), (1.0, 0.9, 1.1), size)
    importance = np.random.default_rng(5).integers(0, 4, frames.shape[1:]).astype(np.uint8)
    return frames, mats, grid, dict(mask=mask, importance_mask=importance)


def _volume(grid, frames, mats, method, mode, threshold=9.5, calls=2, **kwargs):
    rec = Reconstructor(grid, method, mode, pixel_rejection_threshold=threshold, pixels_per_batch=120, **kwargs)
    for part in np.array_split(np.arange(len(frames)), calls):
        rec.add_frames(frames[part], mats[part])
    return rec


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("mode", MODES)
def test_uint8_sweep_cast_to_float32_gives_the_uint8_volume(method, mode):
    frames, mats, grid, kwargs = _setup()
    u8 = _volume(grid, frames, mats, method, mode, **kwargs)
    v8 = u8.volume_array()
    assert v8.dtype == np.uint8 and (u8.accumulation() > 0).sum() > 40
    f32 = frames.astype(np.float32)
    as_float = _volume(grid, f32, mats, method, mode, pixel_type=np.float32, **kwargs)
    vf = as_float.volume_array()
    assert vf.dtype == np.float32
    if mode in ("latest", "max"):
        np.testing.assert_array_equal(vf, v8)  # the pixel values themselves: exact
    else:
        # the float volume keeps the exact weighted mean; rounded it is the uint8 volume
        np.testing.assert_array_equal(np.floor(vf + 0.5), v8)
        assert np.abs(vf - v8).max() <= 0.5  # rounding to nearest: measured 0.4995-0.5 (exact bound) (AMD EPYC)
        assert (vf != np.round(vf)).any()  # really unrounded means
    # same float sums in the same order: identical accumulation
    if mode != "max":  # MAXIMUM marks zero-valued pixels as filled in float volumes (see _kernels)
        np.testing.assert_array_equal(as_float.accumulation(), u8.accumulation())
    # float32 frames into a uint8 volume: the uint8 volume voxel for voxel
    to_u8 = _volume(grid, f32, mats, method, mode, pixel_type=np.float32, output_type=np.uint8, **kwargs)
    np.testing.assert_array_equal(to_u8.volume_array(), v8)


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("mode", ["latest", "max", "mean"])
def test_uint16_sweep_gives_a_uint16_volume(method, mode):
    frames, mats, grid, kwargs = _setup()
    v8 = _volume(grid, frames, mats, method, mode, threshold=None, **kwargs).volume_array()
    f32 = _volume(grid, frames.astype(np.float32), mats, method, mode, threshold=None, pixel_type=np.float32, **kwargs)
    u16 = frames.astype(np.uint16) * 257  # the full 16-bit range
    rec = _volume(grid, u16, mats, method, mode, threshold=None, pixel_type=np.uint16, **kwargs)
    v16 = rec.volume_array()
    assert v16.dtype == np.uint16 and v16.max() > 255 * 200
    if mode in ("latest", "max"):
        np.testing.assert_array_equal(v16, v8.astype(np.uint16) * 257)
    else:
        # float32 sums of v * 257 vs 257 x float32 sums of v: the means agree to well below one
        # 16-bit step (measured max 0.0 nearest, 0.0039 linear); rounding may move them by one
        expected = f32.volume_array().astype(np.float64) * 257
        assert np.abs(v16 - expected).max() <= 0.5 + 1e-2
    rounded = _volume(grid, u16, mats, method, mode, threshold=None, pixel_type=np.uint16, output_type=np.float32, **kwargs)
    assert rounded.volume_array().dtype == np.float32


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("mode", ["latest", "max", "mean"])
def test_negative_float_pixels_compound_like_shifted_uint8(method, mode):
    """float32 data with negative values (RF-like): every pixel is pasted (no implicit threshold at
    0) and MAXIMUM of an empty voxel is the pixel, not 0."""
    frames, mats, grid, kwargs = _setup()
    ref = _volume(grid, frames.astype(np.float32), mats, method, mode, threshold=None, pixel_type=np.float32, **kwargs)
    shifted = _volume(grid, frames.astype(np.float32) - 1000.25, mats, method, mode, threshold=None,
                      pixel_type=np.float32, **kwargs)  # fmt: skip
    filled = ref.accumulation() > 0
    np.testing.assert_array_equal(shifted.accumulation() > 0, filled)
    got, want = shifted.volume_array()[filled], ref.volume_array()[filled] - 1000.25
    if mode == "mean":
        # float32 sums of (v - 1000.25): measured max difference 1.2e-4, 3.1e-4 in the latest run of both
        # methods (AMD EPYC; float32 spacing near 1000 is 6e-5)
        np.testing.assert_allclose(got, want, atol=5e-4)
    else:
        np.testing.assert_array_equal(got, want.astype(np.float32))
    assert (got < 0).all() and (shifted.volume_array()[~filled] == 0).all()


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.float64])
def test_wide_types_accumulate_in_float64(dtype):
    frames, mats, grid, kwargs = _setup()
    big = frames.astype(dtype) + dtype(2**30)  # beyond float32's 24-bit mantissa
    rec = _volume(grid, big, mats, "nearest", "latest", threshold=None, pixel_type=dtype, **kwargs)
    ref = _volume(grid, frames, mats, "nearest", "latest", threshold=None, **kwargs).volume_array()
    filled = rec.accumulation() > 0
    vol = rec.volume_array()
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(vol[filled], ref[filled].astype(dtype) + dtype(2**30))
    mean = _volume(grid, big, mats, "linear", "mean", threshold=None, pixel_type=dtype, **kwargs).volume_array()
    ref_mean = _volume(grid, frames.astype(np.float64), mats, "linear", "mean", threshold=None,
                       pixel_type=np.float64, **kwargs).volume_array()  # fmt: skip
    filled = ref_mean != 0
    # float64 sums: the offset survives to ~1e-6 (measured 2.4e-7); integers round the mean
    tol = 1e-5 if np.dtype(dtype).kind == "f" else 0.5 + 1e-5
    assert np.abs(mean[filled].astype(np.float64) - (ref_mean[filled] + 2**30)).max() <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("mode", MODES)
def test_torch_path_equals_the_compiled_kernels_for_other_types(dtype, method, mode):
    """The torch scatters (the CUDA path) give the compiled kernels' volume and accumulation for
    non-uint8 frames too, negative values and a rejection threshold included."""
    frames, mats, grid, kwargs = _setup()
    typed = (frames.astype(np.float64) * 3 - 300.5).astype(dtype)
    recs = [_volume(grid, typed, mats, method, mode, threshold=-250.0, pixel_type=dtype, backend=backend, **kwargs)
            for backend in ("numba", "torch")]
    np.testing.assert_array_equal(recs[1].volume_array(), recs[0].volume_array())
    np.testing.assert_array_equal(recs[1].accumulation(), recs[0].accumulation())
    assert (recs[0].volume_array() < 0).any()


def test_integer_output_clips_to_its_range():
    frames, mats, grid, kwargs = _setup()
    f32 = frames.astype(np.float32) * 4 - 300  # -300 .. 720
    vol = _volume(grid, f32, mats, "nearest", "latest", threshold=None, pixel_type=np.float32,
                  output_type=np.uint8, **kwargs).volume_array()  # fmt: skip
    assert vol.dtype == np.uint8 and vol.min() == 0 and vol.max() == 255


def test_reconstruct_keeps_the_sweep_type_and_takes_an_output_type():
    frames, mats, grid, kwargs = _setup()
    sweep = Sweep(frames.astype(np.int16) - 128, transforms={"ImageToReference": mats})
    image = reconstruct(sweep, spacing=1.0, method="linear", compounding="mean")
    import SimpleITK as sitk

    assert image.GetPixelID() == sitk.sitkInt16
    image = reconstruct(sweep, spacing=1.0, method="linear", compounding="mean", output_type="float32")
    assert image.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayFromImage(image).min() < 0


def test_non_uint8_refusals():
    frames, mats, grid, kwargs = _setup()
    with pytest.raises(ConfigError, match="exact"):
        Reconstructor(grid, "nearest", "mean", exact_plus=True, pixel_type=np.uint16)
    with pytest.raises(ConfigError, match="volume type"):
        Reconstructor(grid, "nearest", "mean", output_type=np.int64)
    rec = Reconstructor(grid, "nearest", "mean", pixel_type=np.uint16)
    with pytest.raises(ValueError, match="uint16"):
        rec.add_frames(frames, mats)
    rgb = Sweep(np.repeat(frames[..., None], 3, axis=3), transforms={"ImageToReference": mats})
    with pytest.raises(InputError, match="components"):
        reconstruct(rgb, spacing=1.0)
