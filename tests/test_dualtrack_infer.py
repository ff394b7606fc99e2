"""DualTrack preprocessing, pose composition and sweep tracking."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from freehand3d.errors import InputError
from freehand3d.sweep import Sweep
from freehand3d.tracking import DualTrack, compose_poses, preprocess, track
from freehand3d.tracking.infer import TUSREC_SPACING, pixel_to_image, predict
from freehand3d.tracking.preprocess import global_frames


sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import refs  # noqa: E402


@pytest.fixture(scope="module")
def frames40():
    frames = refs.gen_frames(40, 2024)
    info = json.loads((refs.HERE / "fixture_2024.info.json").read_text())
    assert hashlib.sha256(frames.tobytes()).hexdigest() == info["frames_sha256"]  # the fixture's sweep
    return frames


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_reproduces_the_official_inputs(frames40):
    fx = refs.fixture()
    np.testing.assert_array_equal(fx["frames"], frames40)
    local, glob = preprocess(frames40)  # 2024 defaults: variant B, norm (0, 1)
    assert local.shape == (1, 40, 1, 256, 256) and glob.shape == (1, 40, 1, 224, 224)
    assert local.dtype == glob.dtype == torch.float32
    np.testing.assert_array_equal(local[0, :, 0].numpy(), fx["local_input"])  # bit-exact
    np.testing.assert_allclose(glob[0, :, 0].numpy(), fx["global_input"], atol=1e-6, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)


def test_local_branch_is_a_centre_crop_scaled_to_unit_range(frames40):
    local, _ = preprocess(frames40[:2])
    expected = frames40[:2, 112:368, 192:448].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(local[0, :, 0].numpy(), expected)


def test_global_variants_and_normalisation(frames40):
    from skimage.transform import resize

    frames = frames40[:3]
    a = global_frames(frames, "A")[:, 0].numpy()
    # variant A: 50-px border crop, skimage resize, truncation to uint8, /255
    ref = (resize(frames[1, 50:-50, 50:-50], (224, 224)) * 255).astype(np.uint8) / np.float32(255)
    np.testing.assert_array_equal(a[1], ref.astype(np.float32))
    # measured: exact (max |diff| 0, AMD EPYC)
    assert np.allclose(a * 255, np.round(a * 255), atol=1e-4)  # multiples of 1/255
    b = global_frames(frames, "B")
    c = global_frames(frames, "C", norm=(0.5, 0.25))  # C is never normalised
    assert torch.equal(b, c)
    assert not torch.allclose(global_frames(frames, "A"), b, atol=1e-2)
    bn = global_frames(frames, "B", norm=(0.5, 0.25))
    assert torch.allclose(bn, (b - 0.5) / 0.25, atol=1e-6)  # measured: exact (max |diff| 0, AMD EPYC)
    with pytest.raises(ValueError, match="variant"):
        global_frames(frames, "D")


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((3, 480, 600), np.uint8), "640x480 frames"),
        (np.zeros((3, 480, 640), np.float32), "uint8"),
        (np.zeros((480,), np.uint8), "shape"),
    ],
)
def test_preprocess_rejects_wrong_frames(frames, match):
    with pytest.raises(InputError, match=match):
        preprocess(frames)


# ----------------------------------------------------------------------------- poses


def test_compose_poses_hand_computed_cases():
    head = np.array([[1.0, 2.0, 3.0, 0, 0, 0], [0, 0, 0, 0, 0, 90.0], [1.0, 0, 0, 0, 0, 0]])
    poses_global, poses_local = compose_poses(torch.from_numpy(head)[None])
    assert poses_global.shape == poses_local.shape == (4, 4, 4) and poses_global.dtype == np.float64
    np.testing.assert_array_equal(poses_global[0], np.eye(4))
    np.testing.assert_allclose(poses_global[1][:3, 3], [1, 2, 3])  # measured: exact (max |diff| 0, AMD EPYC)
    # after a 90 deg turn about z, a step along x of the new frame moves along +y of frame 0
    # measured max |diff| 2.2e-16 (rel 2.2e-16) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(poses_global[3][:3, 3], [1, 3, 3], atol=1e-12)
    # measured max |diff| 2.2e-16 (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(poses_global[3][:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(poses_local[3][:3, 3], [1, 0, 0])  # measured: exact (max |diff| 0, AMD EPYC)
    # extrinsic x-y-z order: R = Rz Ry Rx
    angles = np.array([[0, 0, 0, 10.0, 20.0, 30.0]])
    rz, ry, rx = (Rotation.from_euler(a, d, degrees=True).as_matrix() for a, d in (("z", 30), ("y", 20), ("x", 10)))
    # measured max |diff| 2.2e-16 (rel 2.5e-16) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(compose_poses(angles)[0][1][:3, :3], rz @ ry @ rx, atol=1e-12)


def test_compose_poses_matches_the_official_fixture():
    fx = refs.fixture()
    poses_global, poses_local = compose_poses(fx["head_output"])
    # measured max |diff| 6.6e-06 (rel 1.0e-06) (AMD EPYC); tolerance 15.2x that
    np.testing.assert_allclose(poses_global, fx["poses_global"], atol=1e-4, rtol=0)
    # measured max |diff| 5.7e-08 (rel 5.7e-08) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(poses_local, fx["poses_local"], atol=1e-4, rtol=0)
    # upstream's float32 storage, replicated, is bit-exact
    rounded_global, rounded_local = compose_poses(fx["head_output"], round_float32=True)
    np.testing.assert_array_equal(rounded_global.astype(np.float32), fx["poses_global"])
    np.testing.assert_array_equal(rounded_local.astype(np.float32), fx["poses_local"])


# ----------------------------------------------------------------------------- tracking


@pytest.fixture(scope="module")
def small_model():
    return refs.randomize(DualTrack(refs.small_config()), seed=21)


def test_track_returns_image_to_reference_in_the_centred_dualtrack_frame(small_model, frames40):
    frames = frames40[:20]
    sweep = Sweep(frames=frames, spacing=(0.2, 0.3), timestamps=np.arange(20) * 0.05,
                  transforms={"ProbeToTracker": np.tile(np.eye(4), (20, 1, 1))}, source="sweep.igs.mha")
    tracked = track(sweep, small_model, device="cpu")
    assert isinstance(tracked, Sweep) and len(tracked) == 20
    assert list(tracked.transforms) == ["ImageToReference"]
    np.testing.assert_array_equal(tracked.timestamps, sweep.timestamps)
    assert tracked.spacing == (0.2, 0.3) and tracked.metadata["DualTrackPreset"] == "test-small"
    image_to_ref = tracked.transforms["ImageToReference"]
    # frame 0 is the reference: its centre pixel is the origin, a pixel right of it is +sx in x
    np.testing.assert_allclose(image_to_ref[0] @ [319.5, 239.5, 0, 1], [0, 0, 0, 1], atol=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
    # measured max |diff| 2.8e-15 (rel 1.4e-14) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(image_to_ref[0] @ [320.5, 240.5, 0, 1], [0.2, 0.3, 0, 1], atol=1e-12)
    # later frames: absolute pose composed from the model's own output
    # this small test network takes 16x16 crops and 16x16 global frames
    local = torch.from_numpy(frames[:, 232:248, 312:328].astype(np.float32) / 255)[None, :, None]
    glob = global_frames(frames, "B", size=16)[None]
    with torch.inference_mode():
        head = small_model(local, glob)["head_output"]
    # Two checks, so that each tolerance follows from its own error model:
    # (a) the sweep's transform is exactly the composition of predict()'s head (same machine, same
    #     kernels: deterministic, float64 composition -> 1e-12);
    result = predict(frames, small_model, device="cpu")
    expected = compose_poses(result["head_output"])[0] @ pixel_to_image((480, 640), (0.2, 0.3))
    np.testing.assert_allclose(image_to_ref, expected, atol=1e-12, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    # (b) predict()'s float32 head equals the plain forward's up to float32 rounding. predict folds
    #     BatchNorm, uses channels-last and tiles the CNN, so every reduction sums in another order:
    #     the bound for a length-K float32 dot product is ~K eps |terms|, in practice ~sqrt(K) eps.
    #     The layers here have K <= 576 (sqrt ~ 24), so allow 64 eps32 relative to the largest head
    #     value (3.3 -> 2.5e-5). Measured: 9.5e-7 on an AMD EPYC, where the composed 4x4 differed by
    #     2.3e-6 (2.4x the head); the Intel Xeon's 1.30e-5 on the composed 4x4 thus means a head
    #     difference of ~5e-6, 5x inside this bound.
    eps32 = float(np.finfo(np.float32).eps)
    h32 = head[0].double().numpy()
    # measured max |diff| 9.5e-07 (rel 2.5e-06) (AMD EPYC); tolerance 26.2x that
    np.testing.assert_allclose(result["head_output"], h32, atol=64 * eps32 * np.abs(h32).max(), rtol=0)
    poses_global, _ = compose_poses(head)
    assert np.abs(poses_global[-1] - np.eye(4)).max() > 1e-3  # a real trajectory, not identity


def test_track_is_independent_of_cnn_tiling_and_dtype_flows(small_model, frames40):
    frames = frames40[:24]
    whole = predict(frames, small_model, cnn_tile=0)
    tiled = predict(frames, small_model, cnn_tile=4)  # 6 tiles, each reading up to 4 + 2 * 17 frames
    np.testing.assert_allclose(tiled["head_output"], whole["head_output"], atol=1e-5, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    assert np.abs(whole["head_output"]).max() > 1e-2
    double = predict(frames[:6], small_model, dtype=torch.float64)
    assert next(small_model.parameters()).dtype == torch.float64
    single = predict(frames[:6], small_model, dtype=torch.float32)
    # measured max |diff| 4.7e-07 (rel 7.8e-07) (AMD EPYC); tolerance 214x that
    np.testing.assert_allclose(single["head_output"], double["head_output"], atol=1e-4, rtol=0)


def test_predict_with_winograd_matches_the_direct_convolutions(frames40, monkeypatch):
    from freehand3d.tracking import infer
    from freehand3d.tracking.model import winograd

    calls = []
    real = winograd.winograd_conv3d
    monkeypatch.setattr(winograd, "winograd_conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(infer, "WINOGRAD_MIN_CHANNELS", 4)  # the small network's widths
    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    model = refs.randomize(DualTrack(cfg), seed=8)
    frames = frames40[:12]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        direct = predict(frames, model, dtype=dtype, cnn_tile=5, winograd=False)["head_output"]
        assert not calls
        fast = predict(frames, model, dtype=dtype, cnn_tile=5, kernel="winograd")["head_output"]
        assert len(calls) == 13 * 3  # 13 stride-1 3x3x3 convs, 3 CNN tiles
        calls.clear()
        assert np.abs(direct).max() > 1e-2
        # measured max |diff| 6.6e-07 (rel 3.1e-06) (AMD EPYC); tolerance 40.3x that
        np.testing.assert_allclose(fast, direct, atol=tol * np.abs(direct).max(), rtol=0)
        # streamed (the default): 12 frames in pieces of 5 -> 3 pushes per conv, same result
        streamed = predict(frames, model, dtype=dtype, kernel="winograd", piece=5)["head_output"]
        assert len(calls) == 13 * 3
        calls.clear()
        # measured max |diff| 6.6e-07 (rel 3.1e-06) (AMD EPYC); tolerance 40.3x that
        np.testing.assert_allclose(streamed, direct, atol=tol * np.abs(direct).max(), rtol=0)


def test_track_raw_frames_uses_the_tusrec_spacing(small_model, frames40):
    with pytest.warns(UserWarning, match="TUS-REC"):
        tracked = track(frames40[:3], small_model)
    assert tracked.spacing == TUSREC_SPACING


def test_track_bad_input_gives_clear_errors(small_model, frames40):
    with pytest.raises(InputError, match="at least 2 frames") as err:
        track(Sweep(frames=frames40[:1], source="one.igs.mha"), small_model)
    assert err.value.path == "one.igs.mha"
    with pytest.raises(InputError, match="640x480"):
        track(Sweep(frames=np.zeros((4, 240, 320), np.uint8)), small_model)
    short = DualTrack(refs.small_config(max_positions=8))
    with pytest.raises(InputError, match="exceeds the 8 frames"):
        track(frames40[:9], short)


@pytest.mark.slow
def test_predict_from_raw_frames_keeps_float64_exactness(frames40):
    """The full inference path (preprocessing from uint8, BatchNorm folding, channels-last)
    against the official float64 outputs (tiling is checked on small networks)."""
    from freehand3d.tracking import load_dualtrack

    fx = refs.fixture()
    model = load_dualtrack(refs.official_weights("dualtrack-2024"))
    out = predict(frames40, model, dtype=torch.float64)
    # measured max |diff| (AMD EPYC, AVX2): head 2.8e-14 (atol 1e-10: 3500x); poses (mm, up to 53.5)
    # global 6.6e-6 / local 5.7e-8, the fixture's float32 rounding (atol 1e-4: 15x)
    np.testing.assert_allclose(out["head_output"], fx["head_output"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(out["poses_global"], fx["poses_global"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["poses_local"], fx["poses_local"], atol=1e-4, rtol=0)
    direct = predict(frames40, model, dtype=torch.float64, winograd=False)  # no Winograd F(2x2,3x3)
    # measured max |diff| 3.2e-14 (AMD EPYC; atol 1e-10: 3000x)
    np.testing.assert_allclose(direct["head_output"], fx["head_output"], atol=1e-10, rtol=0)
