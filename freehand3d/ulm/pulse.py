"""The acquisition's two-way pulse estimated from the RF data itself, and the data's noise floor.

G-ULM times every echo against a reference pulse (:func:`freehand3d.ulm.echoes.reference_fit`): its
envelope maximum is the instant an echo "arrives", and its carrier phase there refines the time of
arrival. A recording that does not store its pulse must not fall back to a model pulse of some other
probe (a wrong pulse shifts every time of arrival by a constant and biases depth), so the pulse is
measured from the recording:

1. every channel is band-passed; its noise floor is the Rayleigh sigma of the envelope
   (:func:`noise_floor`);
2. strong, isolated echoes are picked: envelope maxima at least ``min_snr`` times the channel's
   noise floor, with no other local envelope maximum (another echo, or a side lobe) above
   ``isolation`` of their height within 12 carrier periods;
3. each echo is located to a fraction of a sample (parabola through the log-envelope at its maximum)
   and normalised by its envelope peak; the samples of all echoes, taken at their times relative to
   the echo's envelope maximum, scatter densely over one pulse; their median in bins of 1/16 sample
   is the pulse;
4. the median pulse is band-limited to 0..2 centre frequencies, re-centred on its own envelope
   maximum and scaled to a peak envelope of 1 (the convention of ``pulse``/``pulse_t`` in rf.npz).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d

from freehand3d.ulm.echoes import analytic_signal, bandpass
from freehand3d.ulm.probe import LinearProbe

__all__ = ["noise_floor", "estimate_pulse"]

_RAYLEIGH_MEDIAN = np.sqrt(np.log(4.0))  # median of a Rayleigh variable / its sigma


def noise_floor(envelope: np.ndarray, axis: int = 0) -> np.ndarray:
    """Robust noise level of an envelope (Rayleigh sigma = median / sqrt(ln 4)) along ``axis``.

    Sparse echoes occupy a small fraction of the samples, so the median sees only noise; for complex
    Gaussian noise of per-component standard deviation sigma the envelope is Rayleigh(sigma).
    """
    return np.median(envelope, axis=axis) / _RAYLEIGH_MEDIAN


def estimate_pulse(
    rf: np.ndarray,
    probe: LinearProbe,
    *,
    max_frames: int = 8,
    max_echoes: int = 600,
    min_snr: float = 8.0,
    isolation: float = 0.25,
    oversample: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-way pulse (t seconds, values) measured from RF data (n_samples, n_elements) or
    (n_frames, n_samples, n_elements); envelope maximum at t = 0, peak envelope 1.

    Raises ValueError when fewer than 20 usable echoes exist (too noisy or empty data).
    """
    rf = np.asarray(rf, float)
    frames = rf[None] if rf.ndim == 2 else rf[:max_frames]
    fs, fc = probe.sampling_frequency, probe.center_frequency
    period = fs / fc  # samples per carrier period
    half = int(np.ceil(8 * period))  # window each side of the echo's envelope maximum
    iso = int(np.ceil(12 * period))
    samples = []  # (t_rel samples, value) pairs of all echoes
    heights = []
    for frame in frames:
        frame = np.where(np.isfinite(frame), frame, 0.0)
        y = bandpass(frame, probe)
        env = np.abs(analytic_signal(y, axis=0))
        sigma = noise_floor(env)  # per channel
        sigma = np.where(sigma > 0, sigma, np.max(env) * 1e-6 + 1e-30)
        local = maximum_filter1d(env, size=2 * iso + 1, axis=0, mode="constant")
        peak = (env == local) & (env >= min_snr * sigma[None, :])
        # every local maximum (other echoes, side lobes); the echo's own tail is monotonic
        bumps = np.where(env == maximum_filter1d(env, size=5, axis=0, mode="constant"), env, 0.0)
        # isolated: the second-largest maximum nearby is weak (mask the echo's own +-half window)
        n, ch = np.nonzero(peak)
        keep = (n > half + 1) & (n < len(env) - half - 2)
        n, ch = n[keep], ch[keep]
        for k in range(len(n)):
            lo, hi = max(0, n[k] - iso), min(len(env), n[k] + iso + 1)
            around = bumps[lo:hi, ch[k]].copy()
            around[max(0, n[k] - 2 - lo) : n[k] + 3 - lo] = 0
            if around.max(initial=0.0) > isolation * env[n[k], ch[k]]:
                continue
            # sub-sample envelope maximum: parabola through the log-envelope (exact for a Gaussian)
            l0, l1, l2 = np.log(env[n[k] - 1 : n[k] + 2, ch[k]] + 1e-300)
            denom = l0 - 2 * l1 + l2
            frac = 0.5 * (l0 - l2) / denom if denom < 0 else 0.0
            idx = np.arange(n[k] - half, n[k] + half + 1)
            samples.append(np.column_stack([idx - (n[k] + frac), y[idx, ch[k]] / env[n[k], ch[k]]]))
            heights.append(env[n[k], ch[k]] / sigma[ch[k]])
    if len(samples) < 20:
        raise ValueError(f"only {len(samples)} isolated echoes {min_snr:g}x above the noise floor: cannot estimate the pulse")
    order = np.argsort(heights)[::-1][:max_echoes]  # the strongest echoes
    grid = np.arange(-half * oversample, half * oversample + 1) / oversample
    chosen = [samples[i] for i in order]
    fine = _median_binned(chosen, grid, oversample)
    # an echo merged with a weaker overlapping one has no second maximum but a distorted shape:
    # keep the half of the echoes that best match the first median and take the median again
    # (PyMUST L11-5v-like frames with 18 bubbles: error with the estimated pulse 0.54 -> see docs)
    if len(chosen) >= 40:
        match = np.array([_correlation(e, grid, fine) for e in chosen])
        best = np.argsort(match)[::-1][: len(chosen) // 2]
        fine = _median_binned([chosen[i] for i in best], grid, oversample)
    # band-limit (0..2 fc) and taper the window ends
    fine *= np.hanning(len(fine) + 2)[1:-1] ** 0.25
    spectrum = np.fft.rfft(fine)
    freq = np.fft.rfftfreq(len(fine), 1 / (fs * oversample))
    spectrum[freq > 2 * fc] = 0
    fine = np.fft.irfft(spectrum, len(fine))
    env = np.abs(analytic_signal(fine))
    k = int(np.argmax(env))
    l0, l1, l2 = np.log(env[k - 1 : k + 2])
    denom = l0 - 2 * l1 + l2
    frac = 0.5 * (l0 - l2) / denom if denom < 0 else 0.0
    t = (grid - grid[k] - frac / oversample) / fs
    return t, fine / env[k]


def _median_binned(echoes: list, grid: np.ndarray, oversample: int) -> np.ndarray:
    """Median of the echoes' (t_rel, value) samples in bins of 1 / oversample sample on ``grid``."""
    points = np.concatenate(echoes)
    bins = np.clip(np.round((points[:, 0] - grid[0]) * oversample).astype(int), 0, len(grid) - 1)
    sort = np.argsort(bins, kind="stable")
    bins_s, values_s = bins[sort], points[sort, 1]
    edges = np.searchsorted(bins_s, np.arange(len(grid) + 1))
    fine = np.full(len(grid), np.nan)
    for b in range(len(grid)):
        if edges[b + 1] > edges[b]:
            fine[b] = np.median(values_s[edges[b] : edges[b + 1]])
    ok = np.isfinite(fine)
    return np.interp(grid, grid[ok], fine[ok])


def _correlation(echo: np.ndarray, grid: np.ndarray, template: np.ndarray) -> float:
    """Normalised correlation of one echo's (t_rel, value) samples with the template on ``grid``."""
    model = np.interp(echo[:, 0], grid, template)
    denom = np.linalg.norm(model) * np.linalg.norm(echo[:, 1])
    return float(model @ echo[:, 1] / denom) if denom > 0 else 0.0
