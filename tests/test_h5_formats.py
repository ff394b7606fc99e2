"""TUS-REC and DualTrack h5 formats: reading, writing, and the exact frame conventions between them
(shared/reference/dualtrack/SPEC.md §9-10)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from freehand3d import geometry
from freehand3d.errors import InputError
from freehand3d.io import read_sweep, write_sweep
from freehand3d.io.dualtrack_h5 import centred_pixel_to_image, read_dualtrack_h5, write_dualtrack_h5
from freehand3d.io.tusrec import (
    TUSREC_SPACING,
    TusRecCalibration,
    dualtrack_to_tusrec_transforms,
    image_centre_offset,
    read_tusrec,
    read_tusrec_calibration,
    tusrec_pair_transforms,
    tusrec_to_dualtrack_transforms,
    write_tusrec,
)
from freehand3d.sweep import Sweep

H, W = 480, 640
SX, SY = TUSREC_SPACING


def smooth_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """Freehand-like tool -> camera poses: a random start, then small smooth steps (mm, degrees)."""
    start = np.concatenate([rng.uniform(-200, 200, 3), rng.uniform(-180, 180, 3)])
    velocity = np.concatenate([rng.normal(0, 1.5, 3), rng.normal(0, 1.0, 3)])
    steps = velocity + np.cumsum(rng.normal(0, 0.2, (n, 6)), axis=0)
    params = start + np.cumsum(steps, axis=0)
    return geometry.params_to_matrix(params, "xyz", degrees=True)


def random_calibration(rng: np.random.Generator) -> TusRecCalibration:
    rot = geometry.params_to_matrix(
        np.concatenate([rng.uniform(-80, 80, 3), rng.uniform(-180, 180, 3)]), "xyz", degrees=True
    )
    return TusRecCalibration(geometry.scaling([SX, SY, 1.0]), rot)


def write_raw_tusrec(folder, frames, tforms, calib: TusRecCalibration, name="scan.h5"):
    """A scan written the way the challenge ships it (independent of freehand3d's writer)."""
    path = folder / name
    with h5py.File(path, "w") as f:
        f["frames"] = frames
        f["tforms"] = tforms.astype(np.float32)
    lines = ["scaling_from_pixel_to_mm"]
    lines += [",".join(str(v) for v in row) for row in calib.scale]
    lines += ["spatial_calibration_from_image_coordinate_system_to_tracking_tool_coordinate_system"]
    lines += [",".join(repr(float(v)) for v in row) for row in calib.image_to_tool]
    (folder / "calib_matrix.csv").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def scan(tmp_path):
    rng = np.random.default_rng(7)
    n = 5
    frames = rng.integers(0, 256, (n, H, W), dtype=np.uint8)
    tforms = smooth_poses(n, rng).astype(np.float32).astype(np.float64)
    calib = random_calibration(rng)
    path = write_raw_tusrec(tmp_path, frames, tforms, calib)
    return path, frames, tforms, calib


def challenge_points(tforms, calib, pixels0):
    """Camera points of 0-based pixels by the challenge's own formula: tforms · R_T · S · [x+1, y+1, 0, 1]."""
    p = np.concatenate([pixels0 + 1.0, np.zeros((len(pixels0), 1)), np.ones((len(pixels0), 1))], axis=1).T
    return np.einsum("nij,jk->nki", tforms @ calib.image_to_tool @ calib.scale, p)[..., :3]


PIXELS = np.array([[0, 0], [639, 0], [0, 479], [639, 479], [319.5, 239.5], [123, 456]], float)


def test_tusrec_pixel_maps_to_challenge_world_point(scan):
    path, frames, tforms, calib = scan
    sweep = read_tusrec(path)  # finds calib_matrix.csv beside the h5
    assert np.array_equal(sweep.frames, frames)
    assert sweep.spacing == pytest.approx((SX, SY))  # measured: exact (max |diff| 0, AMD EPYC)
    ours = geometry.apply(sweep.image_to("Tracker")[:, None], PIXELS)
    np.testing.assert_allclose(ours, challenge_points(tforms, calib, PIXELS), atol=1e-9)  # measured max |diff| 5.7e-14


def test_pixel_maps_to_same_world_point_in_tusrec_and_dualtrack(scan, tmp_path):
    path, frames, tforms, calib = scan
    sweep = read_tusrec(path)
    out = tmp_path / "dualtrack.h5"
    write_dualtrack_h5(sweep, out)
    with h5py.File(out, "r") as f:
        tracking, p2i = f["tracking"][()], f["pixel_to_image"][()]
        assert f["images"].dtype == np.uint8 and f["images"].shape == (5, H, W)
        assert f["dimensions"][()].tolist() == [W, H, 1]
        np.testing.assert_allclose(f["spacing"][()], [SX, SY, 1.0])  # measured: exact (max |diff| 0)
    # SPEC §9: x_mm = (col - 319.5) sx, y_mm = (row - 239.5) sy
    np.testing.assert_allclose(p2i[:2, 3], [-319.5 * SX, -239.5 * SY], rtol=1e-12)  # measured: exact (max |diff| 0)
    # SPEC §10.5: DualTrack tracking = tforms · R_T · D
    d = image_centre_offset((SX, SY), (H, W))
    np.testing.assert_allclose(tracking, tforms @ calib.image_to_tool @ d, atol=1e-9)  # measured max |diff| 2.8e-14
    # the same world point, computed from the raw DualTrack arrays and from the sweep read back
    dual_points = geometry.apply((tracking @ p2i)[:, None], PIXELS)
    np.testing.assert_allclose(dual_points, challenge_points(tforms, calib, PIXELS), atol=1e-9)  # measured max |diff| 5.7e-14
    back = read_dualtrack_h5(out)
    assert np.array_equal(back.frames, frames)
    np.testing.assert_allclose(geometry.apply(back.image_to("Tracker")[:, None], PIXELS), dual_points, atol=1e-9)  # measured: exact (max |diff| 0)


def test_dualtrack_to_tusrec_round_trip(scan, tmp_path):
    path, frames, tforms, calib = scan
    dual = tmp_path / "dt.h5"
    write_sweep(read_tusrec(path), dual)  # .h5 writes DualTrack by default
    sweep = read_sweep(dual)
    assert "images" in h5py.File(dual, "r")
    out_dir = tmp_path / "again"
    out_dir.mkdir()
    write_tusrec(sweep, out_dir / "scan.h5")
    assert (out_dir / "calib_matrix.csv").is_file()
    again = read_sweep(out_dir / "scan.h5")  # dispatches on frames/tforms
    assert np.array_equal(again.frames, frames)
    # float32 storage of tforms (as the challenge) limits agreement to ~1e-5 mm at 300 mm
    np.testing.assert_allclose(
        geometry.apply(again.image_to("Tracker")[:, None], PIXELS), challenge_points(tforms, calib, PIXELS), atol=1e-3
    )  # measured max |diff| 8.5e-06
    # the written calibration of a DualTrack-origin sweep: R_T = D^-1 (DualTrack's image frame plays the tool)
    written = read_tusrec_calibration(out_dir / "calib_matrix.csv")
    np.testing.assert_allclose(written.image_to_tool, geometry.invert(image_centre_offset((SX, SY), (H, W))), atol=1e-12)  # measured: exact (max |diff| 0)


def test_write_tusrec_keeps_calibration_exactly(scan, tmp_path):
    path, _, tforms, calib = scan
    sweep = read_tusrec(path)
    out = tmp_path / "w" / "scan.h5"
    write_tusrec(sweep, out, dtype=np.float64)
    written = read_tusrec_calibration(out.parent / "calib_matrix.csv")
    np.testing.assert_allclose(written.image_to_tool, calib.image_to_tool, atol=1e-12)  # measured max |diff| 1.1e-16
    np.testing.assert_allclose(written.scale, calib.scale, atol=1e-15)  # measured: exact (max |diff| 0)
    np.testing.assert_array_equal(read_tusrec(out).transforms["ProbeToTracker"], tforms)


def test_conversion_helpers_round_trip_and_match_dualtrack_tracking(scan):
    _, _, tforms, calib = scan
    rng = np.random.default_rng(3)
    t = smooth_poses(7, rng)
    np.testing.assert_allclose(dualtrack_to_tusrec_transforms(tusrec_to_dualtrack_transforms(t)), t, atol=1e-9)  # measured max |diff| 5.7e-14
    np.testing.assert_allclose(tusrec_to_dualtrack_transforms(dualtrack_to_tusrec_transforms(t)), t, atol=1e-9)  # measured max |diff| 1.4e-14
    # frame-pair transforms in DualTrack's frame are what DualTrack computes from its own tracking
    tracking = tforms @ calib.image_to_tool @ image_centre_offset()
    for kind, first in (("global", np.zeros(4, int)), ("local", np.arange(4))):
        tus = tusrec_pair_transforms(tforms, calib, kind)
        assert tus.shape == (4, 4, 4)
        dual = geometry.invert(tracking[first]) @ tracking[1:]
        np.testing.assert_allclose(tusrec_to_dualtrack_transforms(tus), dual, atol=1e-9)  # measured max |diff| 8.5e-14 over 2 calls


def test_pair_transforms_follow_the_challenge_definition(scan):
    _, _, tforms, calib = scan
    glob = tusrec_pair_transforms(tforms, calib, "global")
    loc = tusrec_pair_transforms(tforms, calib, "local")
    rt = calib.image_to_tool
    np.testing.assert_allclose(glob[2], np.linalg.inv(rt) @ np.linalg.inv(tforms[0]) @ tforms[3] @ rt, atol=1e-9)  # measured max |diff| 5.7e-14
    np.testing.assert_allclose(loc[2], np.linalg.inv(rt) @ np.linalg.inv(tforms[2]) @ tforms[3] @ rt, atol=1e-9)  # measured max |diff| 3.6e-14
    # chaining local transforms gives the global ones
    np.testing.assert_allclose(glob[3], glob[2] @ loc[3], atol=1e-9)  # measured max |diff| 2.7e-14
    with pytest.raises(ValueError):
        tusrec_pair_transforms(tforms, calib, "sideways")


def _gpe(t_gt, t_pred, pixel_to_image, pixels):
    """SPEC §10.3: mean over frames and pixels of |(T_gt - T_pred) · P_mm| for points P_mm."""
    p = pixel_to_image @ np.concatenate([pixels, np.zeros((len(pixels), 1)), np.ones((len(pixels), 1))], axis=1).T
    ddf_gt = (t_gt @ p)[:, :3] - p[:3]
    ddf_pred = (t_pred @ p)[:, :3] - p[:3]
    return float(np.linalg.norm(ddf_gt - ddf_pred, axis=1).mean())


def test_gpe_is_invariant_to_the_image_origin(scan):
    _, _, tforms, calib = scan
    rng = np.random.default_rng(11)
    noisy = tforms @ geometry.params_to_matrix(rng.normal(0, [1, 1, 1, 2, 2, 2], (len(tforms), 6)), "xyz", degrees=True)
    gt = tusrec_pair_transforms(tforms, calib, "global")
    pred = tusrec_pair_transforms(noisy, calib, "global")
    pixels = geometry.pixel_grid(H, W, step=8)
    tus_pixel_to_mm = calib.scale @ geometry.translation([1, 1, 0])  # 0-based pixel -> TUS-REC image mm
    gpe_tus = _gpe(gt, pred, tus_pixel_to_mm, pixels)
    gpe_dual = _gpe(
        tusrec_to_dualtrack_transforms(gt), tusrec_to_dualtrack_transforms(pred), centred_pixel_to_image((SX, SY), (H, W)), pixels
    )
    assert gpe_tus > 0.5  # the perturbation is not negligible, so the comparison means something
    assert gpe_dual == pytest.approx(gpe_tus, rel=1e-10)  # measured max |diff| 8.9e-16 (rel 1.4e-16) (AMD EPYC); tolerance > 1000x that
    # the DualTrack points differ from the TUS-REC points by the constant offset D
    assert not np.allclose(tus_pixel_to_mm, centred_pixel_to_image((SX, SY), (H, W)))


# ---------------------------------------------------------------------------- bad input


def test_missing_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((2, 4, 5), np.uint8)
    with pytest.raises(InputError) as err:
        read_tusrec(path)
    assert "tforms" in str(err.value) and str(path) in str(err.value)
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 4, 5), np.uint8)
        f["tracking"] = np.tile(np.eye(4), (2, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        read_dualtrack_h5(path)


@pytest.mark.parametrize(
    "dtype, components",
    [(np.uint16, 1), (np.int16, 1), (np.float32, 1), (np.float64, 1), (np.int8, 1), (np.uint32, 1), (np.uint8, 3)],
)
def test_frames_keep_their_pixel_type_through_both_h5_formats(tmp_path, dtype, components):
    rng = np.random.default_rng(3)
    shape = (2, 4, 5) if components == 1 else (2, 4, 5, components)
    if np.dtype(dtype).kind == "f":
        frames = (rng.standard_normal(shape) * 1e3).astype(dtype)
    else:
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    sweep = Sweep(frames, spacing=(0.2, 0.3), transforms={"ProbeToTracker": np.eye(4)},
                  image_to_probe=geometry.scaling([0.2, 0.3, 1.0]))
    write_tusrec(sweep, tmp_path / "scan.h5")
    back = read_tusrec(tmp_path / "scan.h5")
    assert back.frames.dtype == np.dtype(dtype) and back.frames.tobytes() == frames.tobytes()
    write_dualtrack_h5(sweep, tmp_path / "dual.h5")
    back = read_dualtrack_h5(tmp_path / "dual.h5")
    assert back.frames.dtype == np.dtype(dtype) and back.frames.tobytes() == frames.tobytes()


def test_unsupported_frame_types_are_rejected(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((2, 4, 5), np.int64)
        f["tforms"] = np.tile(np.eye(4), (2, 1, 1))
    with pytest.raises(InputError, match="'frames'.*int64"):
        read_tusrec(path)
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 4, 5), np.complex64)
        f["tracking"] = np.tile(np.eye(4), (2, 1, 1))
        f["spacing"] = [0.1, 0.1, 1]
    with pytest.raises(InputError, match="'images'.*complex64"):
        read_dualtrack_h5(path)


@pytest.mark.parametrize(
    "keys, match",
    [
        ({"frames": np.zeros((3, 4, 5), np.uint8), "tforms": np.tile(np.eye(4), (2, 1, 1))}, "tforms"),
        ({"frames": np.zeros((4, 5), np.uint8), "tforms": np.tile(np.eye(4), (2, 1, 1))}, "frames"),
    ],
)
def test_wrong_tusrec_shapes(tmp_path, keys, match):
    path = tmp_path / "shape.h5"
    with h5py.File(path, "w") as f:
        for k, v in keys.items():
            f[k] = v
    with pytest.raises(InputError, match=match):
        read_tusrec(path)


def test_wrong_dualtrack_shapes(tmp_path):
    path = tmp_path / "dims.h5"
    good = {
        "images": np.zeros((2, 4, 5), np.uint8),
        "tracking": np.tile(np.eye(4), (2, 1, 1)),
        "spacing": np.array([0.2, 0.3, 1.0]),
        "dimensions": np.array([5, 4, 1]),
    }
    for key, bad, match in (
        ("dimensions", np.array([4, 5, 1]), "dimensions"),
        ("tracking", np.tile(np.eye(4), (3, 1, 1)), "tracking"),
        ("spacing", np.array([0.0, 0.3, 1.0]), "spacing"),
        ("pixel_to_image", np.eye(3), "pixel_to_image"),
    ):
        with h5py.File(path, "w") as f:
            for k, v in {**good, key: bad}.items():
                f[k] = v
        with pytest.raises(InputError, match=match):
            read_dualtrack_h5(path)
    with h5py.File(path, "w") as f:
        for k, v in good.items():
            f[k] = v
    sweep = read_dualtrack_h5(path)
    # without pixel_to_image the centred default is used: pixel (2, 1.5) is the image centre
    np.testing.assert_allclose(geometry.apply(sweep.image_to_probe, [2.0, 1.5]), 0.0, atol=1e-12)  # measured: exact (max |diff| 0)


def test_bad_calibration_csv(tmp_path, scan):
    path, *_ = scan
    csv = tmp_path / "short.csv"
    csv.write_text("header\n1,0,0,0\n")
    with pytest.raises(InputError, match="10 lines"):
        read_tusrec(path, calib=csv)
    csv.write_text("h\n1,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\nh\n1,0,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\n")
    with pytest.raises(InputError, match="line 2"):
        read_tusrec(path, calib=csv)


def test_tusrec_without_calibration_has_only_poses(tmp_path):
    path = tmp_path / "nocal.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.zeros((2, 4, 5), np.uint8)
        f["tforms"] = np.tile(np.eye(4), (2, 1, 1)).astype(np.float32)
    sweep = read_tusrec(path)
    assert sweep.image_to_probe is None and sweep.spacing is None
    assert list(sweep.transforms) == ["ProbeToTracker"]
    with pytest.raises(InputError, match="image_to_probe|spacing"):
        write_tusrec(sweep, tmp_path / "out.h5")


def test_write_dualtrack_uses_reference_world_for_plus_like_sweeps(tmp_path):
    rng = np.random.default_rng(5)
    probe = smooth_poses(3, rng)
    reference = smooth_poses(3, rng)
    itp = geometry.compose(geometry.params_to_matrix([10, 20, 3, 5, 80, 2], "xyz", degrees=True), geometry.scaling([0.2, 0.25, 1]))
    sweep = Sweep(
        frames=np.zeros((3, 6, 8), np.uint8),
        transforms={"ProbeToTracker": probe, "ReferenceToTracker": reference},
        image_to_probe=itp,
    )
    out = tmp_path / "ref.h5"
    write_dualtrack_h5(sweep, out, world="Reference")
    back = read_dualtrack_h5(out)
    assert back.spacing == pytest.approx((0.2, 0.25))
    np.testing.assert_allclose(back.image_to("Tracker"), sweep.image_to("Reference"), atol=1e-9)  # measured max |diff| 2.8e-17


def test_real_plus_sweep_to_dualtrack_and_tusrec(tmp_path):
    """A real PLUS recording (spine phantom sweep) with the ImageToProbe of PLUS's own volume-reconstruction
    device set: every pixel keeps its Reference position through DualTrack h5 and TUS-REC h5 + csv."""
    from pathlib import Path

    import freehand3d
    from freehand3d.io.plus_config import read_device_set

    plus = Path(freehand3d.__file__).resolve().parent / "data" / "plus"
    sweep = read_sweep(plus / "SpinePhantomFreehand.igs.mha")
    device_set = read_device_set(plus / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml")
    sweep.image_to_probe = device_set.transform("ImageToProbe")
    h, w = sweep.frame_shape
    corners = np.vstack([geometry.frame_corners(h, w), [[w / 2, h / 2]]])
    expected = geometry.apply(sweep.image_to("Reference")[:, None], corners)

    write_dualtrack_h5(sweep, tmp_path / "spine_dt.h5", world="Reference")
    dual = read_sweep(tmp_path / "spine_dt.h5")
    np.testing.assert_array_equal(dual.frames, sweep.frames)
    np.testing.assert_allclose(geometry.apply(dual.image_to("Tracker")[:, None], corners), expected, atol=1e-9)  # measured max |diff| 5.7e-14

    # TUS-REC has no reference frame: write ImageToReference as the tool pose, float64 to compare tightly
    as_tool = Sweep(frames=sweep.frames, transforms={"ProbeToTracker": sweep.transform("ProbeToReference")[0]},
                    image_to_probe=sweep.image_to_probe)
    write_sweep(as_tool, tmp_path / "tus" / "spine.h5", format="tusrec", dtype=np.float64)
    tus = read_sweep(tmp_path / "tus" / "spine.h5")
    np.testing.assert_allclose(geometry.apply(tus.image_to("Tracker")[:, None], corners), expected, atol=1e-9)  # measured max |diff| 5.7e-14


def test_landmark_file(tmp_path):
    from freehand3d.io.tusrec import read_tusrec_landmarks

    path = tmp_path / "landmark_050.h5"
    marks = np.array([[1, 1, 1], [5, 640, 480], [12, 320, 17]], np.int64)
    with h5py.File(path, "w") as f:
        f["RH_Par_L_DtP"] = marks
        f["bad"] = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(read_tusrec_landmarks(path, "RH_Par_L_DtP.h5"), marks)
    with pytest.raises(InputError, match="integers"):
        read_tusrec_landmarks(path)
    with pytest.raises(InputError, match="no landmarks"):
        read_tusrec_landmarks(path, "LH_Per_S_PtD")
