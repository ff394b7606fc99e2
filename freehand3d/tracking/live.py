"""Live sensorless tracking: DualTrack on frames as they arrive, with bounded latency.

The model is bidirectional over time (the local CNN looks 17 frames ahead; the temporal transformer
and the fusion decoder attend over the whole sweep), so the pose of the newest frame is never
final while frames keep coming. :class:`LiveTracker` splits the work in two:

**Arrival path** (:meth:`LiveTracker.push` / :meth:`~LiveTracker.push_many`, O(1) per frame, the
latency of every frame):

1. the frame's local crop goes through the local 3-D CNN *incrementally*
   (:class:`~freehand3d.tracking.model.streaming.StreamingCNN`: each temporal conv keeps the last
   two input frames it saw, so one new frame costs one frame of CNN work); the frame whose temporal
   receptive field this frame completes (17 frames back for the DualTrack layout) gets its final
   token; every ``global_stride``-th frame also goes through the global 2-D CNN once;
2. the pose of the new frame is emitted at once: the newest *refined* trajectory (below), which
   covers the frames 0..j the last refinement saw, continued to frame k > j at constant velocity
   -- ``G_k = G_j S^(k-j)``, S the mean of the model's last ``velocity_frames`` relative motions
   of that refinement (mean of the 6 parameters, turned into a matrix). Before the first
   refinement it is frame 0's pose. With ``refine="sync"`` a refinement runs before every
   emission instead, and the emitted pose is exactly the offline model's answer for the sweep cut
   after frame k (unbounded cost: the previous behaviour).

**Refinement** (:meth:`LiveTracker.refine`, O(N), asynchronous: a background thread with
``refine="background"``, the default; never blocks the arrival path beyond a state copy of a few
microseconds): takes a consistent copy of the stream's state
(:meth:`StreamingCNN.fork`), computes provisional tokens for the frames whose receptive field is
still open as if the sweep ended now (the end-of-stream zero padding), runs the temporal
transformer, the global transformer over the global frames so far, the fusion decoder, the head and
the pose composition over all N frames, and publishes the trajectory. So the refined pose of every
frame j < N is the offline model's answer for the sweep cut after frame N-1, and every earlier
pose is refined as context grows (:meth:`trajectory`). Refinements follow each other as fast as
the CPU allows (``refine_every`` new frames apart at least); the thread runs at a lower priority
(``refine_nice``) so the arrival path wins the CPU when they compete.

:meth:`finish` stops the refinement, flushes the stream (the real end of the sweep) and runs the
full decoder once: the final trajectory equals :func:`freehand3d.tracking.predict` on the same
frames up to float32 summation order (tested to 1e-4 mm; docs/tracking.md gives the measured
GPE distance). The distance of the poses emitted on arrival from that final trajectory is what
live tracking costs.

Threads: torch's intra-op threads default to 1 here: the arrival path and the refinement each run
on their own core (a 2-core machine: one each; the OpenIGTLink receiver is light).

Example
-------
>>> tracker = LiveTracker(model, spacing=(0.2, 0.2))          # doctest: +SKIP
>>> for frame in frames:                                     # doctest: +SKIP
...     pose = tracker.push(frame)                           # (4, 4) ImageToReference of this frame
>>> final = tracker.finish()                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from freehand3d.errors import InputError
from freehand3d.tracking.infer import (
    TUSREC_SPACING,
    _num_threads,
    _pool_maps,
    _resolve_precision,
    compose_poses,
    inference_cnns,
    pixel_to_image,
)
from freehand3d.tracking.model.streaming import StreamingCNN
from freehand3d.tracking.preprocess import global_frames, local_crops

__all__ = ["LiveTracker", "TrackingConsumer", "tracking_stage", "StreamTracking", "REFINE_MODES",
           "refined_latencies"]

#: ``refine`` values of :class:`LiveTracker`
REFINE_MODES = ("background", "sync", "manual")


@dataclass(frozen=True)
class Refinement:
    """One published refinement: the model's poses of frames 0..n-1 given those n frames."""

    n: int  #: frames it saw
    poses: np.ndarray  #: (n, 4, 4) DualTrack poses G (frame-k image mm -> frame-0 image mm)
    step: np.ndarray  #: (4, 4) constant-velocity step S used to continue it past frame n-1
    cpu_s: float  #: CPU seconds of the refining thread
    wall_s: float  #: seconds from its state copy to its publication


