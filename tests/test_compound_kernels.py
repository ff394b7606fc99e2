"""Compiled insertion kernels (numba) against the torch scatter path and PLUS's reference volumes
(the per-pixel PLUS rules are checked for both backends in test_compound.py): identical volumes and accumulation buffers for every method, mode and
arithmetic, with clip/fan masks, pixel rejection and importance masks, for any thread count."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_compound import _random_setup

from freehand3d.compound import OutputGrid, Reconstructor, frame_mask, reconstruct
from freehand3d.compound import _kernels
from freehand3d.errors import ConfigError
from freehand3d.io import read_sweep

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"

# (exact_plus, fixed_point): PLUS's fixed point, PLUS's double precision, freehand3d's float32 path
ARITHMETICS = {"fixed": (True, True), "double": (True, False), "fast": (False, True)}


def _importance(shape, seed=5):
    # zeros included: PLUS skips zero-importance pixels
    return np.random.default_rng(seed).integers(0, 4, shape).astype(np.uint8)


def _both(grid, frames, mats, method, compounding, arithmetic, calls=2, **kwargs):
    exact, fixed = ARITHMETICS[arithmetic]
    out = {}
    for backend in ("torch", "numba"):
        rec = Reconstructor(grid, method, compounding, exact_plus=exact, fixed_point=fixed, backend=backend, **kwargs)
        for part in np.array_split(np.arange(len(frames)), calls):  # incremental calls too
            rec.add_frames(frames[part], mats[part])
        out[backend] = rec
    return out["torch"], out["numba"]


def _assert_same(torch_rec, numba_rec):
    np.testing.assert_array_equal(numba_rec.volume_array(), torch_rec.volume_array())
    acc_torch, acc_numba = torch_rec.accumulation(), numba_rec.accumulation()
    assert acc_numba.dtype == acc_torch.dtype
    np.testing.assert_array_equal(acc_numba, acc_torch)
    assert numba_rec._state.overflow_count == torch_rec._state.overflow_count


@pytest.mark.parametrize("arithmetic", list(ARITHMETICS))
@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("compounding", ["latest", "max", "mean", "importance"])
def test_kernels_equal_torch_path_random_affine(arithmetic, method, compounding):
    frames, mats, size = _random_setup(seed=11, n_frames=7, shape=(13, 17))
    frames[:, 4, 5:9] = 3  # dark pixels, rejected below
    mask = frame_mask(frames.shape[1:], clip_origin=(1, 0), clip_size=(15, 12), fan_angles_deg=(-35, 30),
                      fan_origin=(8, -3), fan_radius_start=4.5, fan_radius_stop=15)  # fmt: skip
    assert 40 < mask.sum() < mask.size and not mask.all()
    grid = OutputGrid((0.3, -0.2, 0.1), (1.0, 0.9, 1.1), size)  # not the identity: a real pixel->voxel map
    kwargs = dict(mask=mask, pixel_rejection_threshold=9.5, importance_mask=_importance(frames.shape[1:]))
    torch_rec, numba_rec = _both(grid, frames, mats, method, compounding, arithmetic, pixels_per_batch=120, **kwargs)
    assert (numba_rec.accumulation() > 0).sum() > 40
    _assert_same(torch_rec, numba_rec)
    # the rejection threshold and the mask were applied: an unmasked, unthresholded run differs
    plain = Reconstructor(grid, method, compounding, exact_plus=ARITHMETICS[arithmetic][0],
                          fixed_point=ARITHMETICS[arithmetic][1], importance_mask=kwargs["importance_mask"])  # fmt: skip
    plain.add_frames(frames, mats)
    assert (plain.accumulation() > 0).sum() > (numba_rec.accumulation() > 0).sum()


@pytest.mark.parametrize("arithmetic", [_kernels.FIXED, _kernels.DOUBLE, _kernels.SINGLE])
@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_thread_split_is_bit_identical(arithmetic, method):
    """Each thread owns a set of voxels and sees their contributions in the serial order: float sums
    (MEAN) and LATEST come out the same whatever the number of threads."""
    frames, mats, size = _random_setup(seed=4, n_frames=6, shape=(15, 19))
    mask = np.ones(frames.shape[1:], bool)
    mask[3, 4:9] = False  # two runs on that row
    runs = _kernels.PixelRuns(mask)
    float_sums = arithmetic == _kernels.SINGLE
    # a grid above 2 x 4096 voxels, so that the two-phase nearest neighbour gives both threads work
    size = (23, 21, 19)
    mats = mats.copy()
    mats[:, :3, :3] *= 1.6
    results = []
    for mode in (_kernels.LATEST, _kernels.MEAN):
        per_owners = []
        for owners in (1, 2, 4):
            dtype = np.float32 if float_sums and mode == _kernels.MEAN else np.int32
            value = np.zeros(int(np.prod(size)) + 1, dtype)
            acc = np.zeros(int(np.prod(size)) + 1, np.float32 if float_sums else np.int32)
            _kernels.paste(method, arithmetic, mode, frames, mats, runs, None, 0, size, value, acc, n_owners=owners)
            per_owners.append((value, acc))
        for value, acc in per_owners[1:]:
            np.testing.assert_array_equal(value, per_owners[0][0])
            np.testing.assert_array_equal(acc, per_owners[0][1])
        results.append(per_owners[0][1])
    assert all((acc[:4096] > 0).sum() > 50 and (acc[4096:8192] > 0).sum() > 50 for acc in results)
    assert _kernels.owners_for_threads(3) == 2 and _kernels.owners_for_threads(1) == 1


def test_mask_runs_keep_row_major_order():
    mask = np.zeros((4, 9), bool)
    mask[1, 2:4] = mask[1, 6:9] = mask[3, 0] = True
    np.testing.assert_array_equal(_kernels.mask_runs(mask), [[1, 2, 3], [1, 6, 8], [3, 0, 0]])
    assert _kernels.mask_runs(np.zeros((3, 3), bool)).shape == (0, 3)


def test_backend_choice_errors():
    grid = OutputGrid((0, 0, 0), (1, 1, 1), (4, 4, 4))
    assert Reconstructor(grid).backend == "numba"
    with pytest.raises(ConfigError, match="backend"):
        Reconstructor(grid, backend="opencl")
    with pytest.raises(ConfigError, match="CPU only"):
        Reconstructor(grid, device="cuda", backend="numba")
    with pytest.raises(ConfigError, match="finite"):
        Reconstructor(grid, pixel_rejection_threshold=float("nan"))


# ---------------------------------------------------------------------- PLUS's SpinePhantom data
@pytest.fixture(scope="module")
def spine():
    return read_sweep(DATA / "SpinePhantomFreehand.igs.mha")


def _config(name):
    return DATA / f"PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_{name}.xml"


def _reference(tag):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / f"vtkVolumeReconstructorTest{tag}volumeRef.mha")))


@pytest.mark.parametrize("name,tag", [("NN_LATE", "NNLATE"), ("LN_MEAN", "LNMEAN")])
def test_kernels_reproduce_plus_reference_volumes(spine, name, tag):
    ours = sitk.GetArrayFromImage(reconstruct(spine, config=_config(name), backend="numba"))
    ref = _reference(tag)
    assert ours.shape == ref.shape and (ref > 0).sum() > 50_000
    equal = (ours == ref).mean()
    print(f"{name} numba kernels: {100 * equal:.3f} % equal, max diff {np.abs(ours.astype(int) - ref).max()}")
    assert equal >= 0.999


@pytest.mark.parametrize("arithmetic", ["fixed", pytest.param("double", marks=pytest.mark.slow), "fast"])
def test_kernels_equal_torch_on_plus_spine_sweep(spine, arithmetic):
    # PLUS's NN_LATE clip rectangle and fan, every 5th frame (the torch replay of PLUS's exact running
    # means is slow), no hole filling so that the insertion itself is compared
    from freehand3d.compound.masks import mask_from_config
    from freehand3d.io.plus_volrec import read_volume_reconstruction

    cfg, transforms = read_volume_reconstruction(_config("NN_LATE"))
    image_to_reference = (
        np.linalg.inv(spine.transforms["ReferenceToTracker"]) @ spine.transforms["ProbeToTracker"] @ transforms["ImageToProbe"]
    )
    mask = mask_from_config(spine.frame_shape, cfg)
    from freehand3d.compound import grid_from_frames

    grid = grid_from_frames(image_to_reference, spine.frame_shape, 1.0, cfg.clip_rectangle_origin, cfg.clip_rectangle_size)
    frames, poses = spine.frames[::5], image_to_reference[::5]
    for method, compounding in (("nearest", "latest"), ("nearest", "mean"), ("linear", "max"), ("linear", "mean")):
        torch_rec, numba_rec = _both(grid, frames, poses, method, compounding, arithmetic, mask=mask)
        assert (numba_rec.accumulation() > 0).sum() > 3_000
        _assert_same(torch_rec, numba_rec)
