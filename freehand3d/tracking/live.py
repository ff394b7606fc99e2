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

__all__ = ["LiveTracker"]


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
