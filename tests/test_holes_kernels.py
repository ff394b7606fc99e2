"""Compiled (numba) hole-filling kernels against the torch path, a brute-force nearest-voxel search
and PLUS's own sweep: same volume voxel for voxel."""

from pathlib import Path

import numpy as np
import pytest
import torch

from freehand3d.compound import fill_holes, parse_fill_spec
from freehand3d.compound.holes import GapFill
from freehand3d.errors import ConfigError, InputError
from freehand3d.io.plus_volrec import read_volume_reconstruction

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"

SPECS = [
    "stick:5",
    "stick:9:3",
    "stick:3",
    "nn:3",
    "nn:7:0.02",
    "gaussian:3:1",
    "gaussian:5:1.5:0.1",
    "gaussian_accumulation:5:1.2",
    "idw:3",
    "idw:5:0.1",
    "gap:1.0",
    "gap:2.3",
    "stick:7:2,gap:1.5",
    "nn:3:0.3,gaussian:5:0.8,idw:5",
]

# (shape, fraction known): thin volumes put most holes on an edge
CASES = [((9, 11, 13), 0.3), ((1, 6, 17), 0.4), ((12, 2, 5), 0.15), ((7, 9, 1), 0.5), ((10, 10, 10), 0.05)]


def _holey(shape, fraction, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 256, shape).astype(np.uint8)
    known = rng.random(shape) < fraction
    values[~known] = 0
    accumulation = np.where(known, rng.integers(1, 3000, shape), 0).astype(np.float64)
    spacing = tuple(rng.uniform(0.2, 1.2, 3))
    return values, known, accumulation, spacing


def _torch_fma_everywhere() -> bool:
    # torch's vectorised add_(alpha=) fuses the multiply-add, as the compiled Gaussian does
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _assert_same(compiled, reference, spec):
    if "idw" in spec:
        # conv3d adds the cube in its own order: a truncation may land one grey level apart
        assert np.abs(compiled.astype(int) - reference).max() <= 1  # measured 0 (exact) (max of 15) (AMD EPYC)
        assert (compiled == reference).mean() > 0.99
    elif "gaussian" in spec and not _torch_fma_everywhere():
        # unfused torch multiply-adds round twice: measured with ATEN_CPU_CAPABILITY=default (AMD
        # EPYC): max 1 grey level (gaussian:3:1, 99.0 % of voxels equal), 0 for the other Gaussians
        assert np.abs(compiled.astype(int) - reference).max() <= 1
    else:
        np.testing.assert_array_equal(compiled, reference)


@pytest.mark.parametrize("spec", SPECS)
def test_compiled_equals_torch_path(spec):
    for seed, (shape, fraction) in enumerate(CASES):
        values, known, accumulation, spacing = _holey(shape, fraction, seed)
        args = dict(spacing=spacing, accumulation=accumulation)
        compiled = fill_holes(values, known, spec, backend="numba", **args)
        reference = fill_holes(values, known, spec, backend="torch", **args)
        _assert_same(compiled, reference, spec)
        np.testing.assert_array_equal(compiled[known], values[known])
        if seed == 0:  # the first case has enough room for every kernel to fill something
            assert (compiled[~known] > 0).sum() > 10


def _brute_force_gap(values, known, max_distance, spacing):
    """Every hole: the nearest known voxel (distance as scipy computes it from its indices), equally
    near ones by smallest x, then y, then z; filled when within max_distance."""
    sx, sy, sz = spacing
    kz, ky, kx = np.nonzero(known)
    out = values.astype(np.int64).copy()
    for z, y, x in zip(*np.nonzero(~known)):
        squared = ((kz - z) * sz) ** 2 + ((ky - y) * sy) ** 2 + ((kx - x) * sx) ** 2
        nearest = np.flatnonzero(squared == squared.min())
        best = min(nearest, key=lambda i: (kx[i], ky[i], kz[i]))
        out[z, y, x] = values[kz[best], ky[best], kx[best]] if np.sqrt(squared[best]) <= max_distance else 0
    return out


@pytest.mark.parametrize("max_distance", [0.4, 1.0, 1.7, 3.0])
def test_gap_fill_equals_brute_force_nearest_voxel(max_distance):
    for seed, (shape, fraction) in enumerate(CASES):
        values, known, _, spacing = _holey(shape, fraction, 10 + seed)
        # dyadic spacings make exactly equal distances common: the tie rule matters
        for grid_spacing in (spacing, (0.5, 1.0, 0.25)):
            expected = _brute_force_gap(values, known, max_distance, grid_spacing)
            compiled = fill_holes(values, known, [GapFill(max_distance)], spacing=grid_spacing, backend="numba")
            np.testing.assert_array_equal(compiled, expected)
            np.testing.assert_array_equal(fill_holes(values, known, [GapFill(max_distance)], spacing=grid_spacing, backend="torch"), expected)


