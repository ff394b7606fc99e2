"""Live use of an OpenIGTLink stream: write-through recording, live compounding, plug-in consumers.

:func:`run_live` consumes an :class:`~freehand3d.stream.igtl.IGTLSource`. The pipeline and its
overload policy:

* socket reader -> bounded message queue (``IGTLSource.max_queue``): **blocks** when full, so the
  TCP window closes and the sender slows down; nothing is dropped here.
* recording (:class:`~freehand3d.stream.recorder.SequenceRecorder`), in the consuming thread:
  every frame is written through to disk before the next one is taken, so it **never drops**; a
  slow disk slows the stream down instead (the ``recording`` stage's drop count is 0 by design).
* live volume and any plug-in consumer: each a :class:`Stage` with its own thread and bounded queue;
  the live volume **drops the oldest** frame when it falls behind (a live view wants the newest
  frames), every drop counted; frames still queued when the session ends get ``drain_timeout`` s
  to be processed, the rest are counted as dropped at exit.

Memory does not grow with the session: frames are on disk, queues are bounded, latency statistics
are a fixed-size histogram. SIGTERM, SIGHUP and the first Ctrl-C end the session cleanly (the
recording is finished); a second Ctrl-C interrupts at once (the side files stay for
``freehand3d recover``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from freehand3d.errors import Freehand3DError, StreamError
from freehand3d.stream.igtl import IGTLSource, StreamItem, send_volume


class LatencyHistogram:
    """Fixed-memory latency statistics: log-spaced bins from 10 us to 1000 s (0.5 % wide)."""

    _LO, _HI, _BINS = 1e-5, 1e3, 3700

    def __init__(self):
        self.counts = np.zeros(self._BINS + 2, np.int64)
        self._scale = self._BINS / math.log(self._HI / self._LO)
        self.n = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        if seconds <= self._LO:
            k = 0
        elif seconds >= self._HI:
            k = self._BINS + 1
        else:
            k = 1 + int(math.log(seconds / self._LO) * self._scale)
        self.counts[k] += 1
        self.n += 1
        self.total += seconds

    def percentile(self, q: float) -> float:
        """Seconds (bin centre), NaN when empty."""
        if not self.n:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.n, side="left"))
        if k == 0:
            return self._LO
        if k > self._BINS:
            return self._HI
        return self._LO * math.exp((k - 0.5) / self._scale)

    def __len__(self) -> int:
        return self.n


@dataclass
class StageStats:
    name: str
    policy: str
    processed: int = 0
    dropped: int = 0
    dropped_at_exit: int = 0
    max_queued: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Stage:
    """A per-frame consumer in its own thread behind a bounded queue (plug-in point).

    Parameters
    ----------
    name : shown in the summary (e.g. ``"volume"``, ``"tracking"``).
    handle : called with each :class:`StreamItem`, in order, in the stage's thread.
    maxsize : frames the queue holds.
    policy : ``"drop-oldest"`` (a full queue discards its oldest frame, counted) or ``"block"``
        (the stream waits: back-pressure to the sender).
    finish : called once in the stage's thread after the last frame (e.g. write a final volume).
    latency : ``"received"`` (now - local receive time) or ``"timestamp"`` (now - the frame's own
        timestamp, meaningful when the sender stamps with the wall clock).
    """

    def __init__(self, name: str, handle: Callable[[StreamItem], None], maxsize: int = 4,
                 policy: str = "drop-oldest", finish: Callable[[], None] | None = None,
                 latency: str = "received"):
        if policy not in ("drop-oldest", "block"):
            raise ValueError(f"policy must be drop-oldest or block, not {policy!r}")
        self.handle, self.finish, self.maxsize, self.latency = handle, finish, max(1, int(maxsize)), latency
        self.stats = StageStats(name, policy)
        self.latencies = LatencyHistogram()
        self.error: BaseException | None = None
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"freehand3d-stage-{name}")
        self._thread.start()

    @property
    def name(self) -> str:
        return self.stats.name

    def offer(self, item: StreamItem) -> None:
        with self._cond:
            if self.error is not None:
                return
            while len(self._queue) >= self.maxsize:
                if self.stats.policy == "block":
                    self._cond.wait(0.1)
                    if self.error is not None:
                        return
                else:
                    self._queue.popleft()
                    self.stats.dropped += 1
            self._queue.append(item)
            self.stats.max_queued = max(self.stats.max_queued, len(self._queue))
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait(0.1)
                    if self._abandon or (self._closing and not self._queue):
                        break
                    item = self._queue.popleft()
                    self._cond.notify_all()
                self.handle(item)
                self.stats.processed += 1
                ref = item.timestamp if self.latency == "timestamp" else item.received
                self.latencies.add(max(0.0, time.time() - ref))
            if self.finish is not None:
                self.finish()
        except BaseException as exc:  # noqa: BLE001 - reported by the consuming thread
            self.error = exc

    def close(self, drain_timeout: float = 5.0) -> None:
        """Let the queue drain for up to ``drain_timeout`` s, count the rest as dropped, finish."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + drain_timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._cond:
                if not self._queue:
                    break
            time.sleep(0.01)
        with self._cond:
            self.stats.dropped_at_exit += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(max(drain_timeout, 60.0))  # the final handler (e.g. a volume write) may take a while

    def abandon(self) -> None:
        with self._cond:
            self._abandon = self._closing = True
            self._cond.notify_all()


