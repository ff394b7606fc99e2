"""Live (incremental) DualTrack tracking against the offline model.

Tests run with threads=1: on an oversubscribed machine every tiny oneDNN call under 2 OpenMP
threads waits ~70 ms at barriers (measured under load average 17 on 2 cores: 56 s vs 2.3 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from freehand3d.errors import InputError
from freehand3d.tracking import DualTrack, predict
from freehand3d.tracking.infer import pixel_to_image
from freehand3d.tracking.live import LiveTracker

sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import refs  # noqa: E402

SPACING = (0.2, 0.25)


@pytest.fixture(scope="module")
def model():
    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    return refs.randomize(DualTrack(cfg), seed=8)


@pytest.fixture(scope="module")
def frames():
    return refs.gen_frames(40, 2024)[:26]


def _offline(frames, model):
    return predict(frames, model, kernel="direct", threads=1)["poses_global"] @ pixel_to_image((480, 640), SPACING)


def test_final_live_trajectory_equals_the_offline_one(model, frames):
    """Default mode (background refinement): one provisional pose per frame on arrival, the
    refinement thread catches up with the newest frame, and the end equals the offline model."""
    import time

    tracker = LiveTracker(model, kernel="direct", spacing=SPACING, threads=1)
    for i, frame in enumerate(frames[:10]):
        pose = tracker.push(frame)
        assert pose.shape == (4, 4)
        # a rigid pose (rotation part orthonormal) whatever it was continued from
        rot = (pose @ np.linalg.inv(tracker.pixel_to_image))[:3, :3]
        # measured max |R R^T - I| = 0.0 over these 10 frames (AMD EPYC); float64 products of rotations
        # drift ~1e-16 per product, so 1e-9 only catches a non-rigid (e.g. averaged) pose
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    tracker.push_many(frames[10:17])  # frames that queued up: one CNN call
    for frame in frames[17:]:
        tracker.push(frame)
    deadline = time.monotonic() + 120  # functional, not a timing test: the thread must catch up
    while (tracker.refined is None or tracker.refined.n < len(frames)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.refined is not None and tracker.refined.n == len(frames)
    assert tracker.trajectory().shape == (len(frames), 4, 4)
    final = tracker.finish()
    offline = _offline(frames, model)
    # float32 rounding only (the same convolutions in another grouping over time): measured
    # 2e-6 mm on translations of ~70 mm, i.e. ~1 float32 ulp; 1e-4 mm allows summation-order spread
    np.testing.assert_allclose(final, offline, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tracker.trajectory(), final, atol=0)
    assert len(tracker.emitted) == len(frames) == len(tracker.latencies_s) == len(tracker.horizons)
    assert all(t >= 0 for t in tracker.latencies_s)
    assert tracker.refinements >= 1 and tracker._thread is None  # finish() stopped the thread


def test_sync_mode_emits_the_offline_answer_for_the_sweep_so_far(model, frames):
    tracker = LiveTracker(model, kernel="direct", spacing=SPACING, threads=1, refine="sync")
    for frame in frames[:14]:
        tracker.push(frame)
    for k in (1, 5, 13):  # frame 5 has only 6 frames of context: provisional tokens everywhere
        truncated = _offline(frames[: k + 1], model)
        np.testing.assert_allclose(tracker.emitted[k], truncated[-1], atol=1e-4, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    assert tracker.horizons == [0] * 14
    # and the live poses really differ from the final ones (context refines them)
    final = tracker.finish()
    assert np.abs(np.array(tracker.emitted[5]) - final[5]).max() > 1e-6


def test_provisional_poses_continue_the_newest_refinement_at_constant_velocity(model, frames):
    """Manual mode, the documented rule: after a refinement over frames 0..j, frame j + m is emitted
    as G_j S^m, S = the mean of the last ``velocity_frames`` relative motions of that refinement;
    the refinement itself is the offline model on the frames so far."""
    from freehand3d import geometry

    tracker = LiveTracker(model, kernel="direct", spacing=SPACING, threads=1, refine="manual", velocity_frames=4)
    first = [tracker.push(f) for f in frames[:3]]
    # exact (atol 0, measured 0): nothing refined yet, so the tracker returns pixel_to_image itself
    np.testing.assert_allclose(first, np.tile(tracker.pixel_to_image, (3, 1, 1)), atol=0)
    assert tracker.horizons == [0, 1, 2]
    ref = tracker.refine()
    assert ref.n == 3
    for f in frames[3:12]:
        tracker.push(f)
    ref = tracker.refine()
    assert ref.n == 12
    cut = predict(frames[:12], model, kernel="direct", threads=1)
    np.testing.assert_allclose(ref.poses, cut["poses_global"], atol=1e-4, rtol=0)  # measured: exact (0)
    step = geometry.params_to_matrix(cut["head_output"][-4:].mean(axis=0), "xyz", degrees=True)
    emitted = tracker.push_many(frames[12:15])
    for m, pose in enumerate(emitted, start=1):
        want = cut["poses_global"][-1] @ np.linalg.matrix_power(step, m) @ tracker.pixel_to_image
        np.testing.assert_allclose(pose, want, atol=1e-4, rtol=0)  # float32 head rounding only (measured 0)
    assert tracker.horizons[-3:] == [1, 2, 3]
    np.testing.assert_allclose(tracker.trajectory()[:12], cut["poses_global"] @ tracker.pixel_to_image, atol=1e-4)
    final = tracker.finish()
    np.testing.assert_allclose(final, _offline(frames[:15], model), atol=1e-4, rtol=0)  # as above


def test_fork_leaves_the_stream_untouched_while_it_keeps_pushing(model, frames):
    """The refinement's state copy: flushing a fork gives the same provisional maps as peek and
    does not disturb the original, which goes on to the same result as an unforked stream."""
    import torch

    from freehand3d.tracking.model.streaming import StreamingCNN
    from freehand3d.tracking.preprocess import local_crops

    cnn = model.local_encoder.cnn.fused_for_inference().eval()
    clip = local_crops(frames[:12], model.config.local_size)[None].transpose(1, 2)
    with torch.inference_mode():
        plain = StreamingCNN(cnn)
        want = torch.cat([plain.push(clip[:, :, :6]), plain.push(clip[:, :, 6:], final=True)], dim=2)
        stream = StreamingCNN(cnn)
        got = [stream.push(clip[:, :, :6])]
        fork = stream.fork()
        peeked = stream.peek(clip)
        got.append(stream.push(clip[:, :, 6:9]))  # the original moves on ...
        flushed = fork.push(clip[:, :, :0], final=True)  # ... while the fork flushes its copy
        got.append(stream.push(clip[:, :, 9:], final=True))
    assert torch.equal(flushed, peeked)
    assert torch.equal(torch.cat(got, dim=2), want)


def test_live_tracker_rejects_wrong_frames_and_use_after_finish(model, frames):
    tracker = LiveTracker(model, kernel="direct", spacing=SPACING, threads=1)
    with pytest.raises(InputError, match="uint8"):
        tracker.push(frames[0].astype(np.float32))
    with pytest.raises(InputError, match="480, 640"):
        tracker.push(np.zeros((240, 320), np.uint8))
    tracker.push(frames[0])
    tracker.push(frames[1])
    tracker.finish()
    with pytest.raises(RuntimeError, match="finished"):
        tracker.push(frames[2])


def test_consumer_tracks_every_frame_and_counts_those_past_the_model_limit(frames):
    """The stream's consumer: every frame offered is tracked in order (batched when they queue up),
    one pose each; frames past max_positions are counted, not tracked, and the stream goes on."""
    from freehand3d.tracking.live import TrackingConsumer

    small = refs.randomize(DualTrack(refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2,
                                                       max_positions=12)), seed=8)
    tracker = LiveTracker(small, kernel="direct", spacing=SPACING, threads=1)
    seen = []
    consumer = TrackingConsumer(tracker, max_batch=4, on_pose=lambda i, pose: seen.append(i))
    for frame in frames[:15]:
        consumer.offer(frame, received=0.0)
    final = consumer.close()
    assert consumer.beyond_limit == 3 and len(tracker.emitted) == 12 and seen == list(range(12))
    assert "3 later frames not tracked" in consumer.summary()
    np.testing.assert_allclose(final, _offline(frames[:12], small), atol=1e-4, rtol=0)  # as above


def test_replayed_stream_tracked_through_run_live_skips_nothing(model, frames):
    """The ``stream --track`` path in-process: ReplayServer -> IGTLSource -> run_live -> tracking
    stage. Every frame sent gets a pose on arrival (0 skipped, 0 dropped), and the final
    trajectory equals the offline model on the frames as received."""
    from freehand3d.stream.igtl import IGTLSource, ReplayServer
    from freehand3d.stream.live import run_live
    from freehand3d.sweep import Sweep
    from freehand3d.tracking.live import tracking_stage

    n = 20
    sweep = Sweep(frames=frames[:n], spacing=SPACING, timestamps=np.arange(n) * 0.05,
                  transforms={"ProbeToTracker": np.tile(np.eye(4), (n, 1, 1))})
    tracker = LiveTracker(model, kernel="direct", spacing=SPACING, threads=1)
    stage, consumer = tracking_stage(tracker)
    with ReplayServer(sweep, port=0, fps=200) as server:
        server.start(accept_timeout=300)  # a hang guard: the client may first compile its CRC kernel
        result = run_live(IGTLSource(port=server.port, reconnect=False), consumers=[stage], max_frames=n)
    stats = {s["name"]: s for s in result.stages}["tracking"]
    assert result.frames == n and stats["processed"] == n and stats["dropped"] == stats["dropped_at_exit"] == 0
    assert len(tracker.emitted) == len(consumer.latencies_s) == n and consumer.beyond_limit == 0
    np.testing.assert_allclose(tracker.trajectory(), _offline(frames[:n], model), atol=1e-4, rtol=0)  # as above


@pytest.mark.slow
def test_stream_track_hook_tracks_every_frame_of_a_replayed_sweep(tmp_path):
    """``freehand3d stream --track CKPT`` on a loopback replay: every frame tracked, the final poses
    written, equal to the offline trajectory of the same frames."""
    import torch

    from _bad_inputs import run_cli
    from freehand3d.stream.igtl import ReplayServer
    from freehand3d.sweep import Sweep
    from freehand3d.tracking import load_dualtrack

    tiny = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt"
    frames = refs.gen_frames(40, 2024)[:8]
    mats = np.tile(np.eye(4), (8, 1, 1))
    sweep = Sweep(frames=frames, spacing=(0.2, 0.2), timestamps=np.arange(8) * 0.05,
                  transforms={"ProbeToTracker": mats})
    out = tmp_path / "poses.npy"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring
    try:
        with ReplayServer(sweep, port=0, fps=0) as server:
            server.start(accept_timeout=600)  # the model loads and its kernels are measured first
            res = run_cli(["stream", "--port", str(server.port), "--track", str(tiny), "--track-output", str(out),
                           "--frames", "8", "--no-reconnect", "--image-timeout", "300"])
        assert res.code == 0, res.stderr
        assert "tracking (tiny, fp32): 8 frames" in res.stdout
        poses = np.load(out)
        offline = predict(frames, load_dualtrack(tiny), kernel="direct", threads=1)["poses_global"]
    finally:
        torch.set_num_threads(before)
    # the stream carries no spacing here: both use the TUS-REC default
    from freehand3d.tracking.infer import TUSREC_SPACING

    # float32 rounding (streamed vs one-piece CNN): measured ~1e-5 mm; 1e-3 mm bound
    np.testing.assert_allclose(poses, offline @ pixel_to_image((480, 640), TUSREC_SPACING), atol=1e-3)
