"""Streaming benchmark: receive rate and latency at 820x616, against other OpenIGTLink receivers.

One sender (freehand3d's PLUS-style replay server in its own process: IMAGE ``Image_Reference``
with the pose + 2 TRANSFORMs per frame, header v2, send-time timestamps) serves each receiver in
turn on loopback. The receive rate is measured at the sender: with TCP back-pressure it can only
send as fast as the receiver takes the bytes, so ``frames / (last send - first send)`` is the
receiver's rate (the socket buffers hold < 20 frames of 0.5 MB). Each receiver must also report
every frame (counted by the receiver itself).

Rows:

* ``freehand3d stream`` (the CLI, its own process), burst: receive + CRC + decode + pose matching;
* the same with ``--record`` (write-through to disk);
* OpenIGTLink's C++ example ``ReceiveClient`` (``--cpp-client PATH``; built from
  github.com/openigtlink/OpenIGTLink, ``Examples/Receiver``; it CRC-checks and prints a few lines
  per message to stderr, which we count);
* pyigtl's ``OpenIGTLinkClient`` polling ``get_latest_messages()`` (keeps only the latest message
  per device, so frames are overwritten);
* ``freehand3d stream`` paced at 120 fps: latency send -> recorded (p50/p95);
* ``freehand3d stream --reconstruct`` (nearest, 1 mm) paced at 60 fps: frames lost by the live
  volume, latency send -> inserted (p50/p95).

Run: python benchmarks/bench_stream.py [--frames 2000] [--cpp-client OPENIGTLINK_BUILD/bin/ReceiveClient]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H, W = 616, 820


def make_sweep(n: int, seed: int = 0):
    from freehand3d import geometry
    from freehand3d.sweep import Sweep

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (16, H, W), dtype=np.uint8)
    frames = base[np.arange(n) % len(base)]
    t = np.linspace(0, 1, n)
    params = np.c_[10 * np.sin(2 * np.pi * t), np.zeros(n), 40 * np.sin(np.pi * t), 5 * np.sin(4 * np.pi * t),
                   np.zeros((n, 2))]
    probe_to_tracker = geometry.params_to_matrix(params, "xyz", degrees=True)
    sweep = Sweep(frames, timestamps=np.arange(n) / 60.0, transforms={"ProbeToTracker": probe_to_tracker,
                  "ReferenceToTracker": np.tile(np.eye(4), (n, 1, 1))})
    sweep.image_to_probe = np.diag([0.1, 0.1, 0.1, 1.0])
    return sweep


def _sender(q, n, fps, distinct):
    from freehand3d.stream.igtl import ReplayServer

    server = ReplayServer(make_sweep(distinct), port=0, fps=fps, embed="Reference", timestamps="now",
                          n_frames=n)
    q.put(server.port)
    # time the sends: wrap frame_messages to note when each frame was handed to the socket
    times = []
    original = server.frame_messages

    def timed(index, now=None):
        data = original(index, now)
        times.append(time.perf_counter())
        return data

    server.frame_messages = timed
    sent = server.serve_once(accept_timeout=120)
    server.close()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    q.put((sent, rate))


def _start_sender(n, fps, distinct=64):
    q = mp.Queue()
    proc = mp.Process(target=_sender, args=(q, n, fps, distinct), daemon=True)
    proc.start()
    return proc, q, q.get(timeout=120)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_stream(n: int, fps: float, extra=()) -> dict:
    proc, q, port = _start_sender(n, fps)
    res = subprocess.run([sys.executable, "-m", "freehand3d", "stream", "--port", str(port), "--frames", str(n),
                          "--connect-timeout", "30", "--no-reconnect", *extra],
                         capture_output=True, text=True, env=_env(), timeout=900)
    sent, rate = q.get(timeout=60)
    proc.join(10)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    out = res.stdout
    received = int(re.search(r"received (\d+) frames", out).group(1))
    lat = re.search(r"latency to the consumers .*?p50 ([\d.]+) ms, p95 ([\d.]+) ms", out)
    vol = re.search(r"volume: (\d+) frames, dropped (\d+) \(queue full\) \+ (\d+)", out)
    vlat = re.search(r"volume: .*latency p50 ([\d.]+) ms, p95 ([\d.]+) ms", out)
    row = {"received": received, "sent": sent, "fps": rate, "lat50": float(lat.group(1)) if lat else np.nan,
           "lat95": float(lat.group(2)) if lat else np.nan}
    if vol:
        row["volume_lost"] = int(vol.group(2)) + int(vol.group(3))
        row["vlat50"], row["vlat95"] = float(vlat.group(1)), float(vlat.group(2))
    return row


def run_cpp(n: int, client: str) -> dict:
    proc, q, port = _start_sender(n, 0.0)
    cpp = subprocess.Popen([client, "127.0.0.1", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    images = [0]

    def count():
        for line in cpp.stderr:
            if line.startswith("Receiving IMAGE"):
                images[0] += 1

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    sent, rate = q.get(timeout=600)
    deadline = time.time() + 10
    while images[0] < sent and time.time() < deadline:
        time.sleep(0.05)
    cpp.kill()
    cpp.wait()
    proc.join(10)
    return {"received": images[0], "sent": sent, "fps": rate, "lat50": np.nan, "lat95": np.nan}


def run_pyigtl(n: int) -> dict:
    import pyigtl

    proc, q, port = _start_sender(n, 0.0)
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
    seen = set()
    last_new = time.perf_counter()
    while time.perf_counter() - last_new < 3.0:
        for msg in client.get_latest_messages():
            if msg.message_type == "IMAGE" and msg.timestamp not in seen:
                seen.add(msg.timestamp)
                last_new = time.perf_counter()
        time.sleep(0.001)
    client.stop()
    sent, rate = q.get(timeout=60)
    proc.join(5)
    return {"received": len(seen), "sent": sent, "fps": rate, "lat50": np.nan, "lat95": np.nan}


def interop_cpp_imager(server: str, imgdir: str, work: Path) -> str:
    """OpenIGTLink's C++ ``ImagerServer`` (Examples/Imager: 100 IMAGEs 256x256 uint8 from
    igtlTestImage1..5.raw, spacing 1 1 5, random orientation) -> ``freehand3d stream --record``:
    are the recorded pixels the raw files?"""
    import socket

    from freehand3d.io import read_sweep

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cpp = subprocess.Popen([server, str(port), "50", imgdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / "imager.igs.mha"
    try:
        res = subprocess.run([sys.executable, "-m", "freehand3d", "stream", "--port", str(port), "--frames", "100",
                              "--record", str(out), "--connect-timeout", "10", "--no-reconnect"],
                             capture_output=True, text=True, env=_env(), timeout=300)
    finally:
        cpp.kill()
        cpp.wait()
    if res.returncode != 0:
        return f"FAILED: {res.stderr.strip()[-300:]}"
    rec = read_sweep(out)
    raws = [np.fromfile(Path(imgdir) / f"igtlTestImage{i + 1}.raw", np.uint8).reshape(256, 256) for i in range(5)]
    exact = sum(np.array_equal(rec.frames[k], raws[k % 5]) for k in range(len(rec)))
    m = rec.transforms.get("ImageToWorld")
    col = np.linalg.norm(m[:, :3, :3], axis=1) if m is not None else None
    out.unlink()
    stats = res.stdout.splitlines()[0]
    return (f"{len(rec)} frames recorded, {exact} pixel-exact against the raw files; ImageToWorld column norms "
            f"{np.round(col.mean(axis=0), 4).tolist() if col is not None else 'n/a'} (sender: spacing 1 1 5); {stats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--paced-frames", type=int, default=1200)
    parser.add_argument("--cpp-client", default=None, help="path of OpenIGTLink's Examples/Receiver ReceiveClient")
    parser.add_argument("--cpp-imager", default=None, help="path of OpenIGTLink's Examples/Imager ImagerServer")
    parser.add_argument("--cpp-imager-images", default=None, help="its img folder (igtlTestImage1..5.raw)")
    parser.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--interop-only", action="store_true", help="only the C++ ImagerServer check")
    args = parser.parse_args()
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                         text=True).stdout.strip()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.tmp))
    if args.cpp_imager:
        print("C++ ImagerServer -> freehand3d stream --record:",
              interop_cpp_imager(args.cpp_imager, args.cpp_imager_images, work))
        if args.interop_only:
            work.rmdir()
            return
    rows = [("freehand3d stream, burst, receive only", run_stream(args.frames, 0.0))]
    if args.cpp_client:
        rows.append(("OpenIGTLink C++ ReceiveClient, burst", run_cpp(args.frames, args.cpp_client)))
    rows.append(("freehand3d stream --record, burst", run_stream(args.frames, 0.0, ["--record",
                                                                                    str(work / "r.igs.mha")])))
    (work / "r.igs.mha").unlink(missing_ok=True)
    if args.cpp_client:  # a second C++ run, after ours, to see the drift of the shared machine
        rows.append(("OpenIGTLink C++ ReceiveClient, burst (again)", run_cpp(args.frames, args.cpp_client)))
    rows.append(("pyigtl client, burst (latest-message polling)", run_pyigtl(args.frames)))
    rows.append(("freehand3d stream, 120 fps, receive only", run_stream(args.paced_frames, 120.0)))
    rows.append(("freehand3d stream --reconstruct (nearest 1 mm), 60 fps",
                 run_stream(args.paced_frames, 60.0, ["--reconstruct", str(work / "v.nrrd"), "--spacing", "1"])))
    (work / "v.nrrd").unlink(missing_ok=True)
    work.rmdir()
    print(f"\n{W}x{H} uint8 IMAGE (pose embedded) + 2 TRANSFORMs per frame, header v2, loopback; {cpu}, "
          f"{os.cpu_count()} cores; load {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"python {sys.version.split()[0]}\n")
    print("| receiver | sent | received | rate fps (at the sender) | latency p50 ms | p95 ms | live volume lost "
          "| volume latency p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['sent']} | {r['received']} | {r['fps']:.1f} | {r['lat50']:.1f} | {r['lat95']:.1f} | "
              f"{r.get('volume_lost', '')} | {r.get('vlat50', '')} | {r.get('vlat95', '')} |")


if __name__ == "__main__":
    main()