@dataclass
class LiveResult:
    frames: int = 0
    inserted: int = 0
    seconds: float = 0.0
    first_frame_s: float | None = None
    last_frame_s: float | None = None
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)
    receive_latencies: LatencyHistogram = field(default_factory=LatencyHistogram)
    stats: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    recording: str | None = None
    recorded: int = 0
    volume: str | None = None
    stopped_by: str | None = None

    @property
    def fps(self) -> float:
        """Frames per second between the first and the last frame (start-up time excluded)."""
        if self.first_frame_s is None or self.last_frame_s is None or self.frames < 2:
            return 0.0
        span = self.last_frame_s - self.first_frame_s
        return (self.frames - 1) / span if span > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        """Live volume: send (or receive) -> inserted, percentile ``q`` in ms."""
        return self.latencies.percentile(q) * 1e3

    def receive_latency_ms(self, q: float) -> float:
        """Send (or receive) -> handed to the consumers (recorded), percentile ``q`` in ms."""
        return self.receive_latencies.percentile(q) * 1e3


def _grid_from_items(items: list[StreamItem], spacing: float, margin_mm: float):
    """PLUS's extent rule on the first frames, grown by ``margin_mm`` on every side (the probe moves on)."""
    from freehand3d.compound import OutputGrid, grid_from_frames

    poses = np.stack([it.pose for it in items])
    grid = grid_from_frames(poses, items[0].frame.shape[:2], spacing)
    pad = int(np.ceil(margin_mm / spacing))
    origin = np.asarray(grid.origin) - pad * np.asarray(grid.spacing)
    return OutputGrid(tuple(origin), grid.spacing, tuple(int(n) + 2 * pad for n in grid.size))


