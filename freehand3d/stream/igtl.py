"""Lossless OpenIGTLink input (PlusServer, 3D Slicer) and a PLUS-style replay server.

Why not pyigtl's client: it keeps only the latest message per device name (a frame that is not
collected in time is overwritten), its send queue drops beyond 100 messages, and a header split
across two TCP reads desynchronises it. :class:`IGTLSource` therefore reads the socket itself, with
exact-length reads, and uses only pyigtl's *message classes* to decode IMAGE and TRANSFORM bodies.
Every decoded message is queued (nothing is overwritten); malformed messages are counted and
skipped, and after a corrupted header the reader re-synchronises on the next plausible header; a
server restart is survived by reconnecting.

PLUS conventions understood:

* IMAGE messages named ``<Image>_<Frame>`` (e.g. ``Image_Reference``) carry ``ImageTo<Frame>`` in
  their matrix (spacing inside the direction columns; the wire format stores the image centre,
  pyigtl moves it back to the first pixel), so they give frame and pose at once.
* A plain IMAGE (e.g. ``Image``) plus TRANSFORM messages (``ProbeToTracker``,
  ``ReferenceToTracker``, ``ImageToReference`` ...) are matched by timestamp, interpolating the
  transforms (SLERP + linear) at the image time; ``ImageToReference`` is composed with a
  calibration (``image_to_probe``) when only tracker transforms arrive.
* Matrices are used as sent (PLUS's coordinate frames are tracker frames, no LPS/RAS flip).
"""

from __future__ import annotations

import collections
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from freehand3d import geometry
from freehand3d.errors import StreamError

HEADER_SIZE = 58
_HEADER = struct.Struct("> H 12s 20s I I Q Q")
KNOWN_TYPES = (
    b"IMAGE", b"TRANSFORM", b"STRING", b"STATUS", b"POINT", b"POSITION", b"POLYDATA", b"TDATA",
    b"QTDATA", b"SENSOR", b"COMMAND", b"RTS_COMMAND", b"GET_IMAGE", b"CAPABILITY", b"NDARRAY",
    b"VIDEO", b"STT_TDATA", b"STP_TDATA", b"GET_STATUS", b"IMGMETA", b"LBMETA", b"TRAJ",
)
#: body size above which a header is considered corrupt (a 4K RGB volume slab is far below this)
MAX_BODY_BYTES = 512 * 1024 * 1024


@dataclass
class StreamItem:
    """One tracked frame from the stream.

    ``pose`` is ImageTo<reference> (pixels -> mm) when it could be determined, else None.
    ``transforms`` holds the interpolated tracker transforms at the frame time.
    ``received`` is the local wall-clock time (``time.time()``) when the image message was read.
    """

    frame: np.ndarray
    pose: np.ndarray | None
    timestamp: float
    device: str
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    received: float = 0.0


