"""Beamforming baseline for ULM: delay-and-sum (DAS) + PALA-style weighted-average localization.

DAS: the band-passed channel data are demodulated to IQ (smooth in time, so linear interpolation is
accurate at 4 samples per period), delayed to every pixel with the plane-wave time of flight
(:func:`freehand3d.ulm.probe.echo_times`), re-modulated and summed over the channels inside an
f-number aperture. The envelope image is then searched for regional maxima above a threshold, and each
maximum is refined by the intensity-weighted centroid of its (2 r + 1)^2 neighbourhood ("WA" in PALA).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter
from freehand3d.ulm.echoes import analytic_signal, bandpass
from freehand3d.ulm.probe import LinearProbe, echo_times

__all__ = ["DEFAULT_FALSE_ALARMS", "detection_level", "demodulate", "noise_correlation", "das_noise_power", "beamform_das", "weighted_average_localize", "localize_das_wa", "default_grid"]


# Design false-alarm rate of the noise-floor rule shared by DAS-WA and G-ULM's coherent seeds: noise
# maxima per image. The rule's threshold is k sigma with k = sqrt(2 ln(live pixels / rate)); on the
# Rayleigh tail a rate 1e-4 puts k at 6.3-6.4 sigma on the PyMUST grids (1e5 pixels) instead of 5.6-5.7
# at 0.01 (+13 %, 1.1 dB), so that the expected count over a recording's noise-only frames (hundreds)
# stays << 1 even where the sigma estimate or the noise model is a few per cent off (at k ~ 5.6 a
# sigma 3 % low multiplies the rate by exp(k^2 0.03) ~ 2.6). 0.01 gave 5 detections in 200 noise-only
# PyMUST frames (DAS+WA 128) and a G-ULM seed at an array end; measured numbers in docs/ulm.md.
DEFAULT_FALSE_ALARMS = 1e-4


def default_grid(probe: LinearProbe, z_range: tuple[float, float], pixel: float | None = None):
    """Pixel centres (x (nx,), z (nz,)) covering the aperture laterally, ``pixel`` default lambda / 2."""
    pixel = probe.wavelength / 2 if pixel is None else pixel
    x = np.arange(probe.element_x[0], probe.element_x[-1] + pixel / 2, pixel)
    z = np.arange(z_range[0], z_range[1] + pixel / 2, pixel)
    return x, z


def demodulate(rf: np.ndarray, probe: LinearProbe, chosen: np.ndarray, t0: float = 0.0) -> np.ndarray:
    """Band-passed IQ (n_samples, len(chosen)) of one RF frame, as DAS sums it."""
    rf = bandpass(np.asarray(rf, float), probe)
    t = t0 + np.arange(rf.shape[0]) / probe.sampling_frequency
    return analytic_signal(rf[:, chosen], axis=0) * np.exp(-2j * np.pi * probe.center_frequency * t)[:, None]


def noise_correlation(
    iq: np.ndarray,
    *,
    max_channel_lag: int = 8,
    max_lag: int = 16,
    clip: float = 4.0,
    significance: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise statistics of IQ channel data (n_samples, M), measured on the data itself.

    Returns (rho, gain): rho[dk, L + max_lag] = E[n_{k+dk}[t+L] conj(n_k[t])] on channels
    normalised to unit noise power (rho[0, max_lag] = 1), for channel lags 0..max_channel_lag and
    sample lags -max_lag..max_lag; gain (M,) each channel's noise sigma relative to the median
    channel. Echoes are kept out: samples whose envelope exceeds ``clip`` x the channel's Rayleigh
    sigma (a noise sample does so with probability exp(-clip^2/2) = 3e-4), widened by
    ``max_lag`` samples each side, are masked. Entries below ``significance`` (10x the estimation
    spread of about 0.003 on one 128-channel frame) are set to 0 so that estimation noise does not
    accumulate over the many pairs of a DAS sum.
    """
    from scipy.ndimage import binary_dilation

    from freehand3d.ulm.pulse import noise_floor

    iq = np.asarray(iq, complex)
    n, m = iq.shape
    sigma = noise_floor(np.abs(iq), axis=0)
    gain = sigma / max(float(np.median(sigma)), 1e-300)
    safe = np.where(sigma > 0, sigma, 1.0)
    normed = iq / (safe * np.sqrt(2.0))  # complex noise of per-component sigma s has E|n|^2 = 2 s^2
    echo = np.abs(normed) > clip / np.sqrt(2.0)
    echo = binary_dilation(echo, structure=np.ones((2 * max_lag + 1, 1), bool))
    valid = (~echo) & (sigma > 0)
    data = np.where(valid, normed, 0)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    fd = np.fft.fft(data, size, axis=0)
    fv = np.fft.fft(valid.astype(float), size, axis=0)
    lags = np.arange(-max_lag, max_lag + 1)
    d = min(max_channel_lag, m - 1)
    rho = np.zeros((max_channel_lag + 1, len(lags)), complex)
    for dk in range(d + 1):
        # sum over k of the cross-correlation of channel k + dk with channel k, at lags L
        num = np.fft.ifft(np.sum(fd[:, dk:] * np.conj(fd[:, : m - dk]), axis=1))[lags % size]
        cnt = np.fft.ifft(np.sum(fv[:, dk:] * np.conj(fv[:, : m - dk]), axis=1)).real[lags % size]
        rho[dk] = num / np.maximum(np.rint(cnt), 1.0)
    rho /= max(rho[0, max_lag].real, 1e-300)
    rho[np.abs(rho) < significance] = 0
    return rho, gain