class _LiveVolume:
    """The live-compounding consumer: builds its grid from the first posed frames, inserts, snapshots."""

    def __init__(self, path, spacing, grid, grid_frames, margin_mm, method, compounding, device,
                 snapshot_every, send_to):
        self.path, self.spacing, self.grid = path, spacing, grid
        self.grid_frames, self.margin_mm = grid_frames, margin_mm
        self.method, self.compounding, self.device = method, compounding, device
        self.snapshot_every, self.send_to = snapshot_every, send_to
        self.reconstructor = None
        self.waiting: list[StreamItem] = []
        self.inserted = 0
        self.unposed = 0
        self.written = False
        self._last_snapshot = time.monotonic()  # a given grid is used once the first frame tells the pixel type

    def _make(self, grid, pixel_type=np.uint8) -> None:
        from freehand3d.compound import Reconstructor

        self.reconstructor = Reconstructor(grid, method=self.method, compounding=self.compounding,
                                           device=self.device, pixel_type=pixel_type)

    def _insert(self, item: StreamItem) -> None:
        self.reconstructor.add_frame(item.frame, item.pose)
        self.inserted += 1

    def handle(self, item: StreamItem) -> None:
        if item.pose is None:
            self.unposed += 1
            return
        if item.frame.ndim != 2:
            raise StreamError(f"live compounding needs single-component frames, got {item.frame.shape[2]} "
                              f"components ({item.device!r}); record without --reconstruct and convert first",
                              self.path)
        if self.reconstructor is not None and item.frame.dtype != self.reconstructor.pixel_type:
            raise StreamError(f"the pixel type changed from {self.reconstructor.pixel_type} to {item.frame.dtype}",
                              self.path)
        if self.reconstructor is None and self.grid is not None:
            self._make(self.grid, item.frame.dtype)
        if self.reconstructor is None:
            self.waiting.append(item)
            if len(self.waiting) < self.grid_frames:
                return
            self._make(_grid_from_items(self.waiting, self.spacing, self.margin_mm), item.frame.dtype)
            for it in self.waiting:
                self._insert(it)
            self.waiting.clear()
        else:
            self._insert(item)
        now = time.monotonic()
        if self.snapshot_every and now - self._last_snapshot >= self.snapshot_every:
            self.snapshot()
            self._last_snapshot = now

    def finish(self) -> None:
        if self.reconstructor is None and self.waiting:
            self._make(_grid_from_items(self.waiting, self.spacing, self.margin_mm), self.waiting[0].frame.dtype)
            for it in self.waiting:
                self._insert(it)
            self.waiting.clear()
        if self.reconstructor is not None:
            self.snapshot()

    def snapshot(self) -> None:
        from freehand3d.io.volumes import write_volume

        image = self.reconstructor.volume()
        write_volume(image, self.path)
        self.written = True
        if self.send_to is not None:
            send_volume(image, *self.send_to)


def _warm_compounding(method: str, compounding: str, device: str) -> None:
    """Load the compounding kernels (numba) before connecting, not while the first frames queue."""
    from freehand3d.compound import OutputGrid, Reconstructor

    tiny = Reconstructor(OutputGrid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (4, 4, 4)), method=method,
                         compounding=compounding, device=device)
    tiny.add_frame(np.zeros((2, 2), np.uint8), np.eye(4))


