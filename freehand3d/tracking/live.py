"""Live sensorless tracking: DualTrack on frames as they arrive.

:class:`LiveTracker` takes frames one at a time (or a few at once when they queue up) and answers
each with a pose of the newest frame, refining the whole trajectory as context grows:

* **Local branch, incrementally.** The local 3-D CNN is streamed over time
  (:class:`~freehand3d.tracking.model.streaming.StreamingCNN`): each new frame costs one frame of
  CNN work, and frames whose temporal receptive field is complete get their final token. For the
  newest few frames (9 for the official layout: one frame of delay per temporal conv) a
  *provisional* token is computed by :meth:`StreamingCNN.peek`, i.e. as if the sweep ended now --
  exactly what the offline model computes for the last frames of a sweep of this length.
* **Global branch from the frames so far.** Every ``global_stride``-th frame goes through the
  global CNN once; the global transformer runs over those seen so far.
* **Fusion, head and composition** run over all N frames so far at each update (their cost grows
  with N; for the tiny model at a few hundred frames it stays a few ms).

So the pose emitted for frame k is the offline model's answer for the sweep truncated after frame
k; :meth:`finish` flushes the stream, after which :meth:`trajectory` equals
:func:`freehand3d.tracking.predict` on the same frames (up to float rounding). The difference
between the poses emitted at arrival and the final trajectory is what live tracking costs.

Example
-------
>>> tracker = LiveTracker(model, spacing=(0.2, 0.2))          # doctest: +SKIP
>>> for frame in frames:                                     # doctest: +SKIP
...     pose = tracker.push(frame)                           # (4, 4) ImageToReference of this frame
>>> final = tracker.finish()                                 # doctest: +SKIP
"""

from __future__ import annotations

import time

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

__all__ = ["LiveTracker", "TrackingConsumer", "tracking_stage", "StreamTracking"]


class LiveTracker:
    """Incremental DualTrack.

    Parameters
    ----------
    model : a loaded :class:`~freehand3d.tracking.DualTrack`.
    device, precision, kernel, threads : as for :func:`freehand3d.tracking.predict`.
    spacing : (sx, sy) mm/px for the ImageToReference poses (default TUS-REC's).
    frame_shape : (H, W) of the frames (DualTrack needs 480 x 640).

    Attributes
    ----------
    emitted : list of (4, 4) ImageToReference poses, the one returned for each frame on arrival.
    latencies_s : seconds from each frame's arrival (the ``push``/``push_many`` call, or the given
        ``arrival`` times, :func:`time.perf_counter` values) to its pose.
    """

    def __init__(self, model, device="cpu", precision: str | None = None, kernel: str = "auto",
                 threads: int | None = None, spacing=None, frame_shape=(480, 640)):
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
        self.stream = StreamingCNN(self.local_cnn)
        self.final_tokens: list[torch.Tensor] = []  # (1, k, pool_dim) pieces
        self.global_feats: list[torch.Tensor] = []  # (1, 1, C) per global frame
        self.n = 0
        self.finished = False
        self.emitted: list[np.ndarray] = []
        self.latencies_s: list[float] = []
        self._trajectory = np.tile(np.eye(4), (0, 1, 1))
        self._like = None

    # ------------------------------------------------------------------ input

    def push(self, frame: np.ndarray, arrival: float | None = None) -> np.ndarray:
        """Add one (H, W) uint8 frame; returns its (4, 4) ImageToReference pose."""
        return self.push_many(np.asarray(frame)[None], None if arrival is None else [arrival])[-1]

    def push_many(self, frames: np.ndarray, arrivals=None) -> np.ndarray:
        """Add (k, H, W) uint8 frames that arrived together (e.g. queued while the previous update
        ran); one update serves them all. Returns their (k, 4, 4) poses."""
        if self.finished:
            raise RuntimeError("the tracker has finished; start a new LiveTracker for a new sweep")
        start = time.perf_counter()
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise InputError(f"live frames must be (k, {self.frame_shape[0]}, {self.frame_shape[1]}) uint8, "
                             f"got {frames.shape} {frames.dtype}")
        k = len(frames)
        if self.n + k > self.cfg.max_positions:
            raise InputError(f"the {self.cfg.name} model supports {self.cfg.max_positions} frames per sweep")
        with _num_threads(self.threads), torch.inference_mode():
            crops = local_crops(frames, self.cfg.local_size, device=self.device).to(self.conv_dtype)[None]
            self._like = crops.transpose(1, 2)
            maps = self.stream.push(self._like)
            if maps.shape[2]:
                self.final_tokens.append(_pool_maps(self.model.local_encoder, maps, self.dtype))
            stride = self.cfg.global_stride
            chosen = [i for i in range(self.n, self.n + k) if i % stride == 0]
            if chosen:
                batch = global_frames(frames[[i - self.n for i in chosen]], self.cfg.global_variant, self.cfg.global_norm,
                                      self.cfg.global_size, device=self.device).to(self.dtype)[None]
                self.global_feats.append(self.model.global_encoder.frame_features(batch, cnn=self.global_cnn))
            self.n += k
            traj = self._update(final=False)
        now = time.perf_counter()
        arrivals = [start] * k if arrivals is None else list(arrivals)
        poses = traj[-k:]
        for pose, t0 in zip(poses, arrivals):
            self.emitted.append(pose)
            self.latencies_s.append(now - t0)
        return poses

    def finish(self) -> np.ndarray:
        """Flush the stream (the end of the sweep) and return the final (N, 4, 4) trajectory,
        equal to the offline :func:`~freehand3d.tracking.predict` on the same frames."""
        if not self.finished:
            with _num_threads(self.threads), torch.inference_mode():
                if self.n >= 2:
                    maps = self.stream.push(self._like[:, :, :0], final=True)
                    if maps.shape[2]:
                        self.final_tokens.append(_pool_maps(self.model.local_encoder, maps, self.dtype))
                    self._update(final=True)
            self.finished = True
        return self.trajectory()

    def trajectory(self) -> np.ndarray:
        """Current (N, 4, 4) ImageToReference estimate of every frame so far (refined each update)."""
        return self._trajectory.copy()

    # ------------------------------------------------------------------ model

    def _tokens(self, final: bool) -> torch.Tensor:
        parts = list(self.final_tokens)
        if not final:
            pending = self.stream.peek(self._like)
            if pending.shape[2]:
                parts.append(_pool_maps(self.model.local_encoder, pending, self.dtype))
        return torch.cat(parts, dim=1)

    def _update(self, final: bool) -> np.ndarray:
        if self.n < 2:
            self._trajectory = np.tile(self.pixel_to_image, (self.n, 1, 1))
            return self._trajectory
        model = self.model
        tokens = self._tokens(final)
        local_features = model.local_encoder.encode_tokens(tokens)
        indices = model.global_indices(self.n, device=self.device)
        global_features = model.global_encoder.encode_features(torch.cat(self.global_feats, dim=1), indices)
        head = model.decode(local_features, global_features)["head_output"][0].double().cpu().numpy()
        self.head = head
        self._trajectory = compose_poses(head)[0] @ self.pixel_to_image
        return self._trajectory