def das_noise_power(
    probe: LinearProbe,
    x: np.ndarray,
    z: np.ndarray,
    rho: np.ndarray,
    gain: np.ndarray,
    n_samples: int,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    f_number: float = 1.0,
    channels: np.ndarray | None = None,
    step: int = 1,
) -> np.ndarray:
    """Noise power (nz, nx) of a :func:`beamform_das` image in units of one median channel's IQ
    noise power, for Gaussian noise of the given correlation (:func:`noise_correlation`).

    Exact for stationary noise: E|s|^2 = sum over channel pairs (k, j) inside the aperture of
    g_k g_j exp(2 pi i fc (tau_k - tau_j)) sum_ab w_ka w_jb rho[k - j, (i_k + a) - (i_j + b)],
    with (i, w) each channel's linear-interpolation samples and weights at its delay tau. For
    noise independent between channels this is sum_k g_k^2 (about the number of channels summed);
    for noise correlated between neighbouring channels (the G-ULM authors' smoothed noise) a
    pixel whose delays are nearly equal across neighbours (shallow, or at the aperture's ends)
    sums that noise coherently and is noisier than the channel count says.

    Default ``step`` 1: every pixel exactly. With ``step`` > 1 the pair sums are evaluated every
    ``step`` pixels and their ratio to the channels' own terms (exact at every pixel) is
    interpolated in between; but the cross-channel terms change from pixel to pixel with the
    channels' sample fractions (PyMUST L11-5v-like noise, step 3: amplitude 0.89-1.10 of the exact
    model at the 1st-99th percentile of pixels), which fattened the false-alarm tail, so the
    interpolation is only a cheaper approximation (about 5x faster).
    """
    chosen = np.arange(probe.n_elements) if channels is None else np.asarray(channels, int)
    gain = np.asarray(gain, float)
    if step > 1:
        from scipy.ndimage import map_coordinates

        iz = np.unique(np.r_[np.arange(0, len(z), step), len(z) - 1])
        ix = np.unique(np.r_[np.arange(0, len(x), step), len(x) - 1])
        coarse = das_noise_power(probe, x[ix], z[iz], rho, gain, n_samples, tx_angle=tx_angle, t0=t0, f_number=f_number, channels=chosen, step=1)
        plain_coarse = _uncorrelated_power(probe, x[ix], z[iz], gain, n_samples, tx_angle, t0, f_number, chosen, rho)
        ratio = np.where(plain_coarse > 0, coarse / np.where(plain_coarse > 0, plain_coarse, 1), np.nan)
        ratio = np.where(np.isfinite(ratio), ratio, np.nanmedian(ratio) if np.isfinite(ratio).any() else 1.0)
        fz = np.interp(np.arange(len(z)), iz, np.arange(len(iz)))
        fx = np.interp(np.arange(len(x)), ix, np.arange(len(ix)))
        grid = np.stack(np.meshgrid(fz, fx, indexing="ij"))
        return _uncorrelated_power(probe, x, z, gain, n_samples, tx_angle, t0, f_number, chosen, rho) * map_coordinates(ratio, grid, order=1, mode="nearest")
    fs, fc = probe.sampling_frequency, probe.center_frequency
    elem_x = probe.element_x[chosen]
    m = len(chosen)
    max_lag = (rho.shape[1] - 1) // 2
    pairs = [dk for dk in range(min(rho.shape[0], m)) if np.any(rho[dk])]
    power = np.zeros((len(z), len(x)))
    xx = np.broadcast_to(x[None, :], (1, len(x)))
    rows_per_chunk = max(1, 200_000 // max(1, len(x) * m) * 4)
    for start in range(0, len(z), rows_per_chunk):
        zz = z[start : start + rows_per_chunk]
        pts = np.stack(np.broadcast_arrays(xx, zz[:, None]), axis=-1)
        delay = echo_times(pts, probe, tx_angle)[..., chosen]
        pos = (delay - t0) * fs
        i0 = np.floor(pos).astype(int)
        frac = pos - i0
        used = (i0 >= 0) & (i0 < n_samples - 1) & (np.abs(pts[..., 0:1] - elem_x) <= pts[..., 1:2] / (2 * f_number))
        weights = (1 - frac, frac)
        total = np.zeros(delay.shape[:2])
        for dk in pairs:
            hi, lo = slice(dk, m), slice(0, m - dk)
            acc = np.zeros(delay.shape[:2] + (m - dk,), complex)
            base = i0[..., hi] - i0[..., lo]
            for a in (0, 1):
                for b in (0, 1):
                    lag = base + (a - b)
                    inside = np.abs(lag) <= max_lag
                    acc += weights[a][..., hi] * weights[b][..., lo] * np.where(inside, rho[dk][np.clip(lag + max_lag, 0, 2 * max_lag)], 0)
            acc *= np.exp(2j * np.pi * fc * (delay[..., hi] - delay[..., lo])) * (gain[hi] * gain[lo])
            term = np.sum(np.where(used[..., hi] & used[..., lo], acc, 0), axis=-1).real
            total += term if dk == 0 else 2 * term
        power[start : start + len(zz)] = np.maximum(total, 0)
    return power


def _uncorrelated_power(probe, x, z, gain, n_samples, tx_angle, t0, f_number, chosen, rho=None):
    """The channels' own terms of :func:`das_noise_power` (channel lag 0), exact at every pixel: sum
    over the channels whose delay lies in the record and inside the aperture of g_k^2 times the
    linear interpolation's noise gain (1 - f)^2 + f^2 + 2 f (1 - f) Re rho(0, 1) at the channel's
    sample fraction f (``rho`` None: 1). That gain changes from pixel to pixel with f (0.87 at f =
    1/2 for PyMUST L11-5v-like noise, Re rho(0, 1) = 0.74); it averages out over many channels but
    not where a pixel sums a handful (shallow rows, the array's ends, 16 sparse channels), and
    interpolating it from every third pixel left the envelope / model tail there heavier than
    Rayleigh (L11-5v-like 128 ch, 200 noise-only frames, top 30 rows: 0.99999 quantile 5.13 vs 4.80)."""
    fs = probe.sampling_frequency
    elem_x = probe.element_x[chosen]
    g2 = np.asarray(gain, float) ** 2
    lag1 = 1.0 if rho is None else float(np.real(rho[0, (rho.shape[1] - 1) // 2 + 1]))
    out = np.zeros((len(z), len(x)))
    xx = np.broadcast_to(x[None, :], (1, len(x)))
    rows = max(1, 400_000 // max(1, len(x) * len(chosen)))
    for start in range(0, len(z), rows):
        zz = z[start : start + rows]
        pts = np.stack(np.broadcast_arrays(xx, zz[:, None]), axis=-1)
        pos = (echo_times(pts, probe, tx_angle)[..., chosen] - t0) * fs
        i0 = np.floor(pos)
        frac = pos - i0
        used = (i0 >= 0) & (i0 < n_samples - 1) & (np.abs(pts[..., 0:1] - elem_x) <= pts[..., 1:2] / (2 * f_number))
        auto = 1.0 - 2.0 * frac * (1.0 - frac) * (1.0 - lag1)  # (1-f)^2 + f^2 + 2 f (1-f) lag1
        out[start : start + len(zz)] = np.sum(np.where(used, auto, 0.0) * g2, axis=-1)
    return out


def beamform_das(
    rf: np.ndarray,
    probe: LinearProbe,
    x: np.ndarray,
    z: np.ndarray,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    f_number: float = 1.0,
    channels: np.ndarray | None = None,
    return_counts: bool = False,
) -> np.ndarray:
    """Delay-and-sum one plane-wave RF frame onto a grid; returns the complex image (nz, nx)
    (and, with ``return_counts``, the number of channels summed at each pixel).

    Parameters
    ----------
    rf : array (n_samples, n_elements)
        One frame.
    probe : LinearProbe
    x, z : arrays
        Pixel centres (mm).
    tx_angle, t0 : float
        Plane-wave angle (radians) and time of sample 0 (s).
    f_number : float
        Receive aperture: element k contributes to a pixel at depth z if |x - x_k| <= z / (2 F).
    channels : int array, optional
        Elements to use (default all).
    """
    fs, fc = probe.sampling_frequency, probe.center_frequency
    n_samples = rf.shape[0]
    chosen = np.arange(probe.n_elements) if channels is None else np.asarray(channels, int)
    iq = demodulate(rf, probe, chosen, t0)
    elem_x = probe.element_x[chosen]
    image = np.zeros((len(z), len(x)), complex)
    counts = np.zeros((len(z), len(x)))
    xx = np.broadcast_to(x[None, :], (1, len(x)))
    rows_per_chunk = max(1, 200_000 // max(1, len(x) * len(chosen)) * 8)
    for start in range(0, len(z), rows_per_chunk):
        zz = z[start : start + rows_per_chunk]
        pts = np.stack(np.broadcast_arrays(xx, zz[:, None]), axis=-1)  # (nzc, nx, 2)
        delay = echo_times(pts, probe, tx_angle)[..., chosen]  # (nzc, nx, M)
        pos = (delay - t0) * fs
        i0 = np.floor(pos).astype(int)
        frac = pos - i0
        inside = (i0 >= 0) & (i0 < n_samples - 1)
        i0 = np.clip(i0, 0, n_samples - 2)
        cols = np.arange(len(chosen))
        sample = iq[i0, cols] * (1 - frac) + iq[i0 + 1, cols] * frac
        sample *= np.exp(2j * np.pi * fc * delay)  # back onto the carrier at the pixel's delay
        aperture = np.abs(pts[..., 0:1] - elem_x) <= pts[..., 1:2] / (2 * f_number)
        used = inside & aperture
        image[start : start + len(zz)] = np.sum(np.where(used, sample, 0), axis=-1)
        counts[start : start + len(zz)] = used.sum(axis=-1)
    return (image, counts) if return_counts else image


def detection_level(
    envelope: np.ndarray,
    *,
    threshold_db: float | None = -20.0,
    false_alarms: float | None = DEFAULT_FALSE_ALARMS,
    noise_scale: np.ndarray | None = None,
    rows: int = 30,
) -> np.ndarray:
    """Detection threshold of an envelope image (nz, nx), broadcastable to it: the larger of
    ``threshold_db`` relative to the image maximum and the noise-floor (CFAR) level (see
    :func:`weighted_average_localize`); shared by DAS-WA and G-ULM's coherent seeding."""
    envelope = np.asarray(envelope, float)
    peak = envelope.max() if envelope.size else 0.0
    level = np.zeros(envelope.shape[0])
    if threshold_db is not None:
        level[:] = peak * 10 ** (threshold_db / 20)
    if false_alarms is None:
        return level[:, None]
    from freehand3d.ulm.pulse import _RAYLEIGH_MEDIAN

    scale = np.ones_like(envelope) if noise_scale is None else np.broadcast_to(np.asarray(noise_scale, float), envelope.shape)
    live = scale > 0  # pixels no channel reaches carry no noise and no signal: never detections
    if not live.any():
        return np.full(envelope.shape, np.inf)
    # each row's Rayleigh sigma: the median of envelope / scale over the live pixels of the rows
    # within +-``rows`` (rows cut by the aperture were half zeros, which pulled the median and
    # the threshold to ~0: 143 false detections in 10 noise-only frames with 16 channels). The
    # window is wide because the threshold sits k ~ 5.6 sigma out, where a sigma estimate 5 %
    # low multiplies the false alarms by exp(k^2 0.05) ~ 5: a median of N independent Rayleigh
    # samples has a relative spread 0.72 / sqrt(N), 7 % with the former 21-row window of
    # running row medians on a 128-channel L22-14v-like image (one noise peak 1.11x its
    # threshold in 10 frames), ~1.5 % with +-30 rows pooled. Bright bubbles cover a few per cent
    # of the window and hardly move its median.
    ratio = np.where(live, envelope / np.where(live, scale, 1.0), np.nan)
    from freehand3d.ulm._kernels import sliding_row_median

    sigma = sliding_row_median(ratio, rows) / _RAYLEIGH_MEDIAN  # exactly np.median of each window
    sigma = np.where(np.isfinite(sigma), sigma, np.nanmedian(sigma) if np.isfinite(sigma).any() else 0.0)
    k = np.sqrt(2 * np.log(max(int(live.sum()), 2) / false_alarms))
    return np.where(live, np.maximum(level[:, None], k * sigma[:, None] * scale), np.inf)


def weighted_average_localize(
    envelope: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    *,
    threshold_db: float | None = -26.0,
    radius: int = 2,
    max_bubbles: int | None = None,
    false_alarms: float | None = DEFAULT_FALSE_ALARMS,
    noise_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Regional maxima of an envelope image refined by intensity-weighted centroids.

    Parameters
    ----------
    envelope : array (nz, nx)
        Non-negative image on the grid (x, z).
    threshold_db : float or None
        Maxima below this level relative to the image maximum are ignored (None: off).
    false_alarms : float or None
        Noise-floor (CFAR-like) rule (:func:`detection_level`), the same as G-ULM's coherent seeds:
        each depth row's noise sigma (Rayleigh, median / sqrt(ln 4) of envelope / noise_scale over
        the live pixels of +-30 rows) times k = sqrt(2 ln(live pixels / false_alarms)); pure noise
        yields at most about ``false_alarms`` maxima per image (default
        :data:`DEFAULT_FALSE_ALARMS`, 1e-4). None: off.
    noise_scale : array (nz, nx), optional
        Relative noise amplitude per pixel (for DAS: sqrt of :func:`das_noise_power`, which changes
        with depth and where the f-number aperture is cut by the array's ends; 0 where no channel
        reaches); the row's noise sigma is measured on envelope / noise_scale and the threshold
        scaled back per pixel.
    radius : int
        Half-width (pixels) of the centroid window.
    max_bubbles : int, optional
        Keep only the brightest maxima.

    Returns
    -------
    numpy.ndarray (K, 2)
        (x, z) in mm.
    """
    envelope = np.asarray(envelope, float)
    peak = envelope.max() if envelope.size else 0.0
    if peak <= 0:
        return np.zeros((0, 2))
    level = detection_level(envelope, threshold_db=threshold_db, false_alarms=false_alarms, noise_scale=noise_scale)
    is_max = (envelope == maximum_filter(envelope, size=2 * radius + 1, mode="constant")) & (envelope >= level) & (envelope > 0)
    # maxima on the border cannot be refined symmetrically
    is_max[:radius], is_max[-radius:], is_max[:, :radius], is_max[:, -radius:] = False, False, False, False
    zi, xi = np.nonzero(is_max)
    order = np.argsort(-envelope[zi, xi])
    if max_bubbles is not None:
        order = order[:max_bubbles]
    zi, xi = zi[order], xi[order]
    offsets = np.arange(-radius, radius + 1)
    oz, ox = np.meshgrid(offsets, offsets, indexing="ij")
    patch = envelope[zi[:, None, None] + oz, xi[:, None, None] + ox]  # (K, w, w)
    weight = patch.sum(axis=(1, 2))
    dz, dx = z[1] - z[0], x[1] - x[0]
    cz = z[zi] + (patch * oz).sum(axis=(1, 2)) / weight * dz
    cx = x[xi] + (patch * ox).sum(axis=(1, 2)) / weight * dx
    return np.column_stack([cx, cz])


def localize_das_wa(
    rf: np.ndarray,
    probe: LinearProbe | None = None,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    channels: int | np.ndarray = 128,
    z_range: tuple[float, float] | None = None,
    pixel: float | None = None,
    threshold_db: float | None = -20.0,
    false_alarms: float | None = DEFAULT_FALSE_ALARMS,
    radius: int = 2,
    f_number: float = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """DAS + weighted-average localization; same input/output conventions as
    :func:`freehand3d.ulm.pipeline.localize` ((K, 2) for one frame, (K, 3) (frame, x, z) for many).

    ``z_range`` (mm) defaults to 1 mm .. the deepest depth whose echoes lie wholly inside the record
    (16 carrier periods before its end, less the steering's extra path across the aperture).
    ``threshold_db`` and ``false_alarms``: see :func:`weighted_average_localize`; the default -20 dB
    sits above the side lobes of a single plane-wave DAS image (f-number 1): with -26 dB, noiseless
    PyMUST frames gave 10 false positives per 40 bubbles (Jaccard 80 %), with -20 dB none. Channels with
    NaN/Inf samples are left out of that frame.
    """
    from freehand3d.ulm.pipeline import select_channels

    if probe is None:
        from freehand3d.ulm.pipeline import _warn

        _warn("no probe given: assuming the L22-14v-like LinearProbe() defaults")
        probe = LinearProbe()
    rf = np.asarray(rf)
    single = rf.ndim == 2
    frames_rf = rf[None] if single else rf
    if z_range is None:
        t_end = t0 + frames_rf.shape[1] / probe.sampling_frequency
        # stop 16 carrier periods before the record ends, and where the steered wave still reaches
        # every element's echo inside the record: the last samples hold only part of an echo (and
        # the zero-phase band-pass wraps them around), which made false maxima in noise-only frames
        aperture = probe.pitch * (probe.n_elements - 1)
        depth = probe.speed_of_sound * (t_end - 16 / probe.center_frequency) / 2
        z_range = (1.0, max(1.5, depth * np.cos(tx_angle) - aperture * abs(np.sin(tx_angle))))
    x, z = default_grid(probe, z_range, pixel)
    chosen = select_channels(probe.n_elements, channels) if np.ndim(channels) == 0 else np.asarray(channels, int)
    frames = range(len(frames_rf))
    if progress:
        from rich.progress import track

        frames = track(frames, description="DAS + WA")
    out = []
    noise_maps: dict = {}

    def noise_map(frame, use):
        # the image's noise power per pixel from the noise's own statistics (channel gains and the
        # correlation between neighbouring channels and samples), measured on the first frame
        # that uses these channels: the pixel's channel count alone under-rated the noise at
        # shallow pixels and the aperture's ends by up to 1.3x in power (correlated noise adds up
        # coherently there), where all noise-only false alarms sat
        key = tuple(use)
        if key not in noise_maps:
            rho, gain = noise_correlation(demodulate(frame, probe, use, t0))
            noise_maps[key] = np.sqrt(das_noise_power(probe, x, z, rho, gain, frame.shape[0], tx_angle=tx_angle, t0=t0, f_number=f_number, channels=use))
        return noise_maps[key]

    for f in frames:
        frame = frames_rf[f]
        usable = np.isfinite(frame).all(axis=0)
        use = chosen if usable[chosen].all() else chosen[usable[chosen]]  # NaN channels sit the frame out
        frame = np.where(np.isfinite(frame), frame, 0.0) if not usable.all() else frame
        image, counts = beamform_das(frame, probe, x, z, tx_angle=tx_angle, t0=t0, f_number=f_number, channels=use, return_counts=True)
        scale = noise_map(frame, use) if false_alarms is not None and len(use) else np.sqrt(counts)
        pos = weighted_average_localize(np.abs(image), x, z, threshold_db=threshold_db, radius=radius, false_alarms=false_alarms, noise_scale=scale)
        out.append(np.column_stack([np.full(len(pos), f), pos]))
    if single:
        return out[0][:, 1:]
    return np.concatenate(out) if out else np.zeros((0, 3))
