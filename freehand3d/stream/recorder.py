"""Write-through, crash-safe recording of a stream to a PLUS sequence file.

While a session runs nothing is held in memory: every frame goes to disk as it arrives, into two
side files next to the requested recording ``REC`` (e.g. ``sweep.igs.mha``):

* ``REC.pixels`` - the raw frames, appended in arrival order (C order, the frame's own dtype);
* ``REC.journal`` - JSON lines: a first line describing the frames (shape, dtype, spacing, reference)
  and then one line per frame (timestamp, transforms, pose), written only *after* that frame's
  pixels, so a journal line never refers to pixels that are not on disk.

Both are handed to the operating system at least every ``flush_interval`` seconds (0.25 s by
default), so after a ``kill -9`` at most the frames of the last ~0.5 s are missing (the page cache
survives the death of the process; ``fsync_interval`` bounds what a power cut loses). A clean end
(end of stream, ``--duration``, Ctrl-C, SIGTERM, SIGHUP) calls :meth:`SequenceRecorder.finish`,
which writes ``REC`` with :func:`freehand3d.io.write_plus_sequence` (uncompressed: the frames are
streamed from a memory map of ``REC.pixels``, never loaded) and only then removes the side files.
After a crash, :func:`recover_recording` (``freehand3d recover REC``) does the same from whatever
complete frames the side files hold; a torn last journal line or a half-written last frame is
dropped.
"""

from __future__ import annotations

import array
import contextlib
import json
import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

from freehand3d.errors import InputError, StreamError

JOURNAL_VERSION = 1


def side_files(record: str | os.PathLike) -> tuple[Path, Path]:
    """(pixels, journal) paths of a recording in progress."""
    record = Path(record)
    return record.with_name(record.name + ".pixels"), record.with_name(record.name + ".journal")


def _matrix_list(m) -> list[float]:
    return [float(v) for v in np.asarray(m, float).reshape(16)]