def test_far_gap_fill_uses_the_distance_transform_and_agrees():
    from freehand3d.compound import _hole_kernels

    values, known, _, _ = _holey((6, 40, 50), 0.002, 3)
    spacing = (0.1, 0.1, 0.5)
    assert _hole_kernels.gap_offsets(30.0, spacing, 4096) is None  # too many neighbours to visit
    compiled = fill_holes(values, known, "gap:30", spacing=spacing, backend="numba")
    np.testing.assert_array_equal(compiled, _brute_force_gap(values, known, 30.0, spacing))
    assert (compiled > 0).all()


def test_compiled_kernels_do_not_depend_on_thread_count():
    import numba

    values, known, accumulation, spacing = _holey((24, 20, 18), 0.2, 7)
    spec = "stick:9:3,gaussian_accumulation:5:1.2,gap:0.8"
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fill_holes(values, known, spec, spacing=spacing, accumulation=accumulation, backend="numba")
    finally:
        numba.set_num_threads(before)
    many = fill_holes(values, known, spec, spacing=spacing, accumulation=accumulation, backend="numba")
    np.testing.assert_array_equal(one, many)


def test_backend_choice_and_inputs():
    values, known, _, _ = _holey((5, 6, 7), 0.3, 2)
    expected = fill_holes(values, known, "stick:5", backend="torch")
    # tensors in, the CPU default takes the compiled kernels and gives the same volume
    np.testing.assert_array_equal(fill_holes(torch.as_tensor(values), torch.as_tensor(known), "stick:5"), expected)
    # a non-contiguous view is read correctly
    flipped = fill_holes(values[:, ::-1], known[:, ::-1], "stick:5", backend="numba")
    np.testing.assert_array_equal(flipped, fill_holes(values[:, ::-1], known[:, ::-1], "stick:5", backend="torch"))
    # nothing to fill / nothing known
    np.testing.assert_array_equal(fill_holes(values, np.ones_like(known), "nn:3"), values)
    empty = np.zeros_like(values)
    assert fill_holes(empty, np.zeros_like(known), "stick:5,gap:2,gaussian:3:1").max() == 0
    with pytest.raises(ConfigError, match="backend"):
        fill_holes(values, known, "nn:3", backend="compiled")
    with pytest.raises(ConfigError, match="uint8"):
        fill_holes(values.astype(np.float32), known, "nn:3", backend="numba")
    # other value types go to the torch path by default
    np.testing.assert_array_equal(fill_holes(values.astype(np.int16), known, "stick:5"), expected)
    with pytest.raises(ConfigError, match="odd"):
        fill_holes(values, known, "gaussian:4:1", backend="numba")
    with pytest.raises(InputError, match="same shape"):
        fill_holes(values, known[:, :3], "nn:3")
    with pytest.raises(InputError, match="positive spacings"):
        fill_holes(values, known, "gap:1", spacing=(1.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def plus_volume():
    """PLUS's SpinePhantomFreehand sweep reconstructed with its NN_LATE device set (no hole filling):
    the gaps a real freehand sweep leaves."""
    import SimpleITK as sitk

    from freehand3d.compound import reconstruct
    from freehand3d.io import read_sweep

    sweep = read_sweep(DATA / "SpinePhantomFreehand.igs.mha")
    config = DATA / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml"
    values = sitk.GetArrayFromImage(reconstruct(sweep, config=config, exact_plus=False))
    values = np.ascontiguousarray(values[36:60])  # 24 of the 98 slices keep the torch path quick
    return values, values > 0, read_volume_reconstruction(config)[0].output_spacing


def test_plus_sweep_holes_filled_the_same(plus_volume):
    values, known, spacing = plus_volume
    assert 0.05 < (~known).mean() < 0.95  # measured 0.789 of the voxels are holes (AMD EPYC)
    ln_mean = DATA / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml"
    kernels = [read_volume_reconstruction(ln_mean)[0].hole_filling] + [parse_fill_spec(s) for s in ("gaussian:3:1", "nn:5", "gap:1.5")]
    for kernel in kernels:
        compiled = fill_holes(values, known, kernel, spacing=spacing, backend="numba")
        reference = fill_holes(values, known, kernel, spacing=spacing, backend="torch")
        np.testing.assert_array_equal(compiled, reference)
        assert (compiled[~known] > 0).sum() > 1000


def test_degenerate_kernel_sizes_fill_nothing_on_both_paths():
    values, known, _, _ = _holey((5, 6, 7), 0.3, 4)
    for spec in ("nn:0", "nn:1", "stick:1", "stick:5:0"):
        compiled = fill_holes(values, known, spec, backend="numba")
        np.testing.assert_array_equal(compiled, fill_holes(values, known, spec, backend="torch"))
        np.testing.assert_array_equal(compiled, values)
    with pytest.raises(InputError, match="accumulation"):
        fill_holes(values, known, "gaussian_accumulation:3:1", accumulation=np.ones((2, 2, 2)))
