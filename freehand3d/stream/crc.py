"""CRC-64 of OpenIGTLink bodies (ECMA-182 polynomial, MSB first, init 0, no final xor).

pyigtl uses crcmod's byte-at-a-time C loop (about 3 ms for an 820x616 frame); this is the
slice-by-8 variant compiled with numba (8 table look-ups per 8 bytes), about 10x faster. The result
is checked against crcmod in tests/test_stream_recorder.py.
"""

from __future__ import annotations

import threading

import numpy as np

POLY = 0x42F0E1EBA9EA3693


def _tables() -> np.ndarray:
    t = np.zeros((8, 256), np.uint64)
    mask = (1 << 64) - 1
    for b in range(256):
        crc = b << 56
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) & mask if crc & (1 << 63) else (crc << 1) & mask
        t[0, b] = crc
    for k in range(1, 8):
        for b in range(256):
            prev = int(t[k - 1, b])
            t[k, b] = ((prev << 8) & mask) ^ int(t[0, prev >> 56])
    return t


_TABLES = _tables()
_kernel = None


def _build_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def crc64_kernel(data, tables):
        crc = np.uint64(0)
        n = data.shape[0]
        i = 0
        s8, s56 = np.uint64(8), np.uint64(56)
        ff = np.uint64(0xFF)
        while i + 8 <= n:
            x = crc
            x ^= (np.uint64(data[i]) << np.uint64(56)) | (np.uint64(data[i + 1]) << np.uint64(48)) \
                | (np.uint64(data[i + 2]) << np.uint64(40)) | (np.uint64(data[i + 3]) << np.uint64(32)) \
                | (np.uint64(data[i + 4]) << np.uint64(24)) | (np.uint64(data[i + 5]) << np.uint64(16)) \
                | (np.uint64(data[i + 6]) << s8) | np.uint64(data[i + 7])
            crc = (tables[7, (x >> s56) & ff] ^ tables[6, (x >> np.uint64(48)) & ff]
                   ^ tables[5, (x >> np.uint64(40)) & ff] ^ tables[4, (x >> np.uint64(32)) & ff]
                   ^ tables[3, (x >> np.uint64(24)) & ff] ^ tables[2, (x >> np.uint64(16)) & ff]
                   ^ tables[1, (x >> s8) & ff] ^ tables[0, x & ff])
            i += 8
        while i < n:
            crc = tables[0, ((crc >> s56) ^ np.uint64(data[i])) & ff] ^ (crc << s8)
            i += 1
        return crc

    return crc64_kernel


_warming: threading.Thread | None = None


def _warm() -> None:
    global _kernel
    try:
        kernel = _build_kernel()
        kernel(np.zeros(16, np.uint8), _TABLES)  # load from the cache / compile now
        _kernel = kernel
    except Exception:  # noqa: BLE001 - numba unavailable: crcmod stays in use
        pass


def warm_up(wait: bool = False) -> None:
    """Import and compile the fast kernel in the background (numba's import takes seconds);
    until it is ready :func:`crc64` uses crcmod. ``wait``: return only when it is ready (do this
    before connecting: an import in a background thread holds the GIL and delays the frames)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_warm, daemon=True, name="freehand3d-crc-warmup")
        _warming.start()
    if wait:
        _warming.join()


def crc64(data) -> int:
    """CRC-64 of a bytes-like object (bytes, bytearray, memoryview, contiguous array)."""
    view = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    kernel = _kernel
    if kernel is None or len(view) < 4096:  # crcmod's C loop wins below a few kB (no call overhead)
        if kernel is None:
            warm_up()
        from pyigtl.messages import CRC64

        return CRC64(view)
    return int(kernel(view, _TABLES))
