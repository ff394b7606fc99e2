"""Benchmark: freehand3d's compounding (compiled numba kernels, torch scatters) vs a straightforward
numpy implementation, all timed in the same run.

480 x 640 frames (0.2 mm pixels) swept 0.5 mm per frame with a slow tilt, into a 0.5 mm grid of
about 5 Mvoxels. For every method/mode the table gives frames/s of the numba kernels (the CPU
default; fast float32 path and PLUS-exact fixed point), of the torch path (fast and PLUS-exact) and
of a plain per-frame vectorised numpy implementation, and the ratios numba/numpy and numba/torch.
Then hole filling of the (holey) 5-Mvoxel nearest-neighbour volume.

    python benchmarks/bench_compound.py [--frames 100] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_sweep(n_frames: int, shape=(480, 640), pixel=0.2, step=0.5, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames,) + shape).astype(np.uint8)
    mats = []
    for f in range(n_frames):
        angle = np.radians(90 + 4 * np.sin(f / 15))
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # image plane mostly x-z, sweep along y
        m = np.eye(4)
        m[:3, :3] = rot * pixel
        m[:3, 3] = [0.0, f * step, 0.0]
        mats.append(m)
    return frames, np.array(mats)


# ---------------------------------------------------------------------- plain numpy reference
class NumpyCompounder:
    """The obvious numpy version: per frame, positions by matmul, rounding, flat index, ufunc.at."""

    def __init__(self, grid, method, compounding):
        self.grid, self.method, self.compounding = grid, method, compounding
        n = grid.n_voxels
        self.value = np.zeros(n, np.float64 if compounding == "mean" else np.int32)
        self.weight = np.zeros(n, np.float64)
        self.pixels = None

    def add(self, frame, image_to_reference):
        h, w = frame.shape
        if self.pixels is None:
            ys, xs = np.mgrid[0:h, 0:w]
            self.pixels = np.stack([xs.ravel(), ys.ravel(), np.zeros(h * w), np.ones(h * w)], 1)
        m = self.grid.reference_to_voxel @ image_to_reference
        pos = self.pixels @ m[:3].T
        values = frame.ravel()
        nx, ny, nz = self.grid.size
        size = np.array([nx, ny, nz])
        if self.method == "nearest":
            idx = np.floor(pos + 0.5).astype(np.int64)
            ok = np.all((idx >= 0) & (idx < size), axis=1)
            flat = (idx[ok, 2] * ny + idx[ok, 1]) * nx + idx[ok, 0]
            v = values[ok]
            if self.compounding == "latest":
                self.value[flat] = v  # numpy assigns repeated indices in order: the last wins
                self.weight[flat] = 1
            elif self.compounding == "max":
                np.maximum.at(self.value, flat, v)
                self.weight[flat] = 1
            else:
                np.add.at(self.value, flat, v)
                np.add.at(self.weight, flat, 1.0)
            return
        low = np.floor(pos).astype(np.int64)
        frac = pos - low
        ok = np.all((low >= 0) & (low + 1 < size), axis=1)
        low, frac, v = low[ok], frac[ok], values[ok]
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    wgt = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1]) * (frac[:, 2] if dz else 1 - frac[:, 2])
                    flat = ((low[:, 2] + dz) * ny + low[:, 1] + dy) * nx + low[:, 0] + dx
                    if self.compounding == "mean":
                        np.add.at(self.value, flat, wgt * v)
                        np.add.at(self.weight, flat, wgt)
                    else:
                        sel = wgt >= 0.125
                        if self.compounding == "latest":
                            self.value[flat[sel]] = v[sel]
                        else:
                            np.maximum.at(self.value, flat[sel], v[sel])
                        self.weight[flat[sel]] = 1


def time_ours(grid, frames, mats, method, compounding, exact, device, batch, backend=None):
    """(frames/s, the reconstructor, seconds of the warm-up call: kernel compilation or cache load)."""
    import torch

    from freehand3d.compound import Reconstructor

    rec = Reconstructor(grid, method, compounding, exact_plus=exact, device=device, backend=backend)
    start = time.perf_counter()
    rec.add_frames(frames[:batch], mats[:batch])  # warm-up (compilation, allocations, pixel list)
    warm_up = time.perf_counter() - start
    rec = Reconstructor(grid, method, compounding, exact_plus=exact, device=device, backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        rec.add_frames(frames[i : i + batch], mats[i : i + batch])
    if device == "cuda":
        torch.cuda.synchronize()
    return len(frames) / (time.perf_counter() - start), rec, warm_up


def cpu_time_table(grid, frames, mats, threads):
    """The numba kernels timed by the CPU time they use (time.process_time), for a machine shared with
    other jobs: frames x threads / CPU seconds is what the threads give when each has a free core."""
    import numba

    from freehand3d.compound import Reconstructor

    counts = sorted({1, threads})
    print(f"\nnumba kernels by CPU time (frames/s per {' / '.join(map(str, counts))} thread(s), all frames)")
    print(f"{'method':8} {'mode':7} {'fast':>16} {'PLUS-exact':>16}")
    for method in ("nearest", "linear"):
        for mode in ("latest", "max", "mean"):
            cells = []
            for exact in (False, True):
                rates = []
                for n in counts:
                    numba.set_num_threads(n)
                    Reconstructor(grid, method, mode, exact_plus=exact).add_frames(frames[:1], mats[:1])  # warm-up
                    rec = Reconstructor(grid, method, mode, exact_plus=exact)
                    start = time.process_time()
                    rec.add_frames(frames, mats)
                    rates.append(len(frames) * n / (time.process_time() - start))
                cells.append(" / ".join(f"{r:.0f}" for r in rates))
            print(f"{method:8} {mode:7} {cells[0]:>16} {cells[1]:>16}")
    numba.set_num_threads(threads)


def time_numpy(grid, frames, mats, method, compounding, n):
    ref = NumpyCompounder(grid, method, compounding)
    start = time.perf_counter()
    for i in range(n):
        ref.add(frames[i], mats[i])
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="100 frames give a ~5 Mvoxel grid")
    parser.add_argument("--numpy-frames", type=int, default=6, help="frames timed for the (slow) numpy reference")
    parser.add_argument("--torch-frames", type=int, default=24, help="frames timed for the torch path on CPU")
    parser.add_argument("--cpu-time", action="store_true", help="also time the numba kernels by CPU time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="frames per add_frames call")
    parser.add_argument("--holes-only", action="store_true", help="only the hole-filling table")
    args = parser.parse_args()

    import numba

    import torch

    from freehand3d.compound import grid_from_frames

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    frames, mats = make_sweep(args.frames)
    grid = grid_from_frames(mats, frames.shape[1:], 0.5)
    print(f"{len(frames)} frames 480x640 -> grid {grid.size} = {grid.n_voxels / 1e6:.2f} Mvoxel at 0.5 mm; "
          f"torch {torch.__version__}, numba {numba.__version__}, {args.threads} threads, device {args.device}")
    if args.holes_only:
        return hole_filling_table(grid, frames, mats, args)
    on_cpu = args.device == "cpu"
    print("frames/s; 'fast' = float32 positions and float sums, 'exact' = PLUS's fixed-point arithmetic")
    print(f"{'method':8} {'mode':7} {'numba fast':>11} {'numba exact':>12} {'torch fast':>11} {'torch exact':>12} "
          f"{'numpy':>7} {'numba/numpy':>12} {'numba/torch':>12} {'compile s':>10}")
    nearest_volume = None
    n_torch = min(len(frames), max(args.batch, args.torch_frames))
    for method in ("nearest", "linear"):
        for mode in ("latest", "max", "mean"):
            if on_cpu:
                fps, rec, warm_up = time_ours(grid, frames, mats, method, mode, False, args.device, args.batch, "numba")
                exact_fps, _, warm_exact = time_ours(grid, frames, mats, method, mode, True, args.device, args.batch, "numba")
                warm_up += warm_exact
            # the torch path is slower on CPU: time fewer frames (all of them on CUDA)
            n = n_torch if on_cpu else len(frames)
            torch_fps, torch_rec, _ = time_ours(grid, frames[:n], mats[:n], method, mode, False, args.device, args.batch, "torch")
            torch_exact_fps, _, _ = time_ours(grid, frames[:n], mats[:n], method, mode, True, args.device, args.batch, "torch")
            if not on_cpu:
                fps, rec, exact_fps, warm_up = torch_fps, torch_rec, torch_exact_fps, 0.0
            if method == "nearest" and mode == "latest":
                nearest_volume = rec
            np_fps = time_numpy(grid, frames, mats, method, mode, args.numpy_frames)
            print(f"{method:8} {mode:7} {fps:11.1f} {exact_fps:12.1f} {torch_fps:11.1f} {torch_exact_fps:12.1f} "
                  f"{np_fps:7.1f} {fps / np_fps:11.1f}x {fps / torch_fps:11.1f}x {warm_up:10.2f}")
    if args.cpu_time and on_cpu:
        cpu_time_table(grid, frames, mats, args.threads)

    hole_filling_table(grid, frames, mats, args, nearest_volume)


#: every hole-filling kernel (PLUS's five and the gap fill), as --fill-holes specs
HOLE_SPECS = ("nn:3", "gaussian:3:1", "gaussian_accumulation:3:1", "idw:3", "stick:5", "stick:9:3", "gap:1.0")


def hole_filling_table(grid, frames, mats, args, rec=None):
    """Hole filling of nearest-neighbour LATEST volumes (all frames; every third frame, which leaves
    gaps between the frames): the default path for the device (compiled kernels on CPU) beside the
    torch path, same input, same run."""
    import numba

    from freehand3d.compound import Reconstructor, fill_holes

    def nearest_latest(step):
        out = Reconstructor(grid, "nearest", "latest", device=args.device)
        for i in range(0, len(frames), args.batch * step):
            out.add_frames(frames[i : i + args.batch * step : step], mats[i : i + args.batch * step : step])
        return out

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"\nhole filling (fast: default path for device {args.device}, best of 3; torch path: 1 run; "
          "fast CPU s: its process CPU time, all threads, what a loaded machine cannot hide)")
    print(f"{'kernel':26} {'Mvoxel':>7} {'% holes':>8} {'fast s':>8} {'torch s':>8} {'ratio':>7} {'% same':>7} {'fast CPU s':>10}")
    for volume in (rec or nearest_latest(1), nearest_latest(3)):
        values = volume._state.result()[: grid.n_voxels].reshape(grid.shape).cpu().numpy()
        filled = volume.accumulation() > 0
        mvox, holes = grid.n_voxels / 1e6, 100 * (~filled).mean()
        for spec in HOLE_SPECS:
            # compile (or load the cached kernels) outside the timings
            fill_holes(values[:8, :8, :8], filled[:8, :8, :8], spec, spacing=grid.spacing, device=args.device)
            times, cpu = {}, float("inf")
            for backend, repeats in ((None, 3), ("torch", 1)):
                times[backend] = float("inf")
                for _ in range(repeats):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    result = fill_holes(values, filled, spec, spacing=grid.spacing, device=args.device, backend=backend)
                    times[backend] = min(times[backend], time.perf_counter() - start)
                    if backend is None:
                        cpu = min(cpu, time.process_time() - start_cpu)
                if backend is None:
                    fast = result
            same = 100 * (fast == result).mean()
            print(f"{spec:26} {mvox:7.2f} {holes:8.1f} {times[None]:8.3f} {times['torch']:8.3f} "
                  f"{times['torch'] / times[None]:6.1f}x {same:7.3f} {cpu:10.3f}")


if __name__ == "__main__":
    main()
