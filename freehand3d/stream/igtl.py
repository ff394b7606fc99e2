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

import bisect
import collections
import contextlib
import queue
import select
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
    b"STT_IMAGE", b"STP_IMAGE", b"RTS_IMAGE", b"RTS_TDATA", b"GET_TRANS", b"GET_TDATA", b"STT_QTDATA",
    b"STP_QTDATA", b"RTS_QTDATA", b"GET_POINT", b"GET_IMGMETA", b"GET_LBMETA", b"GET_CAPABIL",
)
#: default body size above which a header is considered corrupt (a 4096x4096 RGBA float32 frame is
#: 256 MiB; an 820x616 uint8 frame 0.5 MB)
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass
class StreamItem:
    """One tracked frame from the stream.

    ``frame`` is (H, W) or (H, W, C) in the sender's scalar type (nothing is rescaled).
    ``pose`` is ImageTo<reference> (pixels -> mm) when it could be determined, else None.
    ``transforms`` holds the interpolated tracker transforms at the frame time.
    ``received`` is the local wall-clock time (``time.time()``) when the image message was read.
    ``spacing`` (sx, sy) mm and ``image_matrix`` (4x4 pixel -> world, first pixel at the origin)
    are the IMAGE message's own geometry.
    """

    frame: np.ndarray
    pose: np.ndarray | None
    timestamp: float
    device: str
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    received: float = 0.0
    spacing: tuple[float, float] | None = None
    image_matrix: np.ndarray | None = None


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
    stalled: int = 0
    zero_timestamps: int = 0
    requests_sent: int = 0
    devices: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["devices"] = dict(self.devices)
        return out

    def seen(self) -> str:
        """The message types and device names received so far, for error messages."""
        parts = [f"{key} x{count}" for key, count in sorted(dict(self.devices).items(), key=lambda kv: -kv[1])[:8]]
        text = ", ".join(parts) if parts else "no valid message"
        if self.malformed:
            text += f" ({self.malformed} malformed, {self.resync_bytes} bytes skipped"
            text += f", {self.stalled} stalled)" if self.stalled else ")"
        return text


def _timestamp_fields(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    frac = int(round((seconds - whole) * 2**32))
    if frac >= 2**32:
        whole, frac = whole + 1, 0
    return whole, frac


def _parse_header(raw, max_body: int = MAX_BODY_BYTES, any_type: bool = False) -> dict | None:
    """Decode a 58-byte header; None if it is not plausible (used for resynchronisation).
    ``any_type`` accepts any printable type name (not only the known ones)."""
    version, mtype, device, sec, frac, body_size, crc = _HEADER.unpack(raw)
    if version not in (1, 2, 3):
        return None
    mtype = mtype.rstrip(b"\0")
    if mtype not in KNOWN_TYPES and not (any_type and mtype and all(48 <= c < 91 or c == 95 for c in mtype)):
        return None
    dev = device.split(b"\0", 1)[0]
    if any(c < 32 or c > 126 for c in dev):
        return None
    if body_size > max_body:
        return None
    return {
        "header_version": version,
        "message_type": mtype.decode("ascii"),
        "device_name": dev.decode("ascii"),
        "timestamp": sec + frac / 2**32,
        "body_size": body_size,
        "crc": crc,
    }


def pack_header(message_type: str, device: str, timestamp: float, body, version: int = 1,
                crc: int | None = None) -> bytes:
    """58-byte OpenIGTLink header for ``body`` (CRC-64 computed unless given)."""
    from freehand3d.stream.crc import crc64

    sec, frac = _timestamp_fields(timestamp)
    if crc is None:
        crc = crc64(body) if len(body) else 0
    return _HEADER.pack(version, message_type.encode("ascii"), device.encode("ascii")[:20], sec, frac,
                        len(body), crc)


# ---------------------------------------------------------------------------- body decoding

_IMAGE_HEAD = struct.Struct("> H B B B B H H H 12f 6H")
SCALAR_TYPES = {2: np.int8, 3: np.uint8, 4: np.int16, 5: np.uint16, 6: np.int32, 7: np.uint32,
                10: np.float32, 11: np.float64}
SCALAR_CODES = {np.dtype(v): k for k, v in SCALAR_TYPES.items()}


def _content(body, version: int):
    """The message content of a body: header v2/v3 bodies start with an extended header and end
    with metadata."""
    if version < 2:
        return body
    if len(body) < 12:
        raise ValueError("body shorter than the v2 extended header")
    ext_size, meta_head, meta_body, _msg_id = struct.unpack_from("> H H I I", body, 0)
    end = len(body) - meta_head - meta_body
    if ext_size < 12 or end < ext_size:
        raise ValueError("inconsistent v2 extended header")
    return body[ext_size:end]


@dataclass
class ImageBody:
    """A decoded IMAGE: ``pixels`` (k, j, i[, c]) native-endian, ``matrix`` 4x4 ijk -> world with
    pixel (0, 0, 0) at the origin (the wire stores the image centre), ``spacing`` (3,) mm."""

    pixels: np.ndarray
    matrix: np.ndarray
    spacing: np.ndarray
    coordinates: str


def decode_image(body, version: int = 1) -> ImageBody:
    """Decode an IMAGE body (any scalar type, any component count); raises ValueError if malformed."""
    content = _content(memoryview(body), version)
    if len(content) < _IMAGE_HEAD.size:
        raise ValueError("IMAGE body shorter than its header")
    v = _IMAGE_HEAD.unpack_from(content, 0)
    components, scalar, endian, coords = v[1], v[2], v[3], v[4]
    size = np.array(v[5:8])
    if scalar not in SCALAR_TYPES:
        raise ValueError(f"IMAGE scalar type {scalar} is unknown")
    if components < 1 or (size < 1).any():
        raise ValueError("IMAGE without pixels")
    if tuple(v[20:23]) != (0, 0, 0) or tuple(v[23:26]) != tuple(v[5:8]):
        raise ValueError("IMAGE sub-volumes are not supported")
    dtype = np.dtype(SCALAR_TYPES[scalar]).newbyteorder("<" if endian == 2 else ">")
    count = int(np.prod(size)) * components
    if len(content) - _IMAGE_HEAD.size != count * dtype.itemsize:
        raise ValueError(f"IMAGE body holds {len(content) - _IMAGE_HEAD.size} pixel bytes, its header "
                         f"declares {count * dtype.itemsize}")
    pixels = np.frombuffer(content, dtype, count, _IMAGE_HEAD.size)
    if not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder("="))
    shape = (size[2], size[1], size[0]) + ((components,) if components > 1 else ())
    pixels = pixels.reshape(shape)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], centre = v[8:11], v[11:14], v[14:17], v[17:20]
    # the wire carries the image centre: move it back to the first pixel
    matrix[:3, 3] = np.asarray(centre) - matrix[:3, :3] @ ((size - 1) / 2.0)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return ImageBody(pixels, matrix, spacing, "ras" if coords == 1 else "lps")


