"""Volumes through SimpleITK: geometry kept, atomic writes, InputError on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import freehand3d
from freehand3d.errors import InputError
from freehand3d.io.volumes import read_volume, volume_summary, write_volume

PLUS = Path(freehand3d.__file__).parent / "data" / "plus"
ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_array_round_trip_keeps_voxels_and_geometry(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((4, 5, 6)) * 200).astype(dtype)  # (z, y, x)
    out = tmp_path / f"vol{suffix}"
    write_volume(array, out, origin=(-57.0272, 168.545, 30.5384), spacing=(0.5, 0.25, 2.0), direction=ROTATION)
    image = read_volume(out)
    assert image.GetSize() == (6, 5, 4)  # SimpleITK is (x, y, z)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    # measured max |diff| 1.8e-06 (rel 2.1e-08) (AMD EPYC); tolerance 63.8x that
    np.testing.assert_allclose(image.GetOrigin(), (-57.0272, 168.545, 30.5384), atol=1e-4)  # NIfTI stores float32
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.25, 2.0), atol=1e-6)  # measured: exact (max |diff| 0, AMD EPYC)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), ROTATION, atol=1e-6)  # measured: exact (max |diff| 0, AMD EPYC)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind


def test_image_geometry_override_does_not_touch_the_callers_image(tmp_path):
    image = sitk.GetImageFromArray(np.ones((3, 3, 3), np.uint8))
    image.SetSpacing((2.0, 2.0, 2.0))
    write_volume(image, tmp_path / "v.mha", origin=(1, 2, 3))
    assert image.GetOrigin() == (0.0, 0.0, 0.0)
    back = read_volume(tmp_path / "v.mha")
    assert back.GetOrigin() == (1.0, 2.0, 3.0) and back.GetSpacing() == (2.0, 2.0, 2.0)


def test_compression_flag(tmp_path):
    array = np.zeros((20, 30, 40), np.uint8)
    write_volume(array, tmp_path / "z.nrrd", compress=True)
    write_volume(array, tmp_path / "r.nrrd", compress=False)
    assert (tmp_path / "z.nrrd").stat().st_size < (tmp_path / "r.nrrd").stat().st_size
    assert (tmp_path / "r.nrrd").stat().st_size > array.size


def test_bool_mask_is_written_as_uint8(tmp_path):
    mask = np.zeros((2, 3, 4), bool)
    mask[1, 2, 3] = True
    write_volume(mask, tmp_path / "m.nrrd")
    back = sitk.GetArrayFromImage(read_volume(tmp_path / "m.nrrd"))
    assert back.dtype == np.uint8 and back.sum() == 1 and back[1, 2, 3] == 1


def test_reads_plus_reference_volume_with_its_header_geometry():
    """PLUS's VolumeReconstructor reference output: header says DimSize 80 93 98, ElementSpacing
    0.5 0.5 0.5, Offset -57.0272 168.545 30.5384."""
    image = read_volume(PLUS / "vtkVolumeReconstructorTestNNLATEvolumeRef.mha")
    summary = volume_summary(image)
    assert summary["size"] == (80, 93, 98)
    assert summary["spacing"] == (0.5, 0.5, 0.5)
    assert summary["origin"] == (-57.0272, 168.545, 30.5384)
    assert summary["pixel_type"] == "8-bit unsigned integer"
    assert 0 < summary["nonzero_fraction"] < 1 and summary["max"] <= 255


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(InputError, match="unknown volume format"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "v.png")
    with pytest.raises(ValueError, match="spacing"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "v.nrrd", spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="origin"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "v.nrrd", origin=(1, 2))
    with pytest.raises(ValueError, match="singular"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "v.nrrd", direction=np.zeros((3, 3)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "absent.nrrd")
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ntype: uint8\n")
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "junk.nrrd")
    assert "junk.nrrd" in str(info.value) and "\n" not in str(info.value)
    good = tmp_path / "t.mha"
    write_volume(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10), good, compress=False)
    good.write_bytes(good.read_bytes()[:-300])  # truncated
    with pytest.raises(InputError, match="t.mha"):
        read_volume(good)
