"""Long-session benchmarks of `freehand3d stream`: soak (bounded memory), kill -9, hostile servers.

All on loopback; every `stream` runs as its own process (`python -m freehand3d stream ...`) and its
resident memory is sampled with psutil every 0.5 s.

* ``soak``: a sender replays N generated 820x616 tracked frames (PLUS-style IMAGE ``Image_Reference``
  with the pose, send-time timestamps) at ``--fps`` into ``stream --record --reconstruct``; reports
  RSS over time (peak, slope after warm-up), frames in the recording vs frames sent, live-volume
  drops. Needs ~2x N x 0.5 MB of free disk for a moment (side files + the finished sequence) and
  deletes everything afterwards.
* ``kill``: ``--kills`` times, start ``stream --record`` against a 30 fps 820x616 sender, kill -9 it
  at a random moment, ``freehand3d recover``, and check that the recording holds every frame sent
  up to 1 s before the kill, without gaps (frames carry their index in the first 4 pixels).
* ``hostile``: hostile servers (random bytes, body size too small / too big / 2^40 / 500 MB, stalled
  body, silent, transform-only with ``--duration 5``): time to the error, the error line, peak RSS
  above the RSS of an idle ``stream``.

Run: python benchmarks/bench_stream_soak.py soak --frames 18000 --fps 60
     python benchmarks/bench_stream_soak.py kill --kills 5
     python benchmarks/bench_stream_soak.py hostile
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H, W = 616, 820


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _machine() -> str:
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                         text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores; load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1/5 min)"


def make_sweep(n: int, indexed: bool):
    from freehand3d import geometry
    from freehand3d.sweep import Sweep

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, H, W), dtype=np.uint8)
    if indexed:
        frames[:, 0, :4] = np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)
    t = np.linspace(0, 1, n)
    params = np.c_[10 * np.sin(2 * np.pi * t), np.zeros(n), 40 * np.sin(np.pi * t), 5 * np.sin(4 * np.pi * t),
                   np.zeros((n, 2))]
    probe = geometry.params_to_matrix(params, "xyz", degrees=True)
    sweep = Sweep(frames, timestamps=np.arange(n) / 30.0,
                  transforms={"ProbeToTracker": probe, "ReferenceToTracker": np.tile(np.eye(4), (n, 1, 1))})
    sweep.image_to_probe = np.diag([0.1, 0.1, 0.1, 1.0])
    return sweep


def _sender(port_queue, distinct, n_frames, fps, indexed, loop, clients):
    from freehand3d.stream.igtl import ReplayServer

    server = ReplayServer(make_sweep(distinct, indexed), port=0, fps=fps, embed="Reference", timestamps="now",
                          n_frames=n_frames, loop=loop)
    port_queue.put(server.port)
    for _ in range(clients):
        sent = server.serve_once(accept_timeout=120)
        port_queue.put(sent)
    server.close()


def _start_sender(distinct, n_frames, fps, indexed=False, loop=False, clients=1):
    q = mp.Queue()
    proc = mp.Process(target=_sender, args=(q, distinct, n_frames, fps, indexed, loop, clients), daemon=True)
    proc.start()
    return proc, q, q.get(timeout=120)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, extra=None, period: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.extra, self.period = extra, period
        self.samples: list[tuple[float, float, int]] = []  # (t, rss MB, extra)
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def _anon_mb(self) -> float:
        """RssAnon: resident memory that is not file-backed (a memory map of the pixel file, which
        the kernel can drop at any time, counts in RSS but not here)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def run(self):
        while not self.stop.is_set():
            try:
                rss = self.proc.memory_info().rss / 2**20
            except Exception:  # noqa: BLE001 - process gone
                return
            self.samples.append((time.monotonic() - self.t0, rss, self.extra() if self.extra else 0,
                                 self._anon_mb()))
            self.stop.wait(self.period)

    @property
    def peak(self) -> float:
        return max((s[1] for s in self.samples), default=float("nan"))

    @property
    def peak_anon(self) -> float:
        return max((s[3] for s in self.samples), default=float("nan"))


def _pixel_frames(pixels: Path) -> int:
    try:
        return pixels.stat().st_size // (H * W)
    except OSError:
        return 0