def decode_transform(body, version: int = 1) -> np.ndarray:
    content = _content(memoryview(body), version)
    if len(content) != 48:
        raise ValueError(f"TRANSFORM body of {len(content)} bytes (expected 48)")
    v = struct.unpack("> 12f", content)
    return np.array([[v[0], v[3], v[6], v[9]], [v[1], v[4], v[7], v[10]], [v[2], v[5], v[8], v[11]],
                     [0.0, 0.0, 0.0, 1.0]])


def decode_message(header: dict, body):
    """IMAGE -> :class:`ImageBody`, TRANSFORM -> 4x4 matrix, anything else -> None; ValueError if malformed."""
    try:
        if header["message_type"] == "IMAGE":
            return decode_image(body, header["header_version"])
        if header["message_type"] == "TRANSFORM":
            return decode_transform(body, header["header_version"])
    except struct.error as exc:
        raise ValueError(f"cannot decode {header['message_type']} body: {exc}") from None
    return None


# ---------------------------------------------------------------------------- reading

#: bytes read per recv; a message body grows by at most this much beyond what has arrived
_CHUNK = 4 * 1024 * 1024


class _Stalled(Exception):
    pass


def request_message(message_type: str, device: str = "", body: bytes = b"") -> bytes:
    return pack_header(message_type, device, time.time(), body) + body