@contextlib.contextmanager
def _stop_on_signals(source: IGTLSource, result: LiveResult):
    """SIGTERM, SIGHUP and a first SIGINT stop the session cleanly; a second SIGINT interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
    if hasattr(signal, "SIGHUP"):
        names[signal.SIGHUP] = "SIGHUP"
    previous = {}

    def handler(signum, frame):
        if result.stopped_by == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        result.stopped_by = names.get(signum, str(signum))
        source.stop()

    for sig in names:
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)


def run_live(
    source: IGTLSource,
    *,
    record: str | Path | None = None,
    reconstruct: str | Path | None = None,
    spacing: float = 0.5,
    grid=None,
    grid_frames: int = 20,
    margin_mm: float = 20.0,
    method: str = "nearest",
    compounding: str = "latest",
    device: str = "cpu",
    snapshot_every: float | None = None,
    send_volume_to: tuple[str, int] | None = None,
    duration: float | None = None,
    max_frames: int | None = None,
    on_frame: Callable[[LiveResult, IGTLSource], None] | None = None,
    consumers: list[Stage] | None = None,
    volume_policy: str = "drop-oldest",
    volume_queue: int = 32,
    drain_timeout: float = 5.0,
    flush_interval: float = 0.25,
) -> LiveResult:
    """Consume ``source`` until it ends, ``duration`` wall-clock seconds pass, ``max_frames`` arrive
    or a signal stops it; see the module docstring for the overload policy.

    ``consumers`` are extra :class:`Stage` objects (e.g. live tracking) that get every frame; they
    are closed (drained, finished) at the end, and their counts are in ``result.stages``.
    """
    from freehand3d.stream.recorder import SequenceRecorder

    result = LiveResult()
    if duration is not None and source.duration is None:
        source.duration = float(duration)
    recorder = SequenceRecorder(record, reference=source.reference, flush_interval=flush_interval) if record else None
    stages: list[Stage] = []
    volume = None
    wall_timestamps = [False]
    if reconstruct:
        volume = _LiveVolume(reconstruct, spacing, grid, grid_frames, margin_mm, method, compounding, device,
                             snapshot_every, send_volume_to)
        stages.append(Stage("volume", volume.handle, maxsize=volume_queue, policy=volume_policy,
                            finish=volume.finish))
    stages.extend(consumers or [])
    if volume is not None:
        _warm_compounding(method, compounding, device)
    t_start = time.perf_counter()
    error: BaseException | None = None
    try:
        with _stop_on_signals(source, result):
            if max_frames is not None and max_frames <= 0:
                source.stop()
            for item in source.iter_items(heartbeat=0.1):
                if recorder is not None:
                    recorder.maybe_flush()
                for stage in stages:
                    if stage.error is not None:
                        raise stage.error
                if item is None:
                    continue
                now = time.perf_counter()
                if result.frames == 0:
                    result.first_frame_s = now
                    # timestamps within a minute of the wall clock are send times (replay --timestamps now)
                    wall_timestamps[0] = abs(item.timestamp - time.time()) < 60
                    for stage in stages:
                        if stage.latency == "received" and wall_timestamps[0]:
                            stage.latency = "timestamp"
                result.frames += 1
                result.last_frame_s = now
                if recorder is not None:
                    recorder.add(item)
                result.receive_latencies.add(
                    max(0.0, time.time() - (item.timestamp if wall_timestamps[0] else item.received)))
                for stage in stages:
                    stage.offer(item)
                if on_frame is not None:
                    on_frame(result, source)
                if max_frames is not None and result.frames >= max_frames:
                    break
    except BaseException as exc:  # finish what was received, then re-raise
        error = exc
    finally:
        result.seconds = time.perf_counter() - t_start
        source.close()
    if result.stopped_by is None and source.ended_by is not None:
        result.stopped_by = {"duration": "duration", "server": "server closed"}.get(source.ended_by)
    if isinstance(error, KeyboardInterrupt):
        # interrupted hard (second Ctrl-C): leave the side files for `freehand3d recover`
        for stage in stages:
            stage.abandon()
        if recorder is not None:
            recorder.abort()
        raise error
    for stage in stages:
        stage.close(drain_timeout)
    if recorder is not None:
        result.recorded = recorder.frames
        try:
            if recorder.finish() is not None:
                result.recording = str(record)
        except Exception:
            # e.g. the disk filled up: the side files stay for `freehand3d recover`; report the
            # error that ended the session when there was one
            recorder.abort()
            if error is None:
                raise
    result.stats = source.stats.as_dict()
    rec_stats = {"name": "recording", "policy": "never-drop", "processed": result.recorded, "dropped": 0,
                 "dropped_at_exit": 0}
    result.stages = ([rec_stats] if recorder is not None else []) + [s.stats.as_dict() for s in stages]
    if volume is not None:
        vol_stage = stages[0]
        result.inserted = volume.inserted
        result.latencies = vol_stage.latencies
        if volume.written:
            result.volume = str(reconstruct)
    if error is None:
        error = next((stage.error for stage in stages if stage.error is not None), None)
    if error is not None:
        failed = next((stage for stage in stages if stage.error is error), None)
        if failed is not None and not isinstance(error, Freehand3DError):
            # a consumer's own failure ends the session with one line; the recording is finished
            raise StreamError(f"the {failed.name} stage failed: {type(error).__name__}: {error}") from error
        raise error
    if volume is not None and not volume.written and result.frames:
        raise StreamError(
            f"no volume written: none of the {result.frames} frames had a pose in {source.reference!r} "
            f"(received: {source.stats.seen()}); give --calibration to compose ImageTo{source.reference} "
            "from tracker transforms, or check --reference", reconstruct)
    return result