@dataclass
class StreamStats:
    messages: int = 0
    frames: int = 0
    transforms: int = 0
    malformed: int = 0
    crc_errors: int = 0
    resync_bytes: int = 0
    reconnects: int = 0
    missed: int = 0
    other: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _timestamp_fields(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    frac = int(round((seconds - whole) * 2**32))
    if frac >= 2**32:
        whole, frac = whole + 1, 0
    return whole, frac


def _parse_header(raw: bytes) -> dict | None:
    """Decode a 58-byte header; None if it is not plausible (used for resynchronisation)."""
    version, mtype, device, sec, frac, body_size, crc = _HEADER.unpack(raw)
    if version not in (1, 2, 3):
        return None
    mtype = mtype.rstrip(b"\0")
    if mtype not in KNOWN_TYPES:
        return None
    dev = device.split(b"\0", 1)[0]
    if any(c < 32 or c > 126 for c in dev):
        return None
    if body_size > MAX_BODY_BYTES:
        return None
    return {
        "header_version": version,
        "message_type": mtype.decode("ascii"),
        "device_name": dev.decode("ascii"),
        "timestamp": sec + frac / 2**32,
        "body_size": body_size,
        "crc": crc,
    }


def decode_message(header: dict, body: bytes):
    """Decode a body with pyigtl's message classes; raises ValueError when it is malformed."""
    import pyigtl

    msg = pyigtl.MessageBase.create_message(header["message_type"])
    if msg is None:
        return None
    fields = {k: header[k] for k in ("header_version", "message_type", "device_name", "timestamp", "body_size")}
    try:
        msg.unpack(fields, body)
    except Exception as exc:  # pyigtl raises struct.error, ValueError, NotImplementedError...
        raise ValueError(f"cannot decode {header['message_type']} body: {exc}") from None
    if header["message_type"] == "IMAGE":
        image = np.asarray(msg.image)
        if image.ndim not in (2, 3, 4) or image.size == 0:
            raise ValueError("IMAGE without pixels")
    return msg


class _Reader(threading.Thread):
    """Socket reader: exact reads, CRC check, resync, reconnect; pushes (header, message)."""

    def __init__(self, host, port, out: queue.Queue, stats: StreamStats, reconnect: bool,
                 connect_timeout: float, check_crc: bool):
        super().__init__(daemon=True, name="freehand3d-igtl-reader")
        self.host, self.port, self.out, self.stats = host, port, out, stats
        self.reconnect, self.connect_timeout, self.check_crc = reconnect, connect_timeout, check_crc
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.error: Exception | None = None
        self._buf = bytearray()

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self.connect_timeout
        while not self.stop_event.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                sock.settimeout(0.2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
                self.connected.set()
                return sock
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.1)
        return None

    def _fill(self, sock: socket.socket, n: int) -> bool:
        """Make the buffer hold at least n bytes; False when the connection ended."""
        while len(self._buf) < n:
            if self.stop_event.is_set():
                return False
            try:
                chunk = sock.recv(max(1 << 20, n - len(self._buf)))
            except socket.timeout:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            self._buf += chunk
        return True

    def _resync(self) -> None:
        # drop bytes until a known message type appears where a header's type field would be
        best = None
        for t in KNOWN_TYPES:
            pos = self._buf.find(t + b"\0", 3)
            if pos >= 2 and (best is None or pos < best):
                best = pos
        drop = len(self._buf) - HEADER_SIZE if best is None else best - 2
        drop = max(1, drop)
        self.stats.resync_bytes += drop
        del self._buf[:drop]

    def run(self) -> None:
        first = True
        while not self.stop_event.is_set():
            sock = self._connect()
            if sock is None:
                if first:
                    self.error = StreamError(f"cannot connect to {self.host}:{self.port}", f"{self.host}:{self.port}")
                self.out.put(None)
                return
            if not first:
                self.stats.reconnects += 1
                self.out.put("reconnected")
            first = False
            self._buf = bytearray()
            in_garbage = False
            try:
                while not self.stop_event.is_set():
                    if not self._fill(sock, HEADER_SIZE):
                        break
                    header = _parse_header(bytes(self._buf[:HEADER_SIZE]))
                    if header is None:
                        if not in_garbage:
                            self.stats.malformed += 1
                            in_garbage = True
                        self._resync()
                        continue
                    in_garbage = False
                    total = HEADER_SIZE + header["body_size"]
                    if not self._fill(sock, total):
                        break
                    body = bytes(self._buf[HEADER_SIZE:total])
                    del self._buf[:total]
                    received = time.time()
                    self.stats.messages += 1
                    if self.check_crc and header["crc"] != 0:
                        from pyigtl.messages import CRC64

                        if CRC64(body) != header["crc"]:
                            self.stats.crc_errors += 1
                            self.stats.malformed += 1
                            continue
                    try:
                        msg = decode_message(header, body)
                    except ValueError:
                        self.stats.malformed += 1
                        continue
                    if msg is None:
                        self.stats.other += 1
                        continue
                    self.out.put((header, msg, received))
            finally:
                sock.close()
                self.connected.clear()
            if not self.reconnect:
                break
        self.out.put(None)


class IGTLSource:
    """Iterate over every tracked frame an OpenIGTLink server sends.

    Parameters
    ----------
    host, port : the server (PlusServer listens on 18944 by default).
    image_device : IMAGE device name to use (``"Image"`` or ``"Image_Reference"``); None takes the
        first IMAGE device seen.
    reference : the frame poses are wanted in (default ``"Reference"``).
    image_to_probe : calibration (4x4, pixels -> mm) to compose ImageToReference from
        ``ProbeToTracker`` and ``ReferenceToTracker`` when the server sends only tracker transforms.
    transform_wait : seconds an image may wait for transforms newer than itself before it is
        emitted with the latest ones (extrapolation is never done: such frames get no pose).
    reconnect : reconnect when the server goes away (until ``close()``).
    connect_timeout : seconds to keep trying to (re)connect.

    Yields :class:`StreamItem`; ``stats`` counts frames, malformed messages, reconnects and frames
    missed across reconnections (the time gap between the last frame before and the first frame
    after a reconnection, in median frame intervals, minus one).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 18944, image_device: str | None = None,
                 reference: str = "Reference", image_to_probe=None, transform_wait: float = 0.25,
                 reconnect: bool = True, connect_timeout: float = 10.0, check_crc: bool = True,
                 max_queue: int = 0):
        self.host, self.port = host, int(port)
        self.image_device = image_device
        self.reference = reference
        self.image_to_probe = None if image_to_probe is None else np.asarray(image_to_probe, float)
        self.transform_wait = float(transform_wait)
        self.stats = StreamStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._reader = _Reader(self.host, self.port, self._queue, self.stats, reconnect, connect_timeout, check_crc)
        self._history: dict[str, collections.deque] = {}
        self._pending: collections.deque = collections.deque()
        self._intervals: collections.deque = collections.deque(maxlen=50)
        self._last_time: float | None = None
        self._started = False
        self._after_reconnect = False

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "IGTLSource":
        if not self._started:
            self._reader.start()
            self._started = True
        return self

    def close(self) -> None:
        self._reader.stop_event.set()
        if self._started:
            self._reader.join(timeout=2.0)

    def __enter__(self) -> "IGTLSource":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- matching
    def _add_transform(self, name: str, t: float, matrix: np.ndarray) -> None:
        hist = self._history.setdefault(name, collections.deque(maxlen=256))
        if hist and t <= hist[-1][0]:
            if t == hist[-1][0]:
                hist[-1] = (t, matrix)
            return
        hist.append((t, matrix))

    def _transforms_at(self, t: float) -> dict[str, np.ndarray]:
        out = {}
        for name, hist in self._history.items():
            times = np.array([h[0] for h in hist])
            if t < times[0] or t > times[-1]:
                continue
            idx = int(np.searchsorted(times, t))
            if times[min(idx, len(times) - 1)] == t:
                out[name] = hist[min(idx, len(times) - 1)][1]
                continue
            lo, hi = hist[idx - 1], hist[idx]
            pose, ok = geometry.interpolate_poses([lo[0], hi[0]], np.stack([lo[1], hi[1]]), [t])
            if ok[0]:
                out[name] = pose[0]
        return out

    def _ready(self, t: float, now: float) -> bool:
        if not self._history:
            return True
        newest = min(h[-1][0] for h in self._history.values())
        return newest >= t or now - self._pending[0][3] > self.transform_wait

    def _pose(self, device: str, matrix: np.ndarray, transforms: dict) -> np.ndarray | None:
        if device.endswith("_" + self.reference):
            return matrix
        graph = geometry.FrameGraph(transforms)
        if self.image_to_probe is not None and "ImageToProbe" not in transforms:
            graph.add("ImageToProbe", self.image_to_probe)
        try:
            return graph.get(f"ImageTo{self.reference}")
        except KeyError:
            return None

    def _emit(self, entry) -> StreamItem:
        t, device, frame, received, matrix, entry_after_reconnect = entry
        transforms = self._transforms_at(t)
        if self._last_time is not None:
            gap = t - self._last_time
            if gap > 0 and entry_after_reconnect and self._intervals:
                # frames the server sent while we were disconnected: estimate from the time gap
                med = float(np.median(self._intervals))
                if med > 0:
                    self.stats.missed += max(0, int(round(gap / med)) - 1)
            elif gap > 0:
                self._intervals.append(gap)
        self._last_time = t
        self.stats.frames += 1
        return StreamItem(frame, self._pose(device, matrix, transforms), t, device, transforms, received)

    def __iter__(self) -> Iterator[StreamItem]:
        self.start()
        while True:
            now = time.time()
            while self._pending and self._ready(self._pending[0][0], now):
                yield self._emit(self._pending.popleft())
            try:
                entry = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if entry is None:
                while self._pending:
                    yield self._emit(self._pending.popleft())
                if self._reader.error is not None:
                    raise self._reader.error
                return
            if entry == "reconnected":
                self._after_reconnect = True
                continue
            header, msg, received = entry
            if header["message_type"] == "TRANSFORM":
                self.stats.transforms += 1
                self._add_transform(header["device_name"], header["timestamp"], np.asarray(msg.matrix, float))
            elif header["message_type"] == "IMAGE":
                device = header["device_name"]
                if self.image_device is None:
                    self.image_device = device
                if device != self.image_device:
                    self.stats.other += 1
                    continue
                frame = _to_frame(msg.image)
                matrix = np.asarray(msg.ijk_to_world_matrix, float)
                self._pending.append((header["timestamp"], device, frame, received, matrix, self._after_reconnect))
                self._after_reconnect = False
            else:
                self.stats.other += 1


def _to_frame(image: np.ndarray) -> np.ndarray:
    """(k, j, i[, c]) IGTL pixels -> (H, W) uint8 frame (mean over colour components)."""
    img = np.asarray(image)
    if img.ndim == 4:
        img = img.mean(axis=-1)
    if img.ndim == 3:
        img = img[0]
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = np.zeros(img.shape, np.uint8) if hi <= lo else ((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.ascontiguousarray(img)


# ============================================================================ sending

def pack_message(msg) -> bytes:
    """pyigtl message -> bytes (pyigtl computes the CRC)."""
    return msg.pack()


def image_message(frame: np.ndarray, device: str, timestamp: float, image_to_world=None):
    import pyigtl

    matrix = np.eye(4) if image_to_world is None else np.asarray(image_to_world, float)
    return pyigtl.ImageMessage(np.asarray(frame)[None], ijk_to_world_matrix=matrix, timestamp=timestamp,
                               device_name=device)


def transform_message(matrix: np.ndarray, device: str, timestamp: float):
    import pyigtl

    return pyigtl.TransformMessage(np.asarray(matrix, float), timestamp=timestamp, device_name=device)


class ReplayServer:
    """Serve a sweep over OpenIGTLink the way PlusServer does, one connected client at a time.

    For every frame it sends one TRANSFORM per valid transform of the sweep (``ProbeToTracker``,
    ``ReferenceToTracker`` ...; plus ``ImageToReference`` when the sweep can compute it), then the
    IMAGE: named ``image_device`` with an identity matrix, or ``<image_device>_<embed>`` carrying
    ``ImageTo<embed>`` when ``embed`` is given (PLUS's EmbeddedTransformToFrame).

    Parameters
    ----------
    sweep : the recording.
    port : TCP port on 127.0.0.1 (0 picks a free one; see ``.port``).
    fps : frames per second; 0 = as fast as the socket takes them.
    timestamps : "original" (the sweep's) or "now" (send time, for latency measurements).
    start_frame, n_frames, loop : which frames to play.
    """

    def __init__(self, sweep, port: int = 18944, fps: float = 0.0, image_device: str = "Image",
                 embed: str | None = None, timestamps: str = "original", start_frame: int = 0,
                 n_frames: int | None = None, loop: bool = False, host: str = "127.0.0.1"):
        self.sweep = sweep
        self.fps = float(fps)
        self.image_device = image_device
        self.embed = embed
        self.timestamps = timestamps
        self.start_frame, self.loop = int(start_frame), loop
        self.n_frames = len(sweep) - self.start_frame if n_frames is None else int(n_frames)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, int(port)))
        except OSError as exc:
            raise StreamError(f"cannot listen on port {port}: {exc.strerror}", f"{host}:{port}") from None
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poses = self._embedded_poses()

    def _embedded_poses(self):
        if self.embed is None:
            return None
        mats, ok = self.sweep.transform(f"ImageTo{self.embed}")
        return mats, ok

    def frame_messages(self, index: int, now: float | None = None) -> bytes:
        """Wire bytes for frame ``index`` (transforms then image)."""
        sweep = self.sweep
        t = float(sweep.timestamps[index]) if self.timestamps == "original" else (now or time.time())
        parts = []
        for name, mats in sweep.transforms.items():
            if sweep.valid[name][index]:
                parts.append(pack_message(transform_message(mats[index], name, t)))
        matrix, device = None, self.image_device
        if self._poses is not None:
            mats, ok = self._poses
            if ok[index]:
                matrix, device = mats[index], f"{self.image_device}_{self.embed}"
        parts.append(pack_message(image_message(sweep.frames[index], device, t, matrix)))
        return b"".join(parts)

    def serve_once(self, accept_timeout: float = 30.0) -> int:
        """Wait for one client, play the frames to it, close. Returns frames sent."""
        self._listener.settimeout(accept_timeout)
        try:
            conn, _ = self._listener.accept()
        except socket.timeout:
            return 0
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        sent = 0
        t0 = time.perf_counter()
        try:
            while not self._stop.is_set():
                for k in range(self.n_frames):
                    if self._stop.is_set():
                        break
                    idx = (self.start_frame + k) % len(self.sweep)
                    if period:
                        delay = t0 + sent * period - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    conn.sendall(self.frame_messages(idx))
                    sent += 1
                    self.sent += 1
                if not self.loop:
                    break
        except OSError:
            pass
        finally:
            conn.close()
        return sent

    def _serve_and_close(self) -> None:
        try:
            self.serve_once()
        finally:
            self._listener.close()  # a one-shot server goes away when its client is served

    def start(self) -> "ReplayServer":
        """Serve one client in a background thread, then stop listening."""
        self._thread = threading.Thread(target=self._serve_and_close, daemon=True, name="freehand3d-replay")
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        self.wait(2.0)
        self._listener.close()

    def __enter__(self) -> "ReplayServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def send_volume(image, host: str, port: int, device: str = "Volume", timeout: float = 5.0) -> None:
    """Send a SimpleITK volume as one OpenIGTLink IMAGE (e.g. to 3D Slicer's OpenIGTLinkIF server)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    ijk_to_world = np.eye(4)
    ijk_to_world[:3, :3] = direction * np.asarray(image.GetSpacing(), float)[None, :]
    ijk_to_world[:3, 3] = image.GetOrigin()
    import pyigtl

    msg = pyigtl.ImageMessage(arr, ijk_to_world_matrix=ijk_to_world, timestamp=time.time(), device_name=device)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(msg.pack())
    except OSError as exc:
        raise StreamError(f"cannot send the volume: {exc}", f"{host}:{port}") from None