class LiveTracker:
    """Incremental DualTrack with a bounded-latency arrival path (see the module docstring).

    Parameters
    ----------
    model : a loaded :class:`~freehand3d.tracking.DualTrack`.
    device, precision, kernel : as for :func:`freehand3d.tracking.predict`.
    threads : torch intra-op threads (default 1: the arrival path and the refinement thread each
        take one core); None keeps torch's setting.
    spacing : (sx, sy) mm/px for the ImageToReference poses (default TUS-REC's).
    frame_shape : (H, W) of the frames (DualTrack needs 480 x 640).
    refine : ``"background"`` (default: a refinement thread, O(1) arrival path), ``"sync"`` (refine
        before every emission: emitted = offline answer for the sweep so far, O(N) per frame),
        ``"manual"`` (only when :meth:`refine` is called; for tests and custom schedules).
    refine_every : the background refinement waits for at least this many new frames.
    velocity_frames : relative motions averaged into the constant-velocity step.
    refine_nice : niceness added to the refinement thread (Linux; 0 = none).

    Attributes
    ----------
    emitted : list of (4, 4) ImageToReference poses, the one returned for each frame on arrival.
    horizons : per emitted pose, how many frames past the newest refined frame it was continued
        (0: the pose is a refinement's own).
    latencies_s : seconds from each frame's arrival (the ``push``/``push_many`` call, or the given
        ``arrival`` times, :func:`time.perf_counter` values) to its pose.
    arrival_cpu_s : CPU seconds of the arrival path (the thread calling push), all frames.
    refinements : number of refinements published; ``refine_cpu_s`` their CPU seconds.
    """

    def __init__(self, model, device="cpu", precision: str | None = None, kernel: str = "auto",
                 threads: int | None = 1, spacing=None, frame_shape=(480, 640), refine: str = "background",
                 refine_every: int = 1, velocity_frames: int = 8, refine_nice: int = 10):
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
        if velocity_frames < 1 or refine_every < 1:
            raise ValueError("velocity_frames and refine_every must be >= 1")
        self.model = model
        self.cfg = model.config
        params = next(model.parameters())
        self.device = torch.device(device)
        self.precision, self.dtype = _resolve_precision(precision, None, params.dtype, False)
        self.threads = threads
        model.to(device=self.device, dtype=self.dtype).eval()
        with _num_threads(threads) as n_threads:
            self.local_cnn, self.global_cnn, self.conv_dtype, self.kernels = inference_cnns(
                model, self.device, self.precision, self.dtype, kernel, n_threads)
        self.spacing = tuple(float(v) for v in (spacing or TUSREC_SPACING))
        self.pixel_to_image = pixel_to_image(frame_shape, self.spacing)
        self.frame_shape = tuple(frame_shape)
        self.mode = refine
        self.refine_every = int(refine_every)
        self.velocity_frames = int(velocity_frames)
        self.refine_nice = int(refine_nice)
        self.stream = StreamingCNN(self.local_cnn)
        self._warm_up()
        # arrival path -> refinement: CNN maps of frames whose receptive field is complete, and the
        # frames the global CNN reads (index, uint8 frame); taken over under the lock
        self._maps: list[torch.Tensor] = []
        self._global_frames: list[tuple[int, np.ndarray]] = []
        # refinement side only: (1, k, pool_dim) tokens of the frames so far with a complete
        # receptive field, and (1, m, C) global-CNN features
        self.final_tokens: list[torch.Tensor] = []
        self.global_feats: list[torch.Tensor] = []
        self._refine_lock = threading.Lock()
        self.n = 0
        self.finished = False
        self.emitted: list[np.ndarray] = []
        self.horizons: list[int] = []
        self.latencies_s: list[float] = []
        self.arrival_cpu_s = 0.0
        self.refinements = 0
        self.refine_cpu_s = 0.0
        self.refined: Refinement | None = None
        #: (time.time() when published, frames it saw) per refinement: when a frame's own pixels
        #: first reached a pose (see :func:`refined_latencies`)
        self.published: list[tuple[float, int]] = []
        self.head: np.ndarray | None = None
        self._final: np.ndarray | None = None
        self._like = None
        self._cond = threading.Condition()  # guards the stream state, the token lists and n
        self._stop = False
        self._error: BaseException | None = None
        self._thread = None
        if refine == "background":
            self._thread = threading.Thread(target=self._refine_loop, daemon=True, name="freehand3d-live-refine")
            self._thread.start()

    def _warm_up(self) -> None:
        """Run every shape the arrival path and a refinement's flush will see once, on zero frames
        and a throwaway stream, so that oneDNN builds its kernels now and not while the first
        frames of a live stream wait (measured: the first frame otherwise took up to 2.7 s)."""
        blank = np.zeros((1, *self.frame_shape), np.uint8)
        with _num_threads(self.threads), torch.inference_mode():
            crops = local_crops(blank, self.cfg.local_size, device=self.device).to(self.conv_dtype)[None]
            zero = crops.transpose(1, 2)  # exactly what push_many feeds the stream
            stream = StreamingCNN(self.local_cnn)
            for _ in range(self.stream.delay + 3):
                stream.push(zero)
            maps = stream.fork().push(zero[:, :, :0], final=True)
            _pool_maps(self.model.local_encoder, maps, self.dtype)

    # ------------------------------------------------------------------ arrival path

    def push(self, frame: np.ndarray, arrival: float | None = None) -> np.ndarray:
        """Add one (H, W) uint8 frame; returns its (4, 4) ImageToReference pose."""
        return self.push_many(np.asarray(frame)[None], None if arrival is None else [arrival])[-1]

    def push_many(self, frames: np.ndarray, arrivals=None) -> np.ndarray:
        """Add (k, H, W) uint8 frames that arrived together (e.g. queued while the previous ones were
        processed; one CNN call serves them all). Returns their (k, 4, 4) poses."""
        if self.finished:
            raise RuntimeError("the tracker has finished; start a new LiveTracker for a new sweep")
        if self._error is not None:
            raise self._error
        start, cpu0 = time.perf_counter(), time.thread_time()
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise InputError(f"live frames must be (k, {self.frame_shape[0]}, {self.frame_shape[1]}) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        k = len(frames)
        if self.n + k > self.cfg.max_positions:
            raise InputError(f"the {self.cfg.name} model supports {self.cfg.max_positions} frames per sweep")
        with _num_threads(self.threads), torch.inference_mode():
            crops = local_crops(frames, self.cfg.local_size, device=self.device).to(self.conv_dtype)[None]
            like = crops.transpose(1, 2)
            stride = self.cfg.global_stride
            chosen = [(i, frames[i - self.n].copy()) for i in range(self.n, self.n + k) if i % stride == 0]
            # the stream's state changes under the lock: a refinement copies it whole, before or after
            with self._cond:
                maps = self.stream.push(like)
                if maps.shape[2]:
                    self._maps.append(maps)  # pooled to tokens by the refinement, off this path
                self._global_frames.extend(chosen)  # through the global CNN by the refinement
                self._like = like
                self.n += k
                self._cond.notify_all()
            if self.mode == "sync":
                self.refine()
            poses, horizons = self._continue(self.n - k, self.n)
        self.arrival_cpu_s += time.thread_time() - cpu0
        now = time.perf_counter()
        arrivals = [start] * k if arrivals is None else list(arrivals)
        out = poses @ self.pixel_to_image
        for pose, h, t0 in zip(out, horizons, arrivals):
            self.emitted.append(pose)
            self.horizons.append(h)
            self.latencies_s.append(now - t0)
        return out

    def _continue(self, lo: int, hi: int):
        """DualTrack poses of frames lo..hi-1 from the newest refinement, continued at constant
        velocity past its last frame; and how far past it each one is."""
        ref = self.refined
        if ref is None or ref.n < 2:
            return np.tile(np.eye(4), (hi - lo, 1, 1)), [max(i, 0) for i in range(lo, hi)]
        poses, horizons = [], []
        last = ref.poses[ref.n - 1]
        for i in range(lo, hi):
            if i < ref.n:
                poses.append(ref.poses[i])
                horizons.append(0)
            else:
                poses.append(last @ np.linalg.matrix_power(ref.step, i - ref.n + 1))
                horizons.append(i - ref.n + 1)
        return np.stack(poses), horizons

    # ------------------------------------------------------------------ refinement

    def refine(self) -> Refinement | None:
        """Refine every pose from all frames so far (O(N); thread-safe against push). Returns the
        published :class:`Refinement` (None with fewer than 2 frames)."""
        with self._refine_lock:
            return self._refine()

    def _refine(self) -> Refinement | None:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        with self._cond:
            n = self.n
            if n < 2:
                return None
            fork = self.stream.fork()
            maps, self._maps = self._maps, []
            gframes, self._global_frames = self._global_frames, []
            like = self._like
        with _num_threads(self.threads), torch.inference_mode():
            self._absorb(maps, gframes)
            tokens = list(self.final_tokens)
            pending = fork.push(like[:, :, :0], final=True)  # provisional tokens: as if the sweep ended now
            if pending.shape[2]:
                tokens.append(_pool_maps(self.model.local_encoder, pending, self.dtype))
            head = self._decode(torch.cat(tokens, dim=1), self.global_feats, n)
        poses = compose_poses(head)[0]
        from freehand3d import geometry

        step = geometry.params_to_matrix(head[-self.velocity_frames:].mean(axis=0), "xyz", degrees=True)
        ref = Refinement(n, poses, step, time.thread_time() - cpu0, time.perf_counter() - t0)
        if self.refined is None or ref.n >= self.refined.n:
            self.refined = ref
        self.published.append((time.time(), n))
        self.refinements += 1
        self.refine_cpu_s += ref.cpu_s
        return ref

    def _absorb(self, maps, gframes) -> None:
        """Pool the new final CNN maps into tokens and run the new global frames through the global
        CNN (refinement side: batched, off the arrival path)."""
        if maps:
            self.final_tokens.append(_pool_maps(self.model.local_encoder, torch.cat(maps, dim=2), self.dtype))
        if gframes:
            batch = global_frames(np.stack([f for _, f in gframes]), self.cfg.global_variant, self.cfg.global_norm,
                                  self.cfg.global_size, device=self.device).to(self.dtype)[None]
            self.global_feats.append(self.model.global_encoder.frame_features(batch, cnn=self.global_cnn))

    def _decode(self, tokens: torch.Tensor, feats: list[torch.Tensor], n: int) -> np.ndarray:
        model = self.model
        local_features = model.local_encoder.encode_tokens(tokens)
        indices = model.global_indices(n, device=self.device)
        global_features = model.global_encoder.encode_features(torch.cat(feats, dim=1), indices)
        return model.decode(local_features, global_features)["head_output"][0].double().cpu().numpy()

    def _refine_loop(self):
        if self.refine_nice and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
            try:  # Linux: niceness is per thread
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.refine_nice)
            except OSError:
                pass
        try:
            done = 0
            while True:
                with self._cond:
                    while not self._stop and (self.n < 2 or self.n - done < self.refine_every):
                        self._cond.wait(0.1)
                    if self._stop:
                        return
                ref = self.refine()
                done = ref.n if ref is not None else done
        except BaseException as exc:  # noqa: BLE001 - raised by the next push / finish
            self._error = exc

    def _stop_refining(self):
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ end

    def finish(self) -> np.ndarray:
        """Stop refining, flush the stream (the end of the sweep) and return the final (N, 4, 4)
        trajectory, equal to the offline :func:`~freehand3d.tracking.predict` on the same frames."""
        if not self.finished:
            self._stop_refining()
            with self._refine_lock:
                self._finish()
            self.finished = True
        return self._final.copy()

    def _finish(self) -> None:
        if self.n < 2:
            self._final = np.tile(self.pixel_to_image, (self.n, 1, 1))
            return
        with _num_threads(self.threads), torch.inference_mode():
            self._absorb(self._maps, self._global_frames)
            self._maps, self._global_frames = [], []
            maps = self.stream.push(self._like[:, :, :0], final=True)
            if maps.shape[2]:
                self.final_tokens.append(_pool_maps(self.model.local_encoder, maps, self.dtype))
            self.head = self._decode(torch.cat(self.final_tokens, dim=1), self.global_feats, self.n)
        self._final = compose_poses(self.head)[0] @ self.pixel_to_image

    def close(self) -> None:
        """Stop the refinement thread without finishing (e.g. after an error elsewhere)."""
        try:
            self._stop_refining()
        except BaseException:  # noqa: BLE001 - closing after a failure
            pass

    def trajectory(self) -> np.ndarray:
        """Current (N, 4, 4) ImageToReference estimate of every frame so far: the final one after
        :meth:`finish`, else the newest refinement continued to the newest frame."""
        if self._final is not None:
            return self._final.copy()
        return self._continue(0, self.n)[0] @ self.pixel_to_image

    def stats(self) -> dict:
        """Per-frame costs and counts so far (for summaries and benchmarks)."""
        n = max(len(self.emitted), 1)
        return {
            "frames": len(self.emitted),
            "arrival_cpu_ms_per_frame": self.arrival_cpu_s / n * 1e3,
            "refinements": self.refinements,
            "refine_cpu_ms_mean": self.refine_cpu_s / max(self.refinements, 1) * 1e3,
            "horizon_mean": float(np.mean(self.horizons)) if self.horizons else 0.0,
            "horizon_max": int(max(self.horizons)) if self.horizons else 0,
        }


