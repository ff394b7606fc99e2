"""Reconstruction against PLUS's own reference volumes (PlusLibData, bundled in freehand3d/data/plus).

PLUS's test: ``VolumeReconstructor --image-to-reference-transform=ImageToReference`` on
SpinePhantomFreehand.igs.mha with the two device sets; PLUS accepts the same extent and a maximum
voxel difference of 2. We require the same size and origin and >= 99.9 % of voxels within +-2.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from freehand3d.compound import grid_from_frames, reconstruct
from freehand3d.io import read_sweep
from freehand3d.io.plus_volrec import read_volume_reconstruction

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
SWEEP = DATA / "SpinePhantomFreehand.igs.mha"


def _config(name):
    return DATA / f"PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_{name}.xml"


def _reference(tag):
    return sitk.ReadImage(str(DATA / f"vtkVolumeReconstructorTest{tag}volumeRef.mha"))


@pytest.fixture(scope="module")
def sweep():
    return read_sweep(SWEEP)


def _compare(ours, ref):
    assert ours.GetSize() == ref.GetSize()
    # measured max |diff| 4.6e-04 (rel 2.7e-06) (AMD EPYC); tolerance 2.2x that
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)  # the .mha keeps 6 digits
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing())  # measured: exact (max |diff| 0, AMD EPYC)
    a = sitk.GetArrayFromImage(ours).astype(int)
    b = sitk.GetArrayFromImage(ref).astype(int)
    diff = np.abs(a - b)
    return (diff == 0).mean(), (diff <= 2).mean(), int(diff.max()), b


def test_default_grid_follows_plus_extent_rule(sweep):
    cfg, transforms = read_volume_reconstruction(_config("NN_LATE"))
    probe = sweep.transforms["ProbeToTracker"]
    ref_to_tracker = sweep.transforms["ReferenceToTracker"]
    image_to_reference = np.linalg.inv(ref_to_tracker) @ probe @ transforms["ImageToProbe"]
    grid = grid_from_frames(
        image_to_reference, sweep.frame_shape, cfg.output_spacing, cfg.clip_rectangle_origin, cfg.clip_rectangle_size
    )
    ref = _reference("NNLATE")
    assert grid.size == ref.GetSize() == (80, 93, 98)
    # measured max |diff| 4.6e-04 (rel 2.7e-06) (AMD EPYC); tolerance 2.2x that
    np.testing.assert_allclose(grid.origin, ref.GetOrigin(), atol=1e-3)


def test_nearest_latest_matches_plus_reference(sweep):
    ours = reconstruct(sweep, config=_config("NN_LATE"))
    equal, within2, max_diff, ref = _compare(ours, _reference("NNLATE"))
    print(f"NN_LATE: {100 * equal:.3f} % equal, {100 * within2:.3f} % within +-2, max diff {max_diff}")
    assert (ref > 0).sum() > 50_000  # the reference is not an empty volume
    assert within2 >= 0.999
    assert equal >= 0.999


def test_fast_path_is_close_to_plus_nearest_latest(sweep):
    # float32 positions instead of PLUS's fixed point: only voxels whose pixel falls within a rounding
    # error of a voxel boundary may differ
    ours = reconstruct(sweep, config=_config("NN_LATE"), exact_plus=False)
    equal, within2, max_diff, _ = _compare(ours, _reference("NNLATE"))
    print(f"NN_LATE fast path: {100 * equal:.3f} % equal, {100 * within2:.3f} % within +-2")
    # measured 99.032 % equal, 99.348 % within +-2 (AMD EPYC): the 99 % bound has 0.03 % room
    assert equal >= 0.99


@pytest.mark.slow
def test_linear_mean_stick_matches_plus_reference(sweep):
    ours = reconstruct(sweep, config=_config("LN_MEAN"))
    equal, within2, max_diff, ref = _compare(ours, _reference("LNMEAN"))
    print(f"LN_MEAN: {100 * equal:.3f} % equal, {100 * within2:.3f} % within +-2, max diff {max_diff}")
    assert (ref > 0).sum() > 100_000
    assert within2 >= 0.999
    assert equal >= 0.999


def _spine_config(tmp_path, interpolation, mode, fill=""):
    # PLUS's SpinePhantom_* test configs: whole frame, no fan, 0.5 mm (as IGSIO's LN_LATE config)
    text = (DATA / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml").read_text()
    start = text.index("<VolumeReconstruction")
    end = text.index("/>", start) + 2
    element = (
        f'<VolumeReconstruction OutputSpacing="0.5 0.5 0.5" ClipRectangleOrigin="0 0" ClipRectangleSize="820 616" '
        f'Interpolation="{interpolation}" Optimization="FULL" CompoundingMode="{mode}" FillHoles="OFF" NumberOfThreads="1" />'
    )
    path = tmp_path / f"spine_{interpolation}_{mode}.xml"
    path.write_text(text[:start] + element + text[end:])
    return path


@pytest.mark.slow
def test_other_plus_modes_on_the_spine_sweep_are_consistent(sweep, tmp_path):
    """PLUS's NN_MEAN / NN_MAXI style configs on the same sweep (no reference volume is bundled):
    the same voxels are filled by every mode, MAXIMUM bounds LATEST and MEAN from above."""
    volumes = {}
    for mode in ("LATEST", "MAXIMUM", "MEAN"):
        image = reconstruct(sweep, config=_spine_config(tmp_path, "NEAREST_NEIGHBOR", mode))
        volumes[mode] = sitk.GetArrayFromImage(image).astype(int)
    assert volumes["LATEST"].shape == volumes["MEAN"].shape == volumes["MAXIMUM"].shape
    assert (volumes["MAXIMUM"] >= volumes["LATEST"]).all()
    assert (volumes["MAXIMUM"] >= volumes["MEAN"]).all()
    lit = volumes["MAXIMUM"] > 0
    assert lit.mean() > 0.05  # measured 0.115 (AMD EPYC)
    # PLUS's truncating running mean sends voxels of mostly-black pixels to 0: most stay lit
    assert (volumes["MEAN"][lit] > 0).mean() > 0.85  # measured 0.894 (AMD EPYC)
    # the whole-frame configs cover more than the fan-clipped NN_LATE reference
    assert volumes["LATEST"].size > _reference("NNLATE").GetNumberOfPixels()
