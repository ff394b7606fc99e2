"""A scripted loopback TCP server for stream tests and benchmarks (misbehaving OpenIGTLink servers)."""

from __future__ import annotations

import socket
import threading


def serve(script, hold: float = 8.0, accept_timeout: float = 15.0):
    """Listen on 127.0.0.1; on each connection run ``script(conn)``, then keep it open ``hold`` s.

    Returns ``(port, stop)``: set the ``stop`` event to end the server (it also ends when no client
    connects within ``accept_timeout`` s).
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(accept_timeout)
    stop = threading.Event()

    def run():
        try:
            while not stop.is_set():
                conn, _ = listener.accept()
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
