"""False alarms of the noise-floor (CFAR) rule on noise-only PyMUST frames: DAS+WA and G-ULM.

Noise-only frames are the benchmark's (``bench_ulm_pymust.py``): the G-ULM authors' noise shape
(white Gaussian noise smoothed by 1.5 samples x channels) at the level an in-band SNR of 30 dB
would give on the cached noiseless PyMUST frames, here with many noise seeds. Frames go through
each method in calls of ``--frames-per-call`` (the noise model of DAS+WA is measured on each
call's first frame, as ``localize_das_wa`` does). Default depth range (as the benchmark's noise-only
rows).

For DAS+WA it also reports where the false alarms are (depth, lateral position, share of the
aperture) and the tail of the envelope normalised by the rule's noise sigma (estimated sigma of
the row x the modelled per-pixel noise amplitude) against Rayleigh, overall and per region: if the
model is right, P(t > q) = exp(-q^2 / 2).

    python benchmarks/bench_ulm_noise.py --calls 20    # frames cached in .benchmarks-cache/ulm-pymust
    python benchmarks/bench_ulm_noise.py --methods "DAS+WA 128" --false-alarms 0.001
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ulm_pymust import PROBES, dataset  # noqa: E402

from freehand3d.simulate.rf import add_noise_snr  # noqa: E402
from freehand3d.ulm import baseline as bl  # noqa: E402
from freehand3d.ulm.pipeline import default_depth_range, localize, select_channels  # noqa: E402

RAYLEIGH_P = (0.9, 0.99, 0.999, 0.9999, 0.99999)


def das_call(rf, probe, angle, channels, check_rate=None):
    """localize_das_wa's steps on one call's frames, keeping what the rule saw.

    Returns (maxima, t, n_live, frame_max, (x, z, scale, counts)): ``maxima`` every 5x5 regional
    maximum whose envelope is at least 4 noise sigmas (t = envelope / (row sigma x modelled noise
    amplitude), the rule's own sigma) with its position and whether it passes the -20 dB relative
    floor; a maximum is a detection at a design rate f exactly when t >= k(f) = sqrt(2 ln(n_live /
    f)) and it passes the relative floor (the CFAR level is k sigma scale), so one pass gives the
    detections at every rate. ``t`` (2, frames x live pixels): t and the envelope against one sigma
    per frame. ``check_rate``: also run ``weighted_average_localize`` at that rate and check that it
    finds the same detections.
    """
    from scipy.ndimage import maximum_filter

    z_range = default_depth_range(probe, rf.shape[1], 0.0, angle)
    x, z = bl.default_grid(probe, z_range)
    use = select_channels(probe.n_elements, channels)
    rho, gain = bl.noise_correlation(bl.demodulate(rf[0], probe, use))
    scale = np.sqrt(bl.das_noise_power(probe, x, z, rho, gain, rf.shape[1], tx_angle=angle, channels=use))
    maxima, ts, frame_max = [], [], []
    radius = 2
    for f, frame in enumerate(rf):
        image, counts = bl.beamform_das(frame, probe, x, z, tx_angle=angle, channels=use, return_counts=True)
        env = np.abs(image)
        cfar = np.broadcast_to(bl.detection_level(env, threshold_db=None, false_alarms=1.0, noise_scale=scale), env.shape)
        live = np.isfinite(cfar)
        n_live = int(live.sum())
        k1 = np.sqrt(2 * np.log(max(n_live, 2) / 1.0))
        sigma = np.where(live, cfar / k1, np.inf)  # the rule's noise sigma x modelled amplitude, per pixel
        t = env / sigma
        relative = env >= env.max() * 10 ** (-20 / 20)
        is_max = (env == maximum_filter(env, size=2 * radius + 1, mode="constant")) & (env > 0) & live & (t >= 4.0)
        is_max[:radius], is_max[-radius:], is_max[:, :radius], is_max[:, -radius:] = False, False, False, False
        for i, j in zip(*np.nonzero(is_max)):
            maxima.append(dict(frame=f, x=float(x[j]), z=float(z[i]), t=float(t[i, j]), relative=bool(relative[i, j]), channels=int(counts[i, j]), row=int(i), rows=len(z), col=int(j), cols=len(x)))
        if check_rate is not None:
            pos = bl.weighted_average_localize(env, x, z, threshold_db=-20.0, false_alarms=check_rate, noise_scale=scale)
            k = np.sqrt(2 * np.log(max(n_live, 2) / check_rate))
            mine = sum(1 for m in maxima if m["frame"] == f and m["t"] >= k and m["relative"])
            assert mine == len(pos), (mine, len(pos))
        ratio = env[live] / scale[live]
        # the same envelope against one sigma for the whole frame (median of envelope / scale over
        # all live pixels, ~0.3 % precision): tests the per-pixel noise model without the row
        # estimator's own spread
        ts.append(np.stack([t[live], ratio / (np.median(ratio) / np.sqrt(np.log(4.0)))]).astype(np.float32))
        frame_max.append(float(t[live].max()))
    return maxima, np.concatenate(ts, axis=1), n_live, frame_max, (x, z, scale, counts)


def region_masks(x, z, counts, probe):
    """Boolean masks (nz, nx) of the regions false alarms could favour."""
    nz, nx = len(z), len(x)
    rows = np.arange(nz)[:, None] * np.ones((1, nx), int)
    cols = np.ones((nz, 1), int) * np.arange(nx)[None, :]
    edge = (cols < nx // 10) | (cols >= nx - nx // 10)
    return {
        "all": np.ones((nz, nx), bool),
        "top 30 rows": rows < 30,
        "bottom 30 rows": rows >= nz - 30,
        "outer 10 % columns": edge,
        "interior": (rows >= 30) & (rows < nz - 30) & ~edge,
    }


def tail_table(t, k):
    out = {}
    for p in RAYLEIGH_P:
        out[p] = (float(np.quantile(t, p)), float(np.sqrt(-2 * np.log(1 - p))))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".benchmarks-cache/ulm-pymust"))
    parser.add_argument("--probes", default="L11-5v,L22-14v")
    parser.add_argument("--angles", default="0,5")
    parser.add_argument("--calls", type=int, default=20, help="noise seeds per probe/angle; each gives --frames-per-call frames")
    parser.add_argument("--frames-per-call", type=int, default=10)
    parser.add_argument("--methods", default="DAS+WA 128,DAS+WA 16,G-ULM 128,G-ULM 16")
    parser.add_argument("--rates", default="0.01,0.001,0.0001,0.00001", help="DAS+WA: design false-alarm rates (per image) whose detections are counted from the same maxima")
    parser.add_argument("--false-alarms", type=float, default=None, help="G-ULM seed_false_alarms (default: the library's)")
    parser.add_argument("--check", action="store_true", help="DAS+WA: also run weighted_average_localize at the library default on every frame and compare")
    parser.add_argument("--seed0", type=int, default=1000, help="first noise seed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    rates = [float(r) for r in args.rates.split(",")]
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"noise-only false alarms; {cpu}; load at start {os.getloadavg()}; library default rate {bl.DEFAULT_FALSE_ALARMS if hasattr(bl, 'DEFAULT_FALSE_ALARMS') else 0.01}; G-ULM seed rate {args.false_alarms or 'default'}", flush=True)
    methods = [m.strip() for m in args.methods.split(",")]
    report = []
    for probe_name in args.probes.split(","):
        probe = PROBES[probe_name][0]
        for angle_deg in (float(a) for a in args.angles.split(",")):
            angle = np.radians(angle_deg)
            clean, _, pulse = dataset(args.cache, probe_name, angle_deg, 9.0, 10, 0)
            clean = clean[: args.frames_per_call]
            for method in methods:
                name, channels = method.rsplit(" ", 1)
                channels = int(channels)
                dets, frame_max, masks_t, n_live = [], [], {}, None
                start = time.perf_counter()
                n_frames = 0
                for c in range(args.calls):
                    rf = add_noise_snr(clean, probe, 30.0, seed=args.seed0 + c, noise_only=True)
                    if name == "DAS+WA":
                        check = getattr(bl, "DEFAULT_FALSE_ALARMS", 0.01) if args.check else None
                        found, t, n_live, mx, (x, z, scale, counts) = das_call(rf, probe, angle, channels, check)
                        for e in found:
                            e.update(call=c, frame=n_frames + e["frame"])
                        dets += found
                        frame_max += mx
                        live = np.isfinite(scale) & (scale > 0)
                        for name_r, m in region_masks(x, z, counts, probe).items():
                            sel = m[live]
                            masks_t.setdefault(name_r, []).append(t.reshape(2, len(rf), -1)[:, :, sel].reshape(2, -1))
                    else:
                        kw = {} if args.false_alarms is None else dict(seed_false_alarms=args.false_alarms)
                        pts = localize(rf, probe, tx_angle=angle, channels=channels, pulse=pulse, **kw)
                        for p in pts:
                            dets.append(dict(call=c, frame=n_frames + int(p[0]), x=float(p[1]), z=float(p[2])))
                    n_frames += len(rf)
                seconds = time.perf_counter() - start
                row = dict(probe=probe_name, angle_deg=angle_deg, method=method, frames=n_frames, seconds=seconds)
                if name != "DAS+WA":
                    row.update(detections=len(dets), dets=dets)
                    print(f"{probe_name:8} {angle_deg:>3g} deg {method:11}: {len(dets):3d} detections in {n_frames} noise-only frames ({seconds / n_frames:.2f} s/frame)", flush=True)
                    for e in dets:
                        print(f"    call {e['call']} frame {e['frame']}: x {e['x']:.2f} z {e['z']:.2f} mm")
                    report.append(row)
                    continue
                counts_at = {}
                for f in rates:
                    k = np.sqrt(2 * np.log(n_live / f))
                    hits = [e for e in dets if e["t"] >= k and e["relative"]]
                    counts_at[f] = (float(k), hits)
                row.update(n_live=n_live, maxima=dets, detections={str(f): len(h) for f, (k, h) in counts_at.items()}, frame_max=frame_max)
                summary = ", ".join(f"rate {f:g} (k {k:.2f}): {len(h)}" for f, (k, h) in counts_at.items())
                print(f"{probe_name:8} {angle_deg:>3g} deg {method:11}: {n_frames} noise-only frames, {n_live} live pixels/image ({seconds / n_frames:.2f} s/frame); detections at {summary}", flush=True)
                for e in counts_at[rates[0]][1]:
                    print(f"    call {e['call']} frame {e['frame']}: x {e['x']:.2f} z {e['z']:.2f} mm, t {e['t']:.2f}, {e['channels']} channels, row {e['row']}/{e['rows']}, col {e['col']}/{e['cols']}")
                # regional maxima above q per image vs n_live exp(-q^2/2) (exceedances of independent pixels)
                tq = np.array([e["t"] for e in dets])
                curve = " ".join(f"{q:g}: {np.sum(tq >= q) / n_frames:.4f}/{n_live * np.exp(-q * q / 2):.4f}" for q in (4.5, 5.0, 5.5, 6.0))
                print(f"    maxima per image with t >= q, measured/n_live exp(-q^2/2): {curve}")
                mx = np.asarray(frame_max)
                print(f"    per-frame max of t: median {np.median(mx):.2f}, 90 % {np.quantile(mx, 0.9):.2f}, max {mx.max():.2f}")
                row["tails"] = {}
                k = counts_at[rates[0]][0]
                for name_r, parts in masks_t.items():
                    t, tg = np.concatenate(parts, axis=1)
                    tab, tabg = tail_table(t, k), tail_table(tg, k)
                    row["tails"][name_r] = {"rule": {str(kk): v for kk, v in tab.items()}, "frame sigma": {str(kk): v for kk, v in tabg.items()}, "mean_power_rule": float(np.mean(t.astype(float) ** 2) / 2), "mean_power_frame": float(np.mean(tg.astype(float) ** 2) / 2)}
                    qs = " ".join(f"{tab[p][0]:.2f}/{tabg[p][0]:.2f}/{tab[p][1]:.2f}" for p in RAYLEIGH_P)
                    print(f"    {name_r:20} n {len(t):9d} power {row['tails'][name_r]['mean_power_rule']:.3f}/{row['tails'][name_r]['mean_power_frame']:.3f}  q(.9 .99 .999 .9999 .99999) rule/frame-sigma/Rayleigh {qs}", flush=True)
                report.append(row)
    print(f"load at end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
