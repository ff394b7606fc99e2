"""A/B timing of G-ULM (one frame at a time, ``localize_frame``) between an earlier commit and the
working tree, in ONE process on the same frames, alternating which goes first, so that a shared
machine's load hits both alike. Prints wall and process-CPU seconds per frame (median, min), the
per-frame new/old ratios, whether the detections are bit for bit the same, and optionally a
CPU-time profile (cProfile with ``time.process_time``) of each per stage.

The old code is ``git archive <commit> freehand3d`` unpacked into a temporary folder and renamed
to ``freehand3d_old`` (its imports rewritten), so both import side by side.

    python benchmarks/bench_ulm_ab.py --old 1671a53                 # analytic bench frames (bench_ulm.py --frames 10)
    python benchmarks/bench_ulm_ab.py --old 1671a53 --reps 3 --profile
    python benchmarks/bench_ulm_ab.py --old 1671a53 --rf some-rf.npz --channels 16
    # a PyMUST cell of bench_ulm_pymust.py's cache, with its noise (seeded) at an in-band SNR
    python benchmarks/bench_ulm_ab.py --old 1671a53 --pymust .benchmarks-cache/ulm-pymust/L11-5v-a5-b18-f10-s0.npz --snr 20
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = r"(localize_frame|find_echoes|fit_memgo_batch|analytic_signal|bandpass|bandpass_analytic|detect_onsets|_add_coherent|subtract_echoes|coherent_bubbles|coherent_image|upsampled_analytic|detection_level|gated_fits|point_sum|match_echoes|mean_shift)\)"


def old_package(commit: str, into: Path) -> None:
    """``freehand3d`` at ``commit`` as package ``freehand3d_old`` under ``into``."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "freehand3d"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "freehand3d").rename(into / "freehand3d_old")
    for path in (into / "freehand3d_old").rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bfreehand3d\.", "freehand3d_old.", text)
        text = re.sub(r"^(\s*)from freehand3d import", r"\1from freehand3d_old import", text, flags=re.M)
        text = re.sub(r"^(\s*)import freehand3d$", r"\1import freehand3d_old", text, flags=re.M)
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="git commit of the old code")
    parser.add_argument("--rf", type=Path, default=Path.home() / ".cache" / "freehand3d" / "ulm" / "analytic-f10-s0-b12-c-20-rf.npz",
                        help="RF .npz (default: the frames of bench_ulm.py --frames 10; run that once to make them)")
    parser.add_argument("--pymust", type=Path, default=None, help="a cached cell of bench_ulm_pymust.py (PROBE-aANGLE-...npz) instead of --rf")
    parser.add_argument("--snr", type=float, default=None, help="with --pymust: in-band SNR in dB of the added noise (default: noiseless)")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="passes over the frames")
    parser.add_argument("--profile", action="store_true", help="also a CPU-time profile per stage of one pass each")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    old_package(args.old, Path(tmp.name))
    sys.path.insert(0, tmp.name)
    import freehand3d_old.ulm.pipeline as old_pipeline
    import freehand3d_old.ulm.probe as old_probe_module

    import freehand3d.ulm.pipeline as new_pipeline
    from freehand3d.ulm.files import load_rf

    if args.pymust is not None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_ulm_pymust import PROBES

        from freehand3d.simulate.rf import add_noise_snr

        name, angle = re.match(r"(.+)-a([-\d.]+)-b", args.pymust.name).groups()
        probe = PROBES[name][0]
        with np.load(args.pymust) as d:
            rf, acq = d["rf"], {"pulse_t": d["pulse_t"], "pulse": d["pulse"], "tx_angle": np.radians(float(angle))}
        if args.snr is not None:
            rf = add_noise_snr(rf, probe, args.snr, seed=0)
    else:
        rf, probe, acq = load_rf(args.rf)
    old_probe = old_probe_module.LinearProbe(**probe.to_dict())
    pulse = (acq["pulse_t"], acq["pulse"]) if "pulse_t" in acq else None
    kw = dict(channels=args.channels, pulse=pulse, tx_angle=float(acq.get("tx_angle", 0.0)), t0=float(acq.get("t0", 0.0)))
    sides = {"old": (old_pipeline, old_probe), "new": (new_pipeline, probe)}
    for module, pr in sides.values():
        module.localize_frame(rf[0], pr, **kw)  # warm-up: compiled kernels, reference fit, caches
    times = {"old": [], "new": []}
    identical, worst = True, 0.0
    for rep in range(args.reps):
        for i, frame in enumerate(rf):
            out = {}
            for name in ("old", "new") if (rep + i) % 2 == 0 else ("new", "old"):
                module, pr = sides[name]
                wall, cpu = time.perf_counter(), time.process_time()
                out[name] = module.localize_frame(frame, pr, **kw)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            if out["old"].shape != out["new"].shape:
                identical = False
                print(f"frame {i}: {len(out['old'])} old vs {len(out['new'])} new detections")
            elif not np.array_equal(out["old"], out["new"]):
                identical = False
                worst = max(worst, float(np.abs(out["old"] - out["new"]).max()))
    print(f"{len(rf)} frames x {args.reps} passes, {args.channels} channels, old = {args.old}, new = working tree")
    for name in ("old", "new"):
        t = np.asarray(times[name])
        print(f"{name}: wall s/frame median {np.median(t[:, 0]):.3f} min {t[:, 0].min():.3f} | CPU s/frame median {np.median(t[:, 1]):.3f} min {t[:, 1].min():.3f}")
    t_old, t_new = np.asarray(times["old"]), np.asarray(times["new"])
    print(f"new/old per frame: wall median {np.median(t_new[:, 0] / t_old[:, 0]):.3f}, CPU median {np.median(t_new[:, 1] / t_old[:, 1]):.3f}")
    print("detections bit for bit identical:", identical, "" if identical else f"(largest difference {worst:g} mm)")
    if args.profile:
        for name, (module, pr) in sides.items():
            prof = cProfile.Profile(time.process_time)
            prof.enable()
            for frame in rf:
                module.localize_frame(frame, pr, **kw)
            prof.disable()
            print(f"\n==== {name}: CPU seconds over {len(rf)} frames (cumulative per function)")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(STAGES)


if __name__ == "__main__":
    main()