class SequenceRecorder:
    """Append stream items to ``REC.pixels`` / ``REC.journal``; :meth:`finish` writes ``REC``.

    Parameters
    ----------
    path : the PLUS sequence to produce (``.igs.mha``, ``.mha``, ``.mhd``, ``.igs.nrrd``).
    reference : name of the frame the poses are in (the pose is recorded as ``ImageTo<reference>``
        when the server does not send that transform itself).
    flush_interval : seconds between hand-overs of buffered bytes to the operating system.
    fsync_interval : seconds between ``fsync`` calls (power-cut safety; 0 disables).
    """

    def __init__(self, path: str | os.PathLike, reference: str = "Reference", flush_interval: float = 0.25,
                 fsync_interval: float = 5.0, metadata: dict | None = None):
        self.path = Path(path)
        self.reference = reference
        self.flush_interval = float(flush_interval)
        self.fsync_interval = float(fsync_interval)
        self.metadata = dict(metadata or {})
        self.pixels_path, self.journal_path = side_files(self.path)
        for side in (self.pixels_path, self.journal_path):
            if side.exists():
                raise InputError(f"an unfinished recording is in the way ({side.name} exists): run "
                                 f"`freehand3d recover {self.path}` first, or remove it", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self.frame_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self._pixels = None
        self._journal = None
        self._last_flush = time.monotonic()
        self._last_fsync = self._last_flush
        self._unflushed = 0
        self.finished = False

    # ------------------------------------------------------------------ writing
    def _open(self, item) -> None:
        frame = np.asarray(item.frame)
        self.frame_shape = tuple(int(s) for s in frame.shape)
        self.dtype = frame.dtype
        head = {
            "freehand3d_recording": JOURNAL_VERSION,
            "frame_shape": list(self.frame_shape),
            "dtype": frame.dtype.str,
            "reference": self.reference,
            "spacing": self._spacing(item),
            "metadata": self.metadata,
            "started": time.time(),
        }
        # buffering: the journal is line-buffered by hand (flush on the interval), pixels unbuffered
        # because a frame is far larger than any buffer
        self._pixels = open(self.pixels_path, "xb", buffering=0)
        self._journal = open(self.journal_path, "x", encoding="utf-8")
        self._journal.write(json.dumps(head) + "\n")
        self._journal.flush()

    def _embedded(self, item) -> bool:
        return str(getattr(item, "device", "")).endswith("_" + self.reference)

    def _spacing(self, item):
        """The IMAGE's own pixel spacing, when it says something: an IMAGE that embeds the pose
        (``Image_Reference``) has the pose's scale in its matrix (already in the recorded
        transform), and an identity matrix means the sender did not say."""
        spacing = getattr(item, "spacing", None)
        if spacing is None or self._embedded(item):
            return None
        spacing = [float(v) for v in spacing]
        return None if np.allclose(spacing, 1.0, rtol=0, atol=1e-6) else spacing

    def add(self, item) -> None:
        """Write one :class:`~freehand3d.stream.igtl.StreamItem` (never drops, never buffers a frame)."""
        if self.finished:
            raise StreamError("the recording is already finished", self.path)
        frame = np.ascontiguousarray(item.frame)
        if self._pixels is None:
            self._open(item)
        elif frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise StreamError(
                f"frame {self.frames} is {frame.dtype} {frame.shape}, the recording holds "
                f"{self.dtype} {self.frame_shape}; a PLUS sequence cannot change its frame size or type "
                "(the frames so far are kept)", self.path)
        view = memoryview(frame).cast("B")
        written = 0
        while written < len(view):  # an unbuffered write may be partial
            written += self._pixels.write(view[written:])
        line = {"t": float(item.timestamp)}
        transforms = dict(item.transforms)
        matrix = getattr(item, "image_matrix", None)
        if matrix is not None and not self._embedded(item) and not np.allclose(matrix, np.eye(4), rtol=0, atol=1e-9):
            # the IMAGE's own pixel -> world matrix (spacing, direction, first-pixel origin)
            transforms.setdefault("ImageToWorld", matrix)
        if transforms:
            line["tf"] = {name: _matrix_list(m) for name, m in transforms.items()}
        if item.pose is not None:
            line["pose"] = _matrix_list(item.pose)
        self._journal.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.frames += 1
        self._unflushed += 1
        self.maybe_flush()

    def maybe_flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._journal is None or not self._unflushed:
            return
        if now - self._last_flush >= self.flush_interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._journal is None:
            return
        now = time.monotonic() if now is None else now
        self._journal.flush()  # pixels are unbuffered: already with the OS, so the journal follows them
        self._unflushed = 0
        self._last_flush = now
        if self.fsync_interval > 0 and now - self._last_fsync >= self.fsync_interval:
            os.fsync(self._pixels.fileno())
            os.fsync(self._journal.fileno())
            self._last_fsync = now

    def close_side_files(self) -> None:
        for handle in (self._pixels, self._journal):
            if handle is not None and not handle.closed:
                handle.flush()
                handle.close()

    def finish(self) -> Path | None:
        """Write the PLUS sequence from the side files and remove them; None when no frame came."""
        if self.finished:
            return self.path if self.frames else None
        self.finished = True
        self.close_side_files()
        if self._pixels is None:
            return None
        return recover_recording(self.path)

    def abort(self) -> None:
        """Close the side files and leave them for ``freehand3d recover``."""
        self.finished = True
        self.close_side_files()


# ---------------------------------------------------------------------- recovery

class _JournalColumns:
    """The per-frame journal lines as arrays, filled line by line (no per-frame Python objects)."""

    def __init__(self):
        self.n = 0
        self.times = array.array("d")
        self.mats: dict[str, array.array] = {}   # 16 doubles per frame
        self.ok: dict[str, bytearray] = {}

    def _column(self, name: str):
        if name not in self.mats:
            mats = array.array("d")
            mats.extend(_IDENTITY * self.n)
            self.mats[name], self.ok[name] = mats, bytearray(self.n)
        return self.mats[name], self.ok[name]

    def add(self, entry: dict) -> None:
        matrices = dict(entry.get("tf") or {})
        if "pose" in entry:
            matrices["\0pose"] = entry["pose"]
        for name, values in matrices.items():
            if len(values) != 16:
                raise ValueError(f"{name}: {len(values)} numbers, not 16")
        self.times.append(float(entry["t"]))
        for name, values in matrices.items():
            self._column(name)
        for name, mats in self.mats.items():
            values = matrices.get(name)
            mats.extend(_IDENTITY if values is None else values)
            self.ok[name].append(values is not None)
        self.n += 1

    def truncate(self, n: int) -> None:
        del self.times[n:]
        for name in self.mats:
            del self.mats[name][16 * n:]
            del self.ok[name][n:]
        self.n = min(self.n, n)


_IDENTITY = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def _read_journal(journal: Path) -> tuple[dict, _JournalColumns]:
    columns = _JournalColumns()
    try:
        handle = open(journal, "rb")
    except OSError as exc:
        raise InputError(f"cannot read the journal: {exc.strerror}", journal) from None
    with handle:
        first = handle.readline()
        try:
            head = json.loads(first)
            if not isinstance(head, dict) or head.get("freehand3d_recording") != JOURNAL_VERSION:
                raise ValueError("not a freehand3d journal")
            shape, dtype = tuple(int(s) for s in head["frame_shape"]), np.dtype(head["dtype"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not a freehand3d recording journal ({exc})", journal) from None
        head["frame_shape"], head["dtype"] = shape, dtype
        # a line is complete only when its newline was written: a torn last line is dropped, and
        # so is everything after a corrupt line (untrustworthy)
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                columns.add(json.loads(line))
            except (ValueError, KeyError, TypeError):
                break
    return head, columns


def recover_recording(record: str | os.PathLike) -> Path:
    """Turn the side files of a recording (finished or interrupted) into the PLUS sequence ``record``.

    Accepts the recording's name or either side file. Keeps every frame whose pixels and journal
    line are both complete; removes the side files once the sequence is written (atomically).
    Returns the path of the sequence.
    """
    record = Path(record)
    for suffix in (".pixels", ".journal"):
        if record.name.endswith(suffix):
            record = record.with_name(record.name[: -len(suffix)])
    pixels, journal = side_files(record)
    missing = [p.name for p in (pixels, journal) if not p.exists()]
    if missing:
        if record.exists() and len(missing) == 2:
            raise InputError("nothing to recover: the recording is complete (no .pixels/.journal beside it)", record)
        raise InputError(f"nothing to recover: {', '.join(missing)} not found", record)
    head, columns = _read_journal(journal)
    shape, dtype = head["frame_shape"], head["dtype"]
    frame_bytes = int(np.prod(shape)) * dtype.itemsize
    n = min(columns.n, pixels.stat().st_size // frame_bytes)
    if n == 0:
        raise InputError("no complete frame to recover", journal)
    columns.truncate(n)
    sweep = _sweep_from(head, columns, pixels, n)
    from freehand3d.io import write_sweep

    # uncompressed: compressing would cost minutes for a long session and the frames are streamed
    # from the memory map either way
    with _release_pages(sweep.frames):
        write_sweep(sweep, record, compress=False)
    del sweep
    pixels.unlink()
    journal.unlink()
    return record


@contextlib.contextmanager
def _release_pages(frames: np.ndarray, period: float = 0.2):
    """While the writer reads the frames through the memory map, tell the kernel every ``period``
    s that the pages already read are not needed: they stay in the page cache, but leave this
    process's resident set, which then stays ~100 MB instead of growing to the recording's size."""
    base = frames
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    mm = getattr(base, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        yield
        return
    done = threading.Event()

    def reap():
        while not done.wait(period):
            with contextlib.suppress(Exception):
                mm.madvise(mmap.MADV_DONTNEED)

    thread = threading.Thread(target=reap, daemon=True, name="freehand3d-release-pages")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _sweep_from(head: dict, columns: _JournalColumns, pixels: Path, n: int):
    from freehand3d.sweep import Sweep

    shape, dtype = head["frame_shape"], head["dtype"]
    frames = np.memmap(pixels, dtype=dtype, mode="r", shape=(n, *shape))
    timestamps = np.frombuffer(columns.times, float)[:n].copy()
    transforms, valid = {}, {}
    for name, mats in columns.mats.items():
        transforms[name] = np.frombuffer(mats, float)[: 16 * n].reshape(n, 4, 4).copy()
        valid[name] = np.frombuffer(columns.ok[name], np.uint8)[:n].astype(bool)
    columns.mats.clear()
    pose = transforms.pop("\0pose", None)
    pose_ok = valid.pop("\0pose", None)
    pose_name = f"ImageTo{head.get('reference') or 'Reference'}"
    if pose is not None and pose_name not in transforms and pose_ok.any():
        transforms[pose_name], valid[pose_name] = pose, pose_ok
    kwargs = {}
    if head.get("spacing"):
        kwargs["spacing"] = tuple(head["spacing"][:2])
    sweep = Sweep(frames, timestamps=timestamps, transforms=transforms, valid=valid, **kwargs)
    for key, value in (head.get("metadata") or {}).items():
        sweep.metadata.setdefault(key, value)
    return sweep


def unfinished_recording(record: str | os.PathLike) -> bool:
    return any(p.exists() for p in side_files(record))
