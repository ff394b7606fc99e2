"""Streaming benchmark: OpenIGTLink frames + poses into live compounding, on loopback.

A sender process (freehand3d's PLUS-style replay server, send-time timestamps) plays N tracked
480x640 frames; the receiver is freehand3d's IGTLSource feeding the incremental Reconstructor
(nearest, LATEST, 0.5 mm). Rows:

* burst: the sender goes as fast as TCP lets it -> sustained fps without loss;
* paced 60 fps: latency from send to insertion (median / 95th percentile);
* pyigtl's own client on the same burst, polling get_latest_messages() as fast as it can, for
  comparison (it keeps only the latest message per device, so frames are overwritten).

Run: python benchmarks/bench_stream.py [--frames 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time

import numpy as np

H, W = 480, 640
SPACING = 0.2


def make_sweep(n: int, seed: int = 0):
    from freehand3d import geometry
    from freehand3d.sweep import Sweep

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, H, W), dtype=np.uint8)
    frames = base[np.arange(n) % len(base)]
    t = np.linspace(0, 1, n)
    params = np.c_[10 * np.sin(2 * np.pi * t), np.zeros(n), 60 * t, 5 * np.sin(4 * np.pi * t), np.zeros((n, 2))]
    probe_to_tracker = geometry.params_to_matrix(params, "xyz", degrees=True)
    sweep = Sweep(frames, timestamps=np.arange(n) / 60.0, transforms={"ProbeToTracker": probe_to_tracker,
                  "ReferenceToTracker": np.eye(4)})
    sweep.image_to_probe = np.diag([SPACING, SPACING, SPACING, 1.0])
    return sweep


def _sender(port_queue, n, fps):
    from freehand3d.stream.igtl import ReplayServer

    server = ReplayServer(make_sweep(n), port=0, fps=fps, embed="Reference", timestamps="now")
    port_queue.put(server.port)
    server.serve_once(accept_timeout=60)
    server.close()


def run_ours(n: int, fps: float, compound: bool) -> dict:
    from freehand3d.compound import OutputGrid
    from freehand3d.stream.igtl import IGTLSource
    from freehand3d.stream.live import run_live

    q = mp.Queue()
    proc = mp.Process(target=_sender, args=(q, n, fps), daemon=True)
    proc.start()
    port = q.get(timeout=60)
    grid = OutputGrid((-80.0, -10.0, -10.0), (0.5, 0.5, 0.5), (320, 240, 180))
    source = IGTLSource(port=port, reconnect=False, connect_timeout=10)
    out = None
    if compound:
        out = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_stream_volume.nrrd")
    res = run_live(source, reconstruct=out, grid=grid if compound else None, spacing=0.5, max_frames=n)
    proc.join(10)
    lat = np.asarray(res.latencies_s) * 1e3 if compound else np.array([np.nan])
    return {"received": res.frames, "lost": n - res.frames, "fps": res.fps,
            "lat50": float(np.median(lat)), "lat95": float(np.percentile(lat, 95)),
            "malformed": res.stats["malformed"]}


def run_pyigtl(n: int) -> dict:
    import pyigtl

    q = mp.Queue()
    proc = mp.Process(target=_sender, args=(q, n, 0.0), daemon=True)
    proc.start()
    port = q.get(timeout=60)
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    seen = set()
    t0 = time.perf_counter()
    last_new = time.perf_counter()
    while time.perf_counter() - last_new < 2.0:
        for msg in client.get_latest_messages():
            if msg.message_type == "IMAGE" and msg.timestamp not in seen:
                seen.add(msg.timestamp)
                last_new = time.perf_counter()
        time.sleep(0.001)
    elapsed = last_new - t0
    client.stop()
    proc.join(5)
    return {"received": len(seen), "lost": n - len(seen), "fps": len(seen) / max(elapsed, 1e-9),
            "lat50": float("nan"), "lat95": float("nan"), "malformed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = [
        ("freehand3d, burst, receive only", run_ours(args.frames, 0.0, compound=False)),
        ("freehand3d, burst, live compounding", run_ours(args.frames, 0.0, compound=True)),
        ("freehand3d, 60 fps, live compounding", run_ours(min(args.frames, 600), 60.0, compound=True)),
        ("pyigtl client, burst (latest-message polling)", run_pyigtl(args.frames)),
    ]
    print(f"\n{args.frames} frames {W}x{H} uint8 + 2 TRANSFORMs each, loopback, {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}\n")
    print(f"| {'run':46s} | received | lost | fps    | latency p50 ms | p95 ms |")
    print(f"|{'-' * 48}|----------|------|--------|----------------|--------|")
    for name, r in rows:
        print(f"| {name:46s} | {r['received']:8d} | {r['lost']:4d} | {r['fps']:6.1f} | "
              f"{r['lat50']:14.1f} | {r['lat95']:6.1f} |")
    ours, ref = rows[0][1], rows[3][1]
    print(f"\nframes kept, freehand3d / pyigtl on the same burst: {ours['received']} / {ref['received']}"
          f" = {ours['received'] / max(ref['received'], 1):.1f}x")


if __name__ == "__main__":
    main()