def soak(args) -> None:
    from freehand3d.io.plus_sequence import read_plus_header

    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.tmp))
    rec, vol = work / "soak.igs.mha", work / "live.nrrd"
    sender, q, port = _start_sender(64, args.frames, args.fps)
    cmd = [sys.executable, "-m", "freehand3d", "stream", "--port", str(port), "--record", str(rec),
           "--reconstruct", str(vol), "--spacing", str(args.spacing), "--frames", str(args.frames),
           "--connect-timeout", "30", "--no-reconnect"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    pixels = rec.with_name(rec.name + ".pixels")
    sampler = RssSampler(proc.pid, extra=lambda: _pixel_frames(pixels), period=1.0)
    sampler.start()
    finished_stream_at = None
    while proc.poll() is None:
        time.sleep(1.0)
        if finished_stream_at is None and _pixel_frames(pixels) >= args.frames:
            finished_stream_at = time.monotonic()
    out, err = proc.communicate()
    sampler.stop.set()
    elapsed = time.monotonic() - t0
    sent = q.get(timeout=30)
    sender.join(10)
    if proc.returncode != 0:
        print(err[-3000:])
        raise SystemExit(f"stream failed ({proc.returncode})")
    header = read_plus_header(rec)
    recorded = int((header.get("DimSize") or "0 0 0").split()[2])
    size_gb = rec.stat().st_size / 1e9
    # the session: samples until the last frame is on disk; then the finish (header + copy of the
    # pixels into the sequence, read through a memory map)
    all_samples = np.array(sampler.samples)
    session = all_samples[(all_samples[:, 2] > 0) & (all_samples[:, 2] < args.frames)]
    finish = all_samples[all_samples[:, 2] >= args.frames]
    warm = session[session[:, 2] >= 0.1 * args.frames]

    def fit(x, y):
        return np.polyfit(x, y, 1)[0] if len(x) > 3 else float("nan")

    print(f"\nsoak: {args.frames} frames {W}x{H} uint8 at {args.fps:g} fps -> stream --record --reconstruct "
          f"(nearest, {args.spacing} mm); {_machine()}\n")
    print(out)
    print("| frames sent | in the recording | lost | recording | wall s | session peak RSS MB (anon) | "
          "RSS after warm-up MB | RSS at the last frame MB | slope MB/1000 frames (anon) | slope MB/min | "
          "finish s, peak RSS MB (anon) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    finish_s = finish[-1, 0] - finish[0, 0] if len(finish) else float("nan")
    print(f"| {sent} | {recorded} | {sent - recorded} | {size_gb:.2f} GB | {elapsed:.0f} | "
          f"{session[:, 1].max():.0f} ({session[:, 3].max():.0f}) | {warm[0, 1]:.0f} | {warm[-1, 1]:.0f} | "
          f"{fit(warm[:, 2] / 1000, warm[:, 1]):+.2f} ({fit(warm[:, 2] / 1000, warm[:, 3]):+.2f}) | "
          f"{fit(warm[:, 0] / 60, warm[:, 1]):+.2f} | {finish_s:.0f}, "
          f"{finish[:, 1].max() if len(finish) else float('nan'):.0f} "
          f"({finish[:, 3].max() if len(finish) else float('nan'):.0f}) |")
    print("\nRSS (anon) MB by frames recorded:")
    for k in np.linspace(0, len(all_samples) - 1, min(14, len(all_samples))).astype(int):
        t, rss, frames, anon = all_samples[k]
        print(f"  {int(frames):6d} frames  {rss:7.0f} MB ({anon:5.0f})  t={t:.0f} s")
    shutil.rmtree(work)


def kill(args) -> None:
    from freehand3d.io import read_sweep
    from freehand3d.stream.recorder import recover_recording

    work = Path(tempfile.mkdtemp(prefix="kill-", dir=args.tmp))
    rng = random.Random(args.seed)
    sender, q, port = _start_sender(args.max_seconds * 30 + 60, None, 30.0, indexed=True, clients=args.kills)
    print(f"\nkill -9: {args.kills} runs, 820x616 at 30 fps, kill at a random moment in "
          f"[1, {args.max_seconds}] s after the first frame is on disk; {_machine()}\n")
    print("| run | killed after s | frames in the recording | last frame sent <= 1 s before the kill is in | "
          "gap between the last recorded frame and the kill (ms) | no gaps | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for run in range(args.kills):
        rec = work / f"run{run}.igs.mha"
        proc = subprocess.Popen([sys.executable, "-m", "freehand3d", "stream", "--port", str(port), "--record",
                                 str(rec), "--connect-timeout", "30", "--no-reconnect", "--duration", "600"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        sampler = RssSampler(proc.pid)
        sampler.start()
        pixels = rec.with_name(rec.name + ".pixels")
        while _pixel_frames(pixels) < 1:
            time.sleep(0.02)
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode()[-2000:])
        wait = rng.uniform(1.0, args.max_seconds)
        time.sleep(wait)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sampler.stop.set()
        q.get(timeout=30)  # the sender noticed and is ready for the next client
        recover_recording(rec)
        sweep = read_sweep(rec)
        idx = np.ascontiguousarray(sweep.frames[:, 0, :4]).view("<u4").reshape(-1)
        contiguous = bool(np.array_equal(idx, np.arange(len(sweep))))
        gap_ms = (killed_at - sweep.timestamps[-1]) * 1e3
        worst = max(worst, gap_ms)
        ok = gap_ms <= 1000.0
        print(f"| {run + 1} | {wait:.2f} | {len(sweep)} | {'yes' if ok else 'NO'} | {gap_ms:.0f} | "
              f"{'yes' if contiguous else 'NO'} | {sampler.peak:.0f} |")
        del sweep
        rec.unlink()
    print(f"\nworst gap between the kill and the last recorded frame's send time: {worst:.0f} ms (limit 1000 ms)")
    sender.join(10)
    shutil.rmtree(work)


# ------------------------------------------------------------------ hostile servers

def _pack_header(mtype, device, body_size, crc=0):
    return struct.pack("> H 12s 20s I I Q Q", 1, mtype.encode(), device.encode(), 1, 0, body_size, crc)


def _hostile_scripts():
    from freehand3d.stream.igtl import image_message, pack_header, transform_message

    def random_bytes(conn):
        rng = np.random.default_rng(0)
        for _ in range(64):
            conn.sendall(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())

    def declared(size, send=1000):
        def script(conn):
            conn.sendall(_pack_header("IMAGE", "Image", size) + b"\0" * send)
        return script

    def too_small(conn):
        good = image_message(np.zeros((H, W), np.uint8), "Image", 1.0).pack()
        body = good[58:]
        for _ in range(20):
            cut = body[: len(body) // 2]  # declared and CRC'd as half an image
            conn.sendall(pack_header("IMAGE", "Image", 1.0, cut) + cut)

    def too_big(conn):
        good = image_message(np.zeros((H, W), np.uint8), "Image", 1.0).pack()
        body = good[58:] + b"\0" * 4096  # declares more than the image needs
        for _ in range(20):
            conn.sendall(pack_header("IMAGE", "Image", 1.0, body) + body)

    def transforms(conn):
        for i in range(1000):
            conn.sendall(transform_message(np.eye(4), "ProbeToTracker", 10.0 + i / 50).pack())
            time.sleep(0.02)

    return [
        ("silent server", lambda conn: None, ["--frames", "5", "--image-timeout", "3"]),
        ("random bytes (64 MB)", random_bytes, ["--frames", "5", "--image-timeout", "5"]),
        ("body size too small (half an IMAGE)", too_small, ["--frames", "5", "--image-timeout", "3"]),
        ("body size too big (IMAGE + 4 kB)", too_big, ["--frames", "5", "--image-timeout", "3"]),
        ("body size 2^40", declared(1 << 40), ["--frames", "5", "--image-timeout", "3"]),
        ("body size 500 MB, 1 kB sent, then stalled", declared(500 << 20), ["--frames", "5", "--stall-timeout", "3",
                                                                             "--no-reconnect"]),
        ("body size 500 MB, 400 MB sent, then stalled", declared(500 << 20, 400 << 20),
         ["--frames", "5", "--stall-timeout", "3", "--no-reconnect"]),
        ("body size 250 MB, 240 MB sent, then stalled", declared(250 << 20, 240 << 20),
         ["--frames", "5", "--stall-timeout", "3", "--no-reconnect"]),
        ("transform-only server, --duration 5", transforms, ["--duration", "5"]),
    ]


def _serve(script, hold=30.0):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests._loopback import serve

    return serve(script, hold=hold, accept_timeout=60.0)


def hostile(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="hostile-", dir=args.tmp))
    rows = []
    idle = None
    for name, script, extra in _hostile_scripts():
        port, stop = _serve(script)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "freehand3d", "stream", "--port", str(port), "--record",
                                 str(work / "r.igs.mha"), "--connect-timeout", "5", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        sampler = RssSampler(proc.pid, period=0.05)
        sampler.start()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = "TIMED OUT " + err
        took = time.monotonic() - t0
        sampler.stop.set()
        stop.set()
        if name == "silent server":
            idle = sampler.peak
        line = next((ln for ln in err.splitlines() if "error:" in ln), err.strip()[-200:])
        rows.append((name, proc.returncode, took, sampler.peak, line.replace(str(work), "...")))
    print(f"\nhostile servers -> `stream --record` (peak RSS sampled every 50 ms; idle = the silent-server "
          f"run); {_machine()}\n")
    print("| server | exit | seconds | peak RSS MB | above idle MB | message |")
    print("|---|---|---|---|---|---|")
    for name, code, took, peak, line in rows:
        msg = line.split("error: ", 1)[-1].replace("|", "/")
        print(f"| {name} | {code} | {took:.1f} | {peak:.0f} | {peak - idle:+.0f} | {msg} |")
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("soak")
    p.add_argument("--frames", type=int, default=18000)
    p.add_argument("--fps", type=float, default=60.0)
    p.add_argument("--spacing", type=float, default=1.0)
    p = sub.add_parser("kill")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--max-seconds", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("hostile")
    for p in sub.choices.values():
        p.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    {"soak": soak, "kill": kill, "hostile": hostile}[args.mode](args)


if __name__ == "__main__":
    main()
