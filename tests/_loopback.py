"""A scripted loopback TCP server for stream tests and benchmarks (misbehaving OpenIGTLink servers)."""

from __future__ import annotations

import socket
import threading
import time


def serve(script, hold: float = 8.0, accept_timeout: float = 300.0):
    """Listen on 127.0.0.1; on each connection run ``script(conn)``, then keep it open ``hold`` s.

    Returns ``(port, stop)``: set the ``stop`` event to end the server (it also ends when no client
    connects within ``accept_timeout`` s). ``accept_timeout`` is a hang guard only: the client may
    first compile its CRC kernel (12 s on a fresh clone at load average 9 on 2 cores), so it must
    not be a few seconds.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)  # poll ``stop`` while waiting for a client
    stop = threading.Event()

    def run():
        deadline = time.monotonic() + accept_timeout
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                conn.settimeout(None)
                try:
                    script(conn)
                    stop.wait(hold)
                except OSError:
                    pass
                finally:
                    conn.close()
        except OSError:
            pass
        finally:
            listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], stop
