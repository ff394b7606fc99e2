"""Live use of an OpenIGTLink stream: recording to a PLUS sequence file and live compounding.

:func:`run_live` consumes an :class:`~freehand3d.stream.igtl.IGTLSource` and, per frame,
appends it to a recording and inserts it into an incremental
:class:`freehand3d.compound.Reconstructor` (the grid is given, or taken from the first
``grid_frames`` posed frames with a margin). Snapshots of the volume are written every
``snapshot_every`` seconds and at the end; the volume can be sent back over OpenIGTLink so Slicer
shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from freehand3d.stream.igtl import IGTLSource, StreamItem, send_volume


@dataclass
class LiveResult:
    frames: int = 0
    inserted: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    recording: str | None = None
    volume: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3) if self.latencies_s else float("nan")


class Recorder:
    """Collects stream items and writes them as a PLUS sequence file (atomic)."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.timestamps: list[float] = []
        self.transforms: dict[str, list] = {}
        self.poses: list[np.ndarray | None] = []

    def add(self, item: StreamItem) -> None:
        n = len(self.frames)
        self.frames.append(item.frame)
        self.timestamps.append(item.timestamp)
        self.poses.append(item.pose)
        for name in set(self.transforms) | set(item.transforms):
            seq = self.transforms.setdefault(name, [None] * n)
            seq.append(item.transforms.get(name))

    def to_sweep(self, reference: str = "Reference"):
        from freehand3d.sweep import Sweep

        n = len(self.frames)
        transforms, valid = {}, {}
        for name, seq in self.transforms.items():
            transforms[name] = np.stack([np.eye(4) if m is None else m for m in seq])
            valid[name] = np.array([m is not None for m in seq])
        name = f"ImageTo{reference}"
        if name not in transforms and any(p is not None for p in self.poses):
            transforms[name] = np.stack([np.eye(4) if p is None else p for p in self.poses])
            valid[name] = np.array([p is not None for p in self.poses])
        shapes = {f.shape for f in self.frames}
        if len(shapes) > 1:
            raise ValueError(f"frame size changed during the stream: {sorted(shapes)}")
        frames = np.stack(self.frames) if n else np.zeros((0, 1, 1), np.uint8)
        return Sweep(frames, timestamps=np.asarray(self.timestamps), transforms=transforms, valid=valid)

    def write(self, path, reference: str = "Reference") -> None:
        from freehand3d.io import write_sweep

        write_sweep(self.to_sweep(reference), path)


def _grid_from_items(items: list[StreamItem], spacing: float, margin_mm: float):
    """PLUS's extent rule on the first frames, grown by ``margin_mm`` on every side (the probe moves on)."""
    from freehand3d.compound import OutputGrid, grid_from_frames

    poses = np.stack([it.pose for it in items])
    grid = grid_from_frames(poses, items[0].frame.shape, spacing)
    pad = int(np.ceil(margin_mm / spacing))
    origin = np.asarray(grid.origin) - pad * np.asarray(grid.spacing)
    return OutputGrid(tuple(origin), grid.spacing, tuple(int(n) + 2 * pad for n in grid.size))


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
) -> LiveResult:
    """Consume ``source`` until it ends, ``duration`` seconds pass or ``max_frames`` arrive."""
    result = LiveResult()
    recorder = Recorder() if record else None
    reconstructor = None
    waiting: list[StreamItem] = []
    t_start = time.perf_counter()
    last_snapshot = t_start

    def make_reconstructor(g):
        from freehand3d.compound import Reconstructor

        return Reconstructor(g, method=method, compounding=compounding, device=device)

    def insert(it: StreamItem) -> None:
        reconstructor.add_frame(it.frame, it.pose)
        result.inserted += 1
        result.latencies_s.append(time.time() - it.timestamp if source_timestamps_are_wall else time.time() - it.received)

    source_timestamps_are_wall = False
    if reconstruct and grid is not None:
        reconstructor = make_reconstructor(grid)
    try:
        for item in source:
            if result.frames == 0:
                # timestamps within a minute of the wall clock are send times (replay --timestamps now)
                source_timestamps_are_wall = abs(item.timestamp - time.time()) < 60
            result.frames += 1
            if recorder is not None:
                recorder.add(item)
            if reconstruct and item.pose is not None:
                if reconstructor is None:
                    waiting.append(item)
                    if len(waiting) >= grid_frames:
                        reconstructor = make_reconstructor(_grid_from_items(waiting, spacing, margin_mm))
                        for it in waiting:
                            insert(it)
                        waiting.clear()
                else:
                    insert(item)
            now = time.perf_counter()
            if reconstructor is not None and snapshot_every and now - last_snapshot >= snapshot_every:
                _snapshot(reconstructor, reconstruct, send_volume_to)
                last_snapshot = now
            if on_frame is not None:
                on_frame(result, source)
            if max_frames is not None and result.frames >= max_frames:
                break
            if duration is not None and now - t_start >= duration:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a live session normally: what was received is still written
    finally:
        result.seconds = time.perf_counter() - t_start
        source.close()
    if reconstruct and reconstructor is None and waiting:
        reconstructor = make_reconstructor(_grid_from_items(waiting, spacing, margin_mm))
        for it in waiting:
            insert(it)
    result.stats = source.stats.as_dict()
    if recorder is not None and result.frames:
        recorder.write(record, source.reference)
        result.recording = str(record)
    if reconstructor is not None:
        _snapshot(reconstructor, reconstruct, send_volume_to)
        result.volume = str(reconstruct)
    return result


def _snapshot(reconstructor, path, send_to) -> None:
    from freehand3d.io.volumes import write_volume

    image = reconstructor.volume()
    write_volume(image, path)
    if send_to is not None:
        send_volume(image, *send_to)