class TrackingConsumer:
    """Feeds a :class:`LiveTracker` from another thread, batching the frames that queue up while an
    update runs (so a slower-than-real-time model falls behind by a bounded batch instead of
    dropping frames).

    ``offer(frame, received)`` is cheap and never blocks; ``received`` is the frame's arrival time
    on the :func:`time.time` clock (e.g. :attr:`freehand3d.stream.igtl.StreamItem.received`), so
    :attr:`latencies_s` is arrival -> pose. :meth:`close` waits for the queue to drain, finishes
    the tracker and returns the final trajectory. ``on_pose(index, pose)`` is called for every
    emitted pose, in the worker thread.
    """

    def __init__(self, tracker: LiveTracker, max_batch: int = 32, on_pose=None):
        import collections
        import threading

        self.tracker = tracker
        self.max_batch = max(1, int(max_batch))
        self.on_pose = on_pose
        self.latencies_s: list[float] = []
        self.batches: list[int] = []
        #: CPU seconds of this thread in the tracker's updates (with threads=1 all of the model's
        #: work; a load-independent measure of the cost per frame)
        self.cpu_s = 0.0
        self.error: BaseException | None = None
        self._queue = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="freehand3d-live-tracking")
        self._thread.start()

    def offer(self, frame: np.ndarray, received: float | None = None) -> None:
        with self._cond:
            self._queue.append((frame, time.time() if received is None else received))
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
                frames = np.stack([_grey_uint8(f) for f, _ in batch])
                first = self.tracker.n
                cpu0 = time.thread_time()
                poses = self.tracker.push_many(frames)
                self.cpu_s += time.thread_time() - cpu0
                now = time.time()
                self.latencies_s.extend(now - t for _, t in batch)
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
            raise self.error
        return self.tracker.finish()


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
    is written as ``.npy`` when the stream ends (atomically)."""

    def __init__(self, checkpoint, output=None, precision: str = "fp32", threads: int | None = None,
                 spacing=None, device: str = "cpu"):
        from freehand3d.errors import ConfigError
        from freehand3d.tracking.checkpoint import load_dualtrack

        if output is not None and not str(output).endswith(".npy"):
            raise ConfigError("--track-output must be a .npy file (the (N, 4, 4) poses)", output)
        self.output = output
        model = load_dualtrack(checkpoint)
        self.tracker = LiveTracker(model, device=device, precision=precision, threads=threads, spacing=spacing)
        self.stage, self.consumer = tracking_stage(self.tracker)
        self.stage.finish = self._finish
        self.final = None

    def _finish(self):
        self.final = self.consumer.close()
        if self.output is not None and len(self.final):
            import io

            from freehand3d._atomic import write_bytes_atomic

            buf = io.BytesIO()
            np.save(buf, self.final)
            write_bytes_atomic(self.output, buf.getvalue())

    def summary(self) -> str:
        lat = np.array(self.consumer.latencies_s) * 1e3
        if not len(lat):
            return "tracking: no frames tracked"
        text = (f"tracking ({self.tracker.cfg.name}, {self.tracker.precision}): {len(self.tracker.emitted)} frames, "
                f"arrival -> pose p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms")
        if self.output is not None and self.final is not None:
            text += f"; final trajectory -> {self.output}"
        return text
