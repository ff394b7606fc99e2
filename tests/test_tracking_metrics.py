"""Hand-computed cases for the TUS-REC and DualTrack tracking metrics."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from freehand3d import geometry
from freehand3d.tracking import metrics

SX, SY = 0.229389190673828, 0.220979690551758  # TUS-REC pixel spacing (SPEC section 9)
S = np.diag([SX, SY, 1.0, 1.0])


def _eye(n):
    return np.tile(np.eye(4), (n, 1, 1))


def _random_tforms(n, seed):
    """Tracker tool -> camera poses of a plausible sweep (mm, degrees of rotation)."""
    rng = np.random.default_rng(seed)
    steps = geometry.params_to_matrix(
        np.concatenate([rng.normal(0, 0.8, (n, 3)), rng.normal(0, 1.5, (n, 3))], axis=1), "xyz", degrees=True
    )
    out = [geometry.translation([10.0, -20.0, 300.0])]
    for k in range(1, n):
        out.append(out[-1] @ steps[k])
    return np.stack(out)


def _tusrec_stacks(tforms, image_to_tool):
    """SPEC 10.2: T_{a<-b} = R_T^-1 tforms[a]^-1 tforms[b] R_T, global (0, n) and local (n-1, n)."""
    inv_rt = np.linalg.inv(image_to_tool)
    inv_tf = np.linalg.inv(tforms)
    glob = np.stack([inv_rt @ inv_tf[0] @ tforms[n] @ image_to_tool for n in range(1, len(tforms))])
    loc = np.stack([inv_rt @ inv_tf[n - 1] @ tforms[n] @ image_to_tool for n in range(1, len(tforms))])
    return glob, loc


def test_identity_prediction_of_identity_truth_has_zero_error():
    eye = _eye(4)
    out = metrics.tusrec(eye, eye, eye, eye, S, landmarks=np.array([[1, 10, 20], [4, 640, 480]]))
    assert out == {"GPE": 0.0, "LPE": 0.0, "GLE": 0.0, "LLE": 0.0}
    poses = _eye(5)
    poses[:, 0, 3] = np.arange(5.0)  # the truth must move for the drift rates to be defined
    d = metrics.drift(poses, poses)
    assert d["FDR_pct"] == 0.0 and d["max_drift_mm"] == 0.0 and d["avg_drift_rate_pct"] == 0.0
    assert metrics.five_point(poses, poses, (480, 640), (SX, SY)) == {"GPE_5pt": 0.0, "LPE_5pt": 0.0}


def test_pure_translation_error_is_the_translation_norm():
    n = 6
    gt = _eye(n - 1)
    gt[:, :3, 3] = [3.0, -4.0, 12.0]  # norm 13
    pred = _eye(n - 1)
    out = metrics.tusrec(pred, pred, gt, gt, S, landmarks=np.array([[2, 1, 1], [5, 320, 200]]))
    for key in ("GPE", "LPE", "GLE", "LLE"):
        assert out[key] == pytest.approx(13.0, abs=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)


def test_one_wrong_frame_is_averaged_over_all_frames():
    n_tf = 8
    gt = _eye(n_tf)
    pred = _eye(n_tf)
    pred[3, 1, 3] = 2.5  # only transform index 3 (frame 4) is off, by 2.5 mm in y
    out = metrics.tusrec(pred, gt, gt, gt, S, landmarks=np.array([[4, 7, 9], [1, 7, 9]]))
    assert out["GPE"] == pytest.approx(2.5 / n_tf, abs=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
    assert out["LPE"] == 0.0
    # landmark on frame 4 sees the full 2.5 mm, the one on frame 1 none
    assert out["GLE"] == pytest.approx(2.5 / 2, abs=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)


def test_rotation_error_at_a_landmark_and_mean_over_pixels():
    # rotation of theta about the z axis through the TUS-REC image origin (pixel (0, 0)):
    # the error of a point at radius r is 2 r sin(theta / 2)
    theta = np.radians(3.0)
    rot = geometry.rigid(Rotation.from_euler("z", theta).as_matrix())
    gt = rot[None]
    pred = _eye(1)
    x, y = 100, 50
    r = np.hypot(x * SX, y * SY)
    out = metrics.tusrec(pred, pred, gt, pred, S, landmarks=np.array([[1, x, y]]))
    # measured max |diff| 2.2e-16 (rel 1.7e-16) (AMD EPYC); tolerance > 1000x that
    assert out["GLE"] == pytest.approx(2 * r * np.sin(theta / 2), rel=1e-12)
    assert out["LLE"] == 0.0
    ys, xs = np.mgrid[1:481, 1:641]
    mean_r = np.hypot(xs * SX, ys * SY).mean()
    # measured max |diff| 8.9e-16 (rel 1.7e-16) (AMD EPYC); tolerance > 1000x that
    assert out["GPE"] == pytest.approx(2 * mean_r * np.sin(theta / 2), rel=1e-12)


def test_chunking_does_not_change_the_result():
    tforms = _random_tforms(7, seed=3)
    rt = geometry.rigid(Rotation.from_euler("xyz", [5, -3, 10], degrees=True).as_matrix(), [1.0, 2.0, 3.0])
    gg, gl = _tusrec_stacks(tforms, rt)
    pg, pl = _tusrec_stacks(_random_tforms(7, seed=4), rt)
    big = metrics.tusrec(pg, pl, gg, gl, S)
    small = metrics.tusrec(pg, pl, gg, gl, S, chunk_points=100_000)  # splits the 307,200 pixels
    frames = metrics.tusrec(pg, pl, gg, gl, S, chunk_points=700_000)  # two frames per chunk
    assert small["GPE"] == pytest.approx(big["GPE"], rel=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
    assert frames["LPE"] == pytest.approx(big["LPE"], rel=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
    assert big["GPE"] > big["LPE"] > 0


def test_five_point_equals_ddf_error_at_the_five_tusrec_pixels():
    """SPEC 10.4/10.5: the 5-point proxy in the DualTrack frame equals the DDF error at the 1-based
    pixels (1,1), (641,1), (1,481), (641,481), (321,241) computed in TUS-REC coordinates."""
    n = 9
    rt = geometry.rigid(Rotation.from_euler("xyz", [20, -7, 95], degrees=True).as_matrix(), [5.0, -3.0, 40.0])
    gt_glob, gt_loc = _tusrec_stacks(_random_tforms(n, seed=10), rt)
    pr_glob, pr_loc = _tusrec_stacks(_random_tforms(n, seed=11), rt)
    # DDF error at the five pixels, computed directly from SPEC 10.3
    pix = np.array([[1, 1], [641, 1], [1, 481], [641, 481], [321, 241]], float)
    pts = S @ np.stack([pix[:, 0], pix[:, 1], np.zeros(5), np.ones(5)])

    def ddf_err(pred, gt):
        ddf_gt = (gt @ pts)[:, :3] - pts[None, :3]
        ddf_pr = (pred @ pts)[:, :3] - pts[None, :3]
        return np.linalg.norm(ddf_gt - ddf_pr, axis=1).mean()

    # DualTrack-frame absolute poses: T_dt = D^-1 T_tus D (SPEC 10.5), with G_0 = I
    d = metrics.dualtrack_centre_offset((SX, SY))
    d_inv = np.linalg.inv(d)
    gt_poses = np.concatenate([np.eye(4)[None], d_inv @ gt_glob @ d])
    pr_poses = np.concatenate([np.eye(4)[None], d_inv @ pr_glob @ d])
    out = metrics.five_point(pr_poses, gt_poses, image_size=(480, 640), spacing=(SX, SY))
    assert out["GPE_5pt"] == pytest.approx(ddf_err(pr_glob, gt_glob), rel=1e-10)  # measured: exact (max |diff| 0, AMD EPYC)
    # measured max |diff| 8.9e-16 (rel 1.8e-16) (AMD EPYC); tolerance > 1000x that
    assert out["LPE_5pt"] == pytest.approx(ddf_err(pr_loc, gt_loc), rel=1e-10)
    assert out["GPE_5pt"] > 1.0  # the two random sweeps really differ


def test_poses_to_tusrec_round_trip_and_origin_invariance():
    n = 6
    rt = np.eye(4)
    glob, loc = _tusrec_stacks(_random_tforms(n, seed=1), rt)
    poses = np.concatenate([np.eye(4)[None], glob])
    g2, l2 = metrics.poses_to_tusrec(poses)
    np.testing.assert_allclose(g2, glob, atol=1e-9)  # measured: exact (max |diff| 0)
    np.testing.assert_allclose(l2, loc, atol=1e-9)  # measured max |diff| 5.1e-14
    # GPE is the same whether both sides are in the TUS-REC or the DualTrack (centred) frame
    pg, pl = _tusrec_stacks(_random_tforms(n, seed=2), rt)
    d = metrics.dualtrack_centre_offset((SX, SY))
    d_inv = np.linalg.inv(d)
    a = metrics.tusrec(pg, pl, glob, loc, S)
    # moving the image origin: points p' = D^-1 p, so the pixel -> mm matrix becomes D^-1 S
    b = metrics.tusrec(d_inv @ pg @ d, d_inv @ pl @ d, d_inv @ glob @ d, d_inv @ loc @ d, d_inv @ S)
    assert b["GPE"] == pytest.approx(a["GPE"], rel=1e-10)  # measured max |diff| 2.7e-15 (rel 5.8e-16) (AMD EPYC); tolerance > 1000x that
    assert b["LPE"] == pytest.approx(a["LPE"], rel=1e-10)  # measured max |diff| 1.8e-15 (rel 4.3e-16) (AMD EPYC); tolerance > 1000x that


def test_drift_hand_computed():
    gt = _eye(4)
    gt[:, 0, 3] = [0.0, 10.0, 20.0, 40.0]
    pred = gt.copy()
    pred[:, 1, 3] = [0.0, 1.0, 1.0, 2.0]  # drift 1, 1, 2 mm perpendicular to the motion
    out = metrics.drift(pred, gt)
    assert out["FDR_pct"] == pytest.approx(100 * 2 / 40)  # measured: exact (max |diff| 0, AMD EPYC)
    assert out["max_drift_mm"] == pytest.approx(2.0)  # measured: exact (max |diff| 0, AMD EPYC)
    assert out["avg_drift_rate_pct"] == pytest.approx(np.mean([10.0, 5.0, 5.0]))  # measured: exact (max |diff| 0, AMD EPYC)
    assert out["final_drift_mm"] == pytest.approx(2.0)  # measured: exact (max |diff| 0, AMD EPYC)


def test_normalised_score():
    gt = _eye(3)
    gt[:, 2, 3] = 4.0
    pred = _eye(3)
    pred[:, 2, 3] = 3.0  # a quarter of the identity error remains
    res = metrics.tusrec_score(pred, pred, gt, gt, S, landmarks=np.array([[1, 5, 5]]))
    assert res["identity"]["GPE"] == pytest.approx(4.0)  # measured: exact (max |diff| 0, AMD EPYC)
    for key in ("GPE*", "LPE*", "GLE*", "LLE*", "final"):
        assert res["scores"][key] == pytest.approx(0.75)  # measured: exact (max |diff| 0, AMD EPYC)
    assert metrics.normalised_scores({"GPE": 8.0}, {"GPE": 4.0})["GPE*"] == pytest.approx(-1.0)  # measured: exact (max |diff| 0, AMD EPYC)


def test_bad_inputs_raise_clear_errors():
    eye = _eye(3)
    with pytest.raises(ValueError, match="shape"):
        metrics.tusrec(eye, eye, _eye(4), eye, S)
    with pytest.raises(ValueError, match="landmark frame"):
        metrics.tusrec(eye, eye, eye, eye, S, landmarks=np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match="not moved"):
        metrics.drift(_eye(3), _eye(3))


def test_all_pixel_errors_stay_within_the_chunk_memory():
    """64 transforms x 307,200 pixels would need 472 MB of float64 DDFs at once; the chunked
    computation peaks at a few chunks of ``chunk_points`` (frame, pixel) pairs."""
    import tracemalloc

    n_tf = 64
    gt = _eye(n_tf)
    gt[:, :3, 3] = [1.0, 2.0, 2.0]  # norm 3
    pred = _eye(n_tf)
    tracemalloc.start()
    try:
        out = metrics.tusrec(pred, pred, gt, gt, S, chunk_points=400_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["GPE"] == pytest.approx(3.0, rel=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
    full = n_tf * 3 * 307_200 * 8
    assert peak < full / 8, f"peak {peak / 2**20:.0f} MB"