class _Reader(threading.Thread):
    """Socket reader: exact reads, CRC check, resync, reconnect, requests; pushes decoded messages.

    The queue it fills is bounded: when the consumer falls behind, the reader waits, the socket
    buffer fills and TCP slows the sender down (nothing is dropped here).
    """

    def __init__(self, host, port, out: queue.Queue, stats: StreamStats, reconnect: bool,
                 connect_timeout: float, check_crc: bool, stall_timeout: float = 5.0,
                 request: str = "auto", image_device: str | None = None, request_interval: float = 1.0,
                 max_body: int = MAX_BODY_BYTES):
        super().__init__(daemon=True, name="freehand3d-igtl-reader")
        self.max_body = int(max_body)
        self._pushback = bytearray()  # bytes read ahead while resynchronising
        self.host, self.port, self.out, self.stats = host, port, out, stats
        self.reconnect, self.connect_timeout, self.check_crc = reconnect, connect_timeout, check_crc
        self.stall_timeout = float(stall_timeout)
        self.request, self.image_device, self.request_interval = request, image_device, float(request_interval)
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.connected_at: float | None = None
        self.error: Exception | None = None
        self._last_image = 0.0
        self._polling = False
        self._stt_sent = False

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self.connect_timeout
        while not self.stop_event.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                sock.settimeout(0.2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
                if self.connected_at is None:  # the no-image watchdog counts from the first connection
                    self.connected_at = time.monotonic()
                self.connected.set()
                return sock
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.1)
        return None

    # ------------------------------------------------------------ requests
    def _send(self, sock, message_type: str, body: bytes = b"") -> None:
        try:
            sock.sendall(request_message(message_type, self.image_device or "", body))
            self.stats.requests_sent += 1
        except OSError:
            pass

    def _requests_on_connect(self, sock) -> None:
        self._last_image = time.monotonic()
        self._polling = self.request == "get"
        self._stt_sent = False
        if self.request == "stt":
            self._start_streaming(sock)
        elif self.request == "get":
            self._send(sock, "GET_IMAGE")

    def _start_streaming(self, sock) -> None:
        self._send(sock, "STT_IMAGE")
        # STT_TDATA: resolution (ms) and coordinate name
        self._send(sock, "STT_TDATA", struct.pack("> I 32s", 0, b""))
        self._stt_sent = True

    def _idle(self, sock) -> None:
        """No message for a while: ask an on-request server for images."""
        if self.request not in ("auto", "get"):
            return
        now = time.monotonic()
        if now - self._last_image < self.request_interval:
            return
        if self.request == "auto" and not self._stt_sent:
            self._start_streaming(sock)
        self._send(sock, "GET_IMAGE")
        self._polling = True
        self._last_image = now

    def _image_arrived(self, sock) -> None:
        self._last_image = time.monotonic()
        if self._polling:
            self._send(sock, "GET_IMAGE")

    # ------------------------------------------------------------ reading
    def _recv_into(self, sock, view, mid_message: bool) -> bool:
        """Fill ``view``; False when the connection ended; _Stalled when a message stops arriving."""
        got, n = 0, len(view)
        if self._pushback:
            got = min(n, len(self._pushback))
            view[:got] = self._pushback[:got]
            del self._pushback[:got]
        last = time.monotonic()
        while got < n:
            if self.stop_event.is_set():
                return False
            try:
                k = sock.recv_into(view[got:], min(n - got, _CHUNK))
            except socket.timeout:
                now = time.monotonic()
                if (mid_message or got) and now - last > self.stall_timeout:
                    raise _Stalled
                if not got and not mid_message:
                    self._idle(sock)
                continue
            except OSError:
                return False
            if k == 0:
                return False
            got += k
            last = time.monotonic()
        return True

    def _read_body(self, sock, size: int):
        """The body, in a buffer that grows only as its bytes arrive (a bogus size costs nothing)."""
        if size <= _CHUNK:
            buf = bytearray(size)
            with memoryview(buf) as view:
                return buf if self._recv_into(sock, view, True) else None
        buf = bytearray(_CHUNK)
        got = 0
        while got < size:
            if got == len(buf):  # grow by a quarter: the overshoot beyond what arrived stays small
                buf.extend(bytes(min(size, len(buf) + max(_CHUNK, len(buf) // 4)) - len(buf)))
            with memoryview(buf) as view:
                if not self._recv_into(sock, view[got:min(len(buf), got + _CHUNK)], True):
                    return None
            got = min(len(buf), got + _CHUNK)
        return buf

    def _put(self, entry) -> bool:
        while not self.stop_event.is_set():
            try:
                self.out.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next_header(self, sock, head: bytearray, in_garbage: list) -> dict | None | bool:
        """Read until a plausible header is in ``head``; False when the connection ended."""
        with memoryview(head) as view:
            if not self._recv_into(sock, view, False):
                return False
        while True:
            header = _parse_header(head, self.max_body)
            if header is not None:
                in_garbage[0] = False
                return header
            if not in_garbage[0]:
                self.stats.malformed += 1
                in_garbage[0] = True
            # garbage: read ahead in large pieces and look for a known message type where a
            # header's type field would be (bytes 2..13), then re-read the header from there
            window = bytes(head) + bytes(self._pushback)
            self._pushback.clear()
            first = 3  # the header at 0 was rejected; later windows start with a kept tail
            while True:
                best = None
                for t in KNOWN_TYPES:
                    pos = window.find(t + b"\0", first)
                    if pos >= first and (best is None or pos < best):
                        best = pos
                if best is not None:
                    self.stats.resync_bytes += best - 2
                    self._pushback += window[best - 2:]
                    break
                # keep a tail that could hold the start of a header whose type is not complete yet
                keep = 15
                self.stats.resync_bytes += max(0, len(window) - keep)
                window = window[-keep:]
                first = 2
                chunk = bytearray(1 << 20)
                with memoryview(chunk) as cview:
                    got = self._recv_some(sock, cview)
                if got is None:
                    return False
                window += bytes(chunk[:got])
            with memoryview(head) as view:
                if not self._recv_into(sock, view, True):
                    return False

    def _recv_some(self, sock, view) -> int | None:
        """Up to len(view) bytes, whatever has arrived (at least 1); None when the connection ended."""
        last = time.monotonic()
        while not self.stop_event.is_set():
            try:
                k = sock.recv_into(view)
            except socket.timeout:
                if time.monotonic() - last > self.stall_timeout:
                    raise _Stalled from None
                continue
            except OSError:
                return None
            return k or None
        return None

    def _serve_connection(self, sock) -> None:
        self._pushback.clear()
        self._requests_on_connect(sock)
        head = bytearray(HEADER_SIZE)
        in_garbage = [False]
        while not self.stop_event.is_set():
            header = self._next_header(sock, head, in_garbage)
            if header is False:
                return
            body = self._read_body(sock, header["body_size"])
            if body is None:
                return
            received = time.time()
            self.stats.messages += 1
            key = f"{header['message_type']} {header['device_name']!r}"
            self.stats.devices[key] = self.stats.devices.get(key, 0) + 1
            if self.check_crc and header["crc"] != 0:
                from freehand3d.stream.crc import crc64

                if crc64(body) != header["crc"]:
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
            if header["message_type"] == "IMAGE" and (self.image_device is None
                                                      or header["device_name"] == self.image_device):
                self._image_arrived(sock)
            if not self._put((header, msg, received)):
                return

    def run(self) -> None:
        first = True
        while not self.stop_event.is_set():
            sock = self._connect()
            if sock is None:
                if first:
                    self.error = StreamError(f"cannot connect to {self.host}:{self.port}", f"{self.host}:{self.port}")
                self._put(None)
                return
            if not first:
                self.stats.reconnects += 1
                self._put("reconnected")
            first = False
            try:
                self._serve_connection(sock)
            except _Stalled:
                self.stats.stalled += 1
                self.stats.malformed += 1
                if not self.reconnect:
                    self.error = StreamError(
                        f"a message from {self.host}:{self.port} stalled: no byte for {self.stall_timeout:g} s "
                        "in the middle of a message", f"{self.host}:{self.port}")
            finally:
                if self.request == "stt" or self._stt_sent:
                    with contextlib.suppress(OSError):
                        sock.sendall(request_message("STP_IMAGE") + request_message("STP_TDATA"))
                sock.close()
                self.connected.clear()
            if not self.reconnect:
                break
        self._put(None)


def _quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix (Shepperd's method, the largest pivot)."""
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    k = int(np.argmax([trace, r[0, 0], r[1, 1], r[2, 2]]))
    if k == 0:
        q = np.array([1 + trace, r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    elif k == 1:
        q = np.array([r[2, 1] - r[1, 2], 1 + r[0, 0] - r[1, 1] - r[2, 2], r[0, 1] + r[1, 0], r[0, 2] + r[2, 0]])
    elif k == 2:
        q = np.array([r[0, 2] - r[2, 0], r[0, 1] + r[1, 0], 1 - r[0, 0] + r[1, 1] - r[2, 2], r[1, 2] + r[2, 1]])
    else:
        q = np.array([r[1, 0] - r[0, 1], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1], 1 - r[0, 0] - r[1, 1] + r[2, 2]])
    return q / np.linalg.norm(q)


def _rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _interpolate_pair(t0: float, m0: np.ndarray, t1: float, m1: np.ndarray, t: float) -> np.ndarray:
    """SLERP rotation + linear translation between two poses at t0 < t < t1 (what
    :func:`freehand3d.geometry.interpolate_poses` computes for two samples, without scipy's
    per-call overhead: ~40 us instead of ~3 ms). Equal matrices are returned as they are (a static
    transform keeps any scale it has)."""
    if np.array_equal(m0, m1):
        return m0
    a = (t - t0) / (t1 - t0)
    q0, q1 = _quaternion(m0[:3, :3]), _quaternion(m1[:3, :3])
    dot = float(q0 @ q1)
    if dot < 0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact to rounding
        q = q0 + a * (q1 - q0)
    else:
        theta = np.arccos(min(1.0, dot))
        q = (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)
    out = np.eye(4)
    out[:3, :3] = _rotation(q / np.linalg.norm(q))
    out[:3, 3] = m0[:3, 3] + a * (m1[:3, 3] - m0[:3, 3])
    return out


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
    max_queue : messages buffered between the socket reader and the consumer; when full, the
        reader waits and TCP slows the sender (nothing is dropped).
    image_timeout : seconds after connecting without a single IMAGE (of ``image_device``) before
        giving up with a message naming the devices that were seen (None: wait forever).
    stall_timeout : seconds without a byte in the middle of a message before the connection is
        dropped as stalled.
    request : ``"auto"`` (ask with STT_IMAGE/GET_IMAGE when no IMAGE came for
        ``request_interval`` s), ``"get"`` (poll with GET_IMAGE), ``"stt"`` (send STT_IMAGE and
        STT_TDATA once) or ``"none"``.
    duration : wall-clock seconds after which iteration ends (even if nothing arrives).
    max_message_bytes : a header declaring a larger body is taken for garbage (resynchronised
        over); a body's memory grows only as its bytes arrive.

    Yields :class:`StreamItem`; ``stats`` counts frames, malformed messages, reconnects and frames
    missed across reconnections (the time gap between the last frame before and the first frame
    after a reconnection, in median frame intervals, minus one).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 18944, image_device: str | None = None,
                 reference: str = "Reference", image_to_probe=None, transform_wait: float = 0.25,
                 reconnect: bool = True, connect_timeout: float = 10.0, check_crc: bool = True,
                 max_queue: int = 64, image_timeout: float | None = None, stall_timeout: float = 5.0,
                 request: str = "auto", request_interval: float = 1.0, duration: float | None = None,
                 max_message_bytes: int = MAX_BODY_BYTES):
        if request not in ("auto", "get", "stt", "none"):
            raise ValueError(f"request must be auto, get, stt or none, not {request!r}")
        self.host, self.port = host, int(port)
        self.image_device = image_device
        self.reference = reference
        self.image_to_probe = None if image_to_probe is None else np.asarray(image_to_probe, float)
        self.transform_wait = float(transform_wait)
        self.image_timeout = image_timeout
        self.duration = duration
        self.stats = StreamStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._reader = _Reader(self.host, self.port, self._queue, self.stats, reconnect, connect_timeout, check_crc,
                               stall_timeout=stall_timeout, request=request, image_device=image_device,
                               request_interval=request_interval, max_body=max_message_bytes)
        self._history: dict[str, collections.deque] = {}
        self._pending: collections.deque = collections.deque()
        self._intervals: collections.deque = collections.deque(maxlen=50)
        self._last_time: float | None = None
        self._started = False
        self._after_reconnect = False
        self._stop = threading.Event()
        self.started_at: float | None = None
        self.ended_by: str | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "IGTLSource":
        if not self._started:
            if self._reader.check_crc:
                from freehand3d.stream.crc import warm_up

                warm_up(wait=True)
            self.started_at = time.monotonic()
            self._reader.start()
            self._started = True
        return self

    def stop(self) -> None:
        """End the iteration soon (safe from a signal handler or another thread)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
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
            if hist[-1][0] == t:  # PLUS stamps transforms and image alike: the common case
                out[name] = hist[-1][1]
                continue
            if t < hist[0][0] or t > hist[-1][0]:
                continue
            times = [h[0] for h in hist]
            idx = bisect.bisect_left(times, t)
            if times[idx] == t:
                out[name] = hist[idx][1]
                continue
            lo, hi = hist[idx - 1], hist[idx]
            out[name] = _interpolate_pair(lo[0], lo[1], hi[0], hi[1], t)
        return out

    def _ready(self, t: float, now: float) -> bool:
        if not self._history:
            return True
        newest = min(h[-1][0] for h in self._history.values())
        return newest >= t or now - self._pending[0][3] > self.transform_wait

    def _pose(self, device: str, matrix: np.ndarray, transforms: dict) -> np.ndarray | None:
        if device.endswith("_" + self.reference):
            return matrix
        if f"ImageTo{self.reference}" in transforms:
            return transforms[f"ImageTo{self.reference}"]
        graph = geometry.FrameGraph(transforms)
        if self.image_to_probe is not None and "ImageToProbe" not in transforms:
            graph.add("ImageToProbe", self.image_to_probe)
        try:
            return graph.get(f"ImageTo{self.reference}")
        except KeyError:
            return None

    def _emit(self, entry) -> StreamItem:
        t, device, frame, received, matrix, entry_after_reconnect, spacing = entry
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
        return StreamItem(frame, self._pose(device, matrix, transforms), t, device, transforms, received,
                          spacing, matrix)

    def _no_image_error(self, seconds: float) -> StreamError:
        wanted = f"IMAGE named {self.image_device!r}" if self.image_device else "IMAGE message"
        return StreamError(f"no {wanted} in {seconds:.1f} s; received: {self.stats.seen()}", self.where)

    def __iter__(self) -> Iterator[StreamItem]:
        return self.iter_items()

    def iter_items(self, heartbeat: float | None = None) -> Iterator[StreamItem | None]:
        """Like iterating the source; with ``heartbeat`` it also yields None after that many
        seconds without a frame, so a consumer can do periodic work (flushing, signals)."""
        self.start()
        deadline = None if self.duration is None else self.started_at + float(self.duration)
        last_yield = time.monotonic()
        while True:
            now = time.time()
            while self._pending and self._ready(self._pending[0][0], now):
                last_yield = time.monotonic()
                yield self._emit(self._pending.popleft())
            mono = time.monotonic()
            if self._stop.is_set() or (deadline is not None and mono >= deadline):
                self.ended_by = "stop" if self._stop.is_set() else "duration"
                while self._pending:
                    yield self._emit(self._pending.popleft())
                return
            if (self.image_timeout is not None and self.stats.frames == 0 and not self._pending
                    and self._reader.connected_at is not None
                    and mono - self._reader.connected_at > self.image_timeout):
                self.close()
                raise self._no_image_error(mono - self._reader.connected_at)
            if heartbeat is not None and mono - last_yield >= heartbeat:
                last_yield = mono
                yield None
            try:
                entry = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if entry is None:
                while self._pending:
                    yield self._emit(self._pending.popleft())
                self.ended_by = "server"
                if self._reader.error is not None:
                    raise self._reader.error
                return
            if entry == "reconnected":
                self._after_reconnect = True
                continue
            header, msg, received = entry
            if header["message_type"] == "TRANSFORM":
                self.stats.transforms += 1
                self._add_transform(header["device_name"], header["timestamp"], msg)
            elif header["message_type"] == "IMAGE":
                device = header["device_name"]
                if self.image_device is None:
                    self.image_device = device
                if device != self.image_device:
                    self.stats.other += 1
                    continue
                pixels = msg.pixels
                if pixels.shape[0] != 1:
                    self.close()
                    raise StreamError(
                        f"IMAGE {device!r} has {pixels.shape[0]} slices ({pixels.shape[2]}x{pixels.shape[1]}x"
                        f"{pixels.shape[0]}); freehand3d records 2D frames, one slice per IMAGE, and does not "
                        "keep only the first slice", self.where)
                t = header["timestamp"]
                if t == 0 and not any(h[0][0] == 0 for h in self._history.values()):
                    # a sender that does not stamp its messages (OpenIGTLink's C++ examples): the
                    # receive time is the best we have. Transforms at 0 too mean a recording that
                    # starts at 0: then 0 is kept, the poses are matched on it
                    self.stats.zero_timestamps += 1
                    t = received
                spacing = (float(msg.spacing[0]), float(msg.spacing[1]))
                self._pending.append((t, device, pixels[0], received, msg.matrix, self._after_reconnect, spacing))
                self._after_reconnect = False
            else:
                self.stats.other += 1


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


def _with_metadata(content: bytes, version: int, metadata: dict | None, message_id: int = 0) -> bytes:
    """Body for header ``version``: v1 is the content; v2/v3 wrap it in the extended header and
    append the metadata (ASCII values)."""
    if version < 2:
        return content
    head, body = [struct.pack("> H", len(metadata or {}))], []
    for key, value in (metadata or {}).items():
        k, v = str(key).encode("utf-8"), str(value).encode("utf-8")
        head.append(struct.pack("> H H I", len(k), 3, len(v)))  # 3: IANA US-ASCII
        body += [k, v]
    meta_head, meta_body = b"".join(head), b"".join(body)
    return b"".join([struct.pack("> H H I I", 12, len(meta_head), len(meta_body), message_id), content,
                     meta_head, meta_body])


def pack_image(frame: np.ndarray, device: str, timestamp: float, image_to_world=None, version: int = 1,
               metadata: dict | None = None, message_id: int = 0) -> bytes:
    """IMAGE message for a (H, W) or (H, W, C) frame of any OpenIGTLink scalar type, sent as is."""
    body = image_body(frame, image_to_world, version, metadata, message_id)
    return pack_header("IMAGE", device, timestamp, body, version) + body


def image_body(frame: np.ndarray, image_to_world=None, version: int = 1, metadata: dict | None = None,
               message_id: int = 0) -> bytes:
    """The body of :func:`pack_image` (what the CRC covers)."""
    frame = np.asarray(frame)
    if frame.dtype.newbyteorder("=") not in SCALAR_CODES:
        raise ValueError(f"OpenIGTLink IMAGE cannot carry {frame.dtype}")
    h, w = frame.shape[:2]
    components = frame.shape[2] if frame.ndim == 3 else 1
    matrix = np.eye(4) if image_to_world is None else np.asarray(image_to_world, float)
    size = np.array([w, h, 1])
    centre = matrix[:3, :3] @ ((size - 1) / 2.0) + matrix[:3, 3]
    little = frame.dtype.byteorder == "<" or (frame.dtype.byteorder in "=|" and np.little_endian)
    head = _IMAGE_HEAD.pack(1, components, SCALAR_CODES[frame.dtype.newbyteorder("=")], 2 if little else 1, 2,
                            w, h, 1, *matrix[:3, 0], *matrix[:3, 1], *matrix[:3, 2], *centre, 0, 0, 0, w, h, 1)
    return _with_metadata(head + np.ascontiguousarray(frame).tobytes(), version, metadata, message_id)


def pack_transform(matrix, device: str, timestamp: float, version: int = 1, metadata: dict | None = None,
                   message_id: int = 0) -> bytes:
    m = np.asarray(matrix, float)
    content = struct.pack("> 12f", *m[:3, 0], *m[:3, 1], *m[:3, 2], *m[:3, 3])
    body = _with_metadata(content, version, metadata, message_id)
    return pack_header("TRANSFORM", device, timestamp, body, version) + body


#: STATUS codes (OpenIGTLink): 1 OK, 2 unknown error, 13 not ready ...
STATUS_OK = 1


def pack_status(message: str, device: str = "", code: int = STATUS_OK, error_name: str = "",
                timestamp: float | None = None, version: int = 1) -> bytes:
    content = struct.pack("> H q 20s", code, 0, error_name.encode("ascii")[:20]) + message.encode("utf-8") + b"\0"
    body = _with_metadata(content, version, {})
    return pack_header("STATUS", device, time.time() if timestamp is None else timestamp, body, version) + body


class ReplayServer:
    """Serve a sweep over OpenIGTLink the way PlusServer does, one connected client at a time.

    For every frame it sends one TRANSFORM per valid transform of the sweep (``ProbeToTracker``,
    ``ReferenceToTracker`` ...), then the IMAGE in the sweep's own pixel type and component count:
    named ``image_device`` with the sweep's pixel spacing in its matrix, or ``<image_device>_<embed>``
    carrying ``ImageTo<embed>`` when ``embed`` is given (PLUS's EmbeddedTransformToFrame).

    With header version 2 (the default) every message carries metadata (``TransformStatus`` for
    transforms, ``FrameNumber`` and the frame's own fields for images). A STATUS message opens and
    closes each session. The client's requests are answered: ``GET_IMAGE`` (the next frame),
    ``GET_TRANSFORM``/``GET_TRANS`` (the current transforms), ``GET_STATUS``; ``STP_<type>`` pauses
    the stream and ``STT_<type>`` resumes it, each acknowledged with ``RTS_<type>``.

    Parameters
    ----------
    sweep : the recording.
    port : TCP port on 127.0.0.1 (0 picks a free one; see ``.port``).
    fps : frames per second; 0 = as fast as the socket takes them.
    timestamps : "original" (the sweep's) or "now" (send time, for latency measurements).
    start_frame, n_frames, loop : which frames to play.
    header_version : 1 or 2.
    on_request : send nothing until asked: ``STT_IMAGE``/``STT_TDATA`` start the stream,
        ``GET_IMAGE`` gets one frame.
    """

    def __init__(self, sweep, port: int = 18944, fps: float = 0.0, image_device: str = "Image",
                 embed: str | None = None, timestamps: str = "original", start_frame: int = 0,
                 n_frames: int | None = None, loop: bool = False, host: str = "127.0.0.1",
                 header_version: int = 2, on_request: bool = False):
        if header_version not in (1, 2):
            raise ValueError("header_version must be 1 or 2")
        self.sweep = sweep
        self.fps = float(fps)
        self.image_device = image_device
        self.embed = embed
        self.timestamps = timestamps
        self.header_version = int(header_version)
        self.on_request = bool(on_request)
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
        self.requests: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poses = self._embedded_poses()
        self._image_matrix = None
        if sweep.spacing is not None and embed is None:
            self._image_matrix = np.diag([sweep.spacing[0], sweep.spacing[1], 1.0, 1.0])
        self._message_id = 0
        # a short recording played in a loop (benchmarks) need not be packed again: keep the IMAGE
        # bodies (with their CRC) of up to 256 MB of frames
        frame_bytes = max(1, sweep.frames[0].nbytes) if len(sweep) else 1
        self._cache_frames = min(len(sweep), (256 << 20) // frame_bytes) if len(sweep) <= 4096 else 0
        self._bodies: dict[int, tuple[bytes, int]] = {}

    def _embedded_poses(self):
        if self.embed is None:
            return None
        mats, ok = self.sweep.transform(f"ImageTo{self.embed}")
        return mats, ok

    def _next_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFFFFFF
        return self._message_id

    def transform_messages(self, index: int, t: float) -> list[bytes]:
        sweep, v = self.sweep, self.header_version
        parts = []
        for name, mats in sweep.transforms.items():
            if sweep.valid[name][index]:
                parts.append(pack_transform(mats[index], name, t, v, {"TransformStatus": "OK"}, self._next_id()))
        return parts

    def frame_messages(self, index: int, now: float | None = None) -> bytes:
        """Wire bytes for frame ``index`` (transforms then image)."""
        sweep, v = self.sweep, self.header_version
        t = float(sweep.timestamps[index]) if self.timestamps == "original" else (now or time.time())
        parts = self.transform_messages(index, t)
        if sweep.frames[index].size == 0:  # tracker-only recording (PLUS tracker buffer): poses only
            return b"".join(parts)
        matrix, device = self._image_matrix, self.image_device
        if self._poses is not None:
            mats, ok = self._poses
            if ok[index]:
                matrix, device = mats[index], f"{self.image_device}_{self.embed}"
        cached = self._bodies.get(index)
        if cached is None:
            metadata = None
            if v >= 2:
                metadata = {"FrameNumber": index}
                for name, values in sweep.frame_fields.items():
                    text = str(values[index]).strip()
                    if text and "\n" not in text:
                        metadata[name] = text
            from freehand3d.stream.crc import crc64

            body = image_body(sweep.frames[index], matrix, v, metadata)
            cached = (body, crc64(body))
            if len(self._bodies) < self._cache_frames:
                self._bodies[index] = cached
        body, crc = cached
        parts.append(pack_header("IMAGE", device, t, body, v, crc=crc))
        parts.append(body)
        return b"".join(parts)

    # ------------------------------------------------------------------ one session
    def _requests(self, conn, session) -> None:
        """Read the client's messages; answer GET_, STT_, STP_ (runs in its own thread)."""
        buf = bytearray()
        while not self._stop.is_set() and not session["done"].is_set():
            try:
                readable, _, _ = select.select([conn], [], [], 0.2)
                if not readable:
                    continue
                chunk = conn.recv(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= HEADER_SIZE:
                header = _parse_header(bytes(buf[:HEADER_SIZE]), max_body=1 << 20, any_type=True)
                if header is None:
                    del buf[:1]  # not a header: resynchronise byte by byte (requests are tiny)
                    continue
                if len(buf) < HEADER_SIZE + header["body_size"]:
                    break
                del buf[:HEADER_SIZE + header["body_size"]]
                self._answer(conn, session, header["message_type"])

    def _send(self, conn, session, data: bytes) -> None:
        with session["lock"]:
            conn.sendall(data)

    def _answer(self, conn, session, mtype: str) -> None:
        self.requests[mtype] = self.requests.get(mtype, 0) + 1
        v = self.header_version
        try:
            if mtype == "GET_IMAGE":
                session["get"].set()
            elif mtype in ("GET_TRANSFORM", "GET_TRANS", "GET_TDATA"):
                idx = session["index"]
                self._send(conn, session, b"".join(self.transform_messages(idx, time.time())))
            elif mtype == "GET_STATUS":
                self._send(conn, session, pack_status("ready", version=v))
            elif mtype.startswith("STT_"):
                with session["lock"]:
                    session["streaming"].set()
                    conn.sendall(self._rts(mtype[4:]))
            elif mtype.startswith("STP_"):
                # under the send lock: no frame leaves after the acknowledgement
                with session["lock"]:
                    session["streaming"].clear()
                    conn.sendall(self._rts(mtype[4:]))
        except OSError:
            pass

    def _rts(self, kind: str) -> bytes:
        body = _with_metadata(b"\x01", self.header_version, {})  # status 1: OK
        return pack_header(f"RTS_{kind}"[:12], "", time.time(), body, self.header_version) + body

    def serve_once(self, accept_timeout: float = 30.0, last: bool = False) -> int:
        """Wait for one client, play the frames to it, close. Returns frames sent.

        ``last``: stop listening as soon as the client is accepted, so that a client reconnecting
        when this session ends is refused rather than queued on a listener about to close.
        """
        self._listener.settimeout(accept_timeout)
        try:
            conn, _ = self._listener.accept()
        except (socket.timeout, OSError):
            return 0
        if last:
            self._listener.close()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # sends may wait for a slow client (back-pressure) but not for ever; requests are polled
        conn.settimeout(60.0)
        session = {"lock": threading.Lock(), "streaming": threading.Event(), "get": threading.Event(),
                   "done": threading.Event(), "index": self.start_frame % len(self.sweep)}
        if not self.on_request:
            session["streaming"].set()
        reader = threading.Thread(target=self._requests, args=(conn, session), daemon=True,
                                  name="freehand3d-replay-requests")
        reader.start()
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        sent = 0
        t0 = time.perf_counter()
        try:
            self._send(conn, session, pack_status(f"freehand3d replay: {self.n_frames} frames",
                                                  version=self.header_version))
            k = 0
            paused = False
            while not self._stop.is_set():
                if k >= self.n_frames:
                    if not self.loop:
                        break
                    k = 0
                streaming = session["streaming"].is_set()
                if streaming and paused:  # resumed: keep the pace from now on, no catch-up burst
                    t0 = time.perf_counter() - sent * period
                paused = not streaming
                if not streaming:
                    # paused or on request: one frame per GET_IMAGE
                    if not session["get"].wait(0.05):
                        continue
                    session["get"].clear()
                    t0 = time.perf_counter() - sent * period
                elif period:
                    delay = t0 + sent * period - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                idx = (self.start_frame + k) % len(self.sweep)
                data = self.frame_messages(idx)
                with session["lock"]:
                    if streaming and not session["streaming"].is_set():
                        continue  # paused (STP_) while this frame was being prepared
                    session["index"] = idx
                    conn.sendall(data)
                sent += 1
                self.sent += 1
                k += 1
            self._send(conn, session, pack_status("end of recording", version=self.header_version))
        except OSError:
            pass
        finally:
            session["done"].set()
            reader.join(1.0)
            self._close_gracefully(conn)
        return sent

    def _close_gracefully(self, conn, timeout: float = 5.0) -> None:
        """End a session without a reset: FIN after the last byte sent, then read (and drop) what the
        client still sends until it closes (at most ``timeout`` s, or until :meth:`close`).

        Closing a socket that holds unread bytes (a polling client's GET_IMAGE requests, its final
        STP_IMAGE) makes the kernel answer with a reset, and the reset discards every byte the
        client has not received yet: a lagging client lost the last 3 frames of a replay and
        reported a clean end (missed 0)."""
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.1)
            deadline = time.monotonic() + timeout
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    if not conn.recv(65536):
                        break  # the client closed: nothing left unread
                except socket.timeout:
                    continue
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_and_close(self, accept_timeout: float) -> None:
        try:
            self.serve_once(accept_timeout, last=True)
        finally:
            self._listener.close()  # a one-shot server goes away when its client is served

    def start(self, accept_timeout: float = 30.0) -> "ReplayServer":
        """Serve one client in a background thread, then stop listening."""
        self._thread = threading.Thread(target=self._serve_and_close, args=(accept_timeout,), daemon=True,
                                        name="freehand3d-replay")
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