def refined_latencies(arrivals, published) -> np.ndarray:
    """Seconds from each frame's arrival (``time.time()`` values, frame order) to the first
    refinement published after it that saw it (:attr:`LiveTracker.published`): when the frame's
    own pixels first reached a pose. NaN for frames no refinement saw before :meth:`finish`."""
    out = np.full(len(arrivals), np.nan)
    times = np.array([t for t, _ in published]) if published else np.zeros(0)
    ns = np.array([n for _, n in published]) if published else np.zeros(0, int)
    for k, a in enumerate(arrivals):
        ok = np.nonzero((ns > k) & (times >= a))[0]
        if len(ok):
            out[k] = times[ok[0]] - a
    return out


class TrackingConsumer:
    """Feeds a :class:`LiveTracker` from its own thread (the arrival path), taking every frame that
    queued up while the previous ones were processed in one :meth:`~LiveTracker.push_many` (so a
    model slower than the frame rate falls behind by a bounded batch instead of dropping frames).

    ``offer(frame, received)`` is cheap and never blocks; ``received`` is the frame's arrival time
    on the :func:`time.time` clock (e.g. :attr:`freehand3d.stream.igtl.StreamItem.received`), so
    :attr:`latencies_s` is arrival -> pose. :meth:`close` waits for the queue to drain, finishes
    the tracker and returns the final trajectory. ``on_pose(index, pose)`` is called for every
    emitted pose, in the worker thread. Frames past the model's ``max_positions`` (1024 for the
    shipped models: 34 s at 30 fps) are not tracked, only counted (:attr:`beyond_limit`); the
    stream itself goes on.
    """

    def __init__(self, tracker: LiveTracker, max_batch: int = 32, on_pose=None):
        import collections

        self.tracker = tracker
        self.max_batch = max(1, int(max_batch))
        self.on_pose = on_pose
        self.latencies_s: list[float] = []
        self.batches: list[int] = []
        #: CPU seconds of this thread in push_many: the arrival path's whole cost
        self.cpu_s = 0.0
        self.error: BaseException | None = None
        #: per tracked frame (time.time() values): (arrival, offered to this consumer, its
        #: push_many started, its pose emitted) -- where the latency goes
        self.timings: list[tuple[float, float, float, float]] = []
        #: frames that arrived after the model's max_positions were tracked (not tracked)
        self.beyond_limit = 0
        self._limit = tracker.cfg.max_positions
        self._offered = 0
        self._queue = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="freehand3d-live-tracking")
        self._thread.start()

    def offer(self, frame: np.ndarray, received: float | None = None) -> None:
        with self._cond:
            self._offered += 1
            if self._offered > self._limit:  # the model has no positions left: count, keep nothing
                self.beyond_limit += 1
                return
            now = time.time()
            self._queue.append((frame, now if received is None else received, now))
            self._cond.notify_all()

    def _run(self):
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait(0.05)
                    if not self._queue and self._closing:
                        return
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
                started = time.time()
                frames = np.stack([_grey_uint8(f) for f, _, _ in batch])
                first = self.tracker.n
                cpu0 = time.thread_time()
                poses = self.tracker.push_many(frames)
                self.cpu_s += time.thread_time() - cpu0
                now = time.time()
                self.latencies_s.extend(now - t for _, t, _ in batch)
                self.timings.extend((t, offered, started, now) for _, t, offered in batch)
                self.batches.append(len(batch))
                if self.on_pose is not None:
                    for i, pose in enumerate(poses):
                        self.on_pose(first + i, pose)
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc

    def close(self, timeout: float = 600.0) -> np.ndarray:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self.error is not None:
            self.tracker.close()
            raise self.error
        return self.tracker.finish()

    def summary(self) -> str:
        """One line: frames, arrival -> pose latency, the arrival path's CPU time, refinements."""
        tracker = self.tracker
        lat = np.array(self.latencies_s) * 1e3
        if not len(lat):
            return f"tracking ({tracker.cfg.name}, {tracker.precision}): no frames tracked"
        st = tracker.stats()
        limit = (f" ({self.beyond_limit} later frames not tracked: the model holds {self._limit})"
                 if self.beyond_limit else "")
        return (f"tracking ({tracker.cfg.name}, {tracker.precision}): {len(tracker.emitted)} frames{limit}, "
                f"arrival -> pose p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
                f"max {lat.max():.0f} ms; arrival path {st['arrival_cpu_ms_per_frame']:.1f} CPU-ms/frame; "
                f"{st['refinements']} refinements ({st['refine_cpu_ms_mean']:.0f} CPU-ms each), poses continued "
                f"{st['horizon_mean']:.1f} frames past the newest on average (max {st['horizon_max']})")


def _grey_uint8(frame) -> np.ndarray:
    """A streamed frame as the (H, W) uint8 DualTrack reads: the first channel of a multi-component
    frame; other pixel types must already be uint8 (the stream carries the sender's type)."""
    arr = np.asarray(frame)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise InputError(f"live tracking needs 8-bit frames, the stream sends {arr.dtype}")
    return arr


def tracking_stage(tracker: LiveTracker, on_pose=None, max_batch: int = 32):
    """A :class:`freehand3d.stream.live.Stage` for ``run_live(..., consumers=[...])`` that tracks
    every frame with ``tracker`` (never drops: frames queue in the :class:`TrackingConsumer`).
    Returns (stage, consumer); after the stream ends ``consumer.tracker.trajectory()`` holds the
    final poses and ``consumer.latencies_s`` the arrival -> pose latencies."""
    from freehand3d.stream.live import Stage

    consumer = TrackingConsumer(tracker, max_batch=max_batch, on_pose=on_pose)
    stage = Stage("tracking", lambda item: consumer.offer(item.frame, item.received), maxsize=1024,
                  policy="block", finish=consumer.close)
    return stage, consumer


class StreamTracking:
    """Live tracking for ``freehand3d stream --track CKPT``: the stage to hand to
    :func:`freehand3d.stream.live.run_live`, and a summary line for the end.

    The model is loaded and its kernels chosen here, before the stream connects. With ``output``
    the final (N, 4, 4) ImageToReference trajectory (pixel -> mm in frame 0's DualTrack image frame)
    is written as ``.npy`` when the stream ends (atomically); with ``emitted_output`` the poses
    emitted on arrival, likewise.
    """

    def __init__(self, checkpoint, output=None, precision: str = "fp32", threads: int | None = 1,
                 spacing=None, device: str = "cpu", refine: str = "background", emitted_output=None):
        from freehand3d.errors import ConfigError
        from freehand3d.tracking.checkpoint import load_dualtrack

        from freehand3d._atomic import check_output_path

        for path, option in ((output, "--track-output"), (emitted_output, "--track-emitted")):
            if path is not None:
                if not str(path).endswith(".npy"):
                    raise ConfigError(f"{option} must be a .npy file (the (N, 4, 4) poses)", path)
                check_output_path(path, option)
        if output is not None and emitted_output is not None and \
                os.path.abspath(output) == os.path.abspath(emitted_output):
            raise ConfigError("--track-output and --track-emitted name the same file", output)
        self.output = output
        self.emitted_output = emitted_output
        model = load_dualtrack(checkpoint)
        if threads is not None:
            # the command's process is ours: one setting for every thread instead of each call
            # setting and restoring torch's process-wide thread count while another thread runs
            torch.set_num_threads(int(threads))
        self.tracker = LiveTracker(model, device=device, precision=precision, threads=threads, spacing=spacing,
                                   refine=refine)
        self.stage, self.consumer = tracking_stage(self.tracker)
        self.stage.finish = self._finish
        self.final = None

    def _finish(self):
        self.final = self.consumer.close()
        for path, poses in ((self.output, self.final), (self.emitted_output, self.tracker.emitted)):
            if path is not None and len(poses):
                _save_npy(path, np.asarray(poses))

    def summary(self) -> str:
        text = self.consumer.summary()
        if self.output is not None and self.final is not None:
            text += f"; final trajectory -> {self.output}"
        return text


def _save_npy(path, array) -> None:
    import io

    from freehand3d._atomic import write_bytes_atomic

    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())
