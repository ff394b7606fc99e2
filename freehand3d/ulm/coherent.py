"""Coherent seeding for G-ULM in noise: find weak bubbles by the coherent sum of the selected
channels, then locate each one geometrically from its own echoes (stage 5 of :mod:`.pipeline`).

Per-channel echo detection sees the per-channel SNR; at an in-band SNR of 20 dB the weaker bubbles'
echoes sit at one to two noise sigmas in most channels, where no per-channel threshold can keep them
without drowning in noise echoes. Summing the selected channels coherently along a point's two-way
time of flight gains up to sqrt(channels) in amplitude. G-ULM uses that sum only to decide *that*
and roughly *where* to look:

1. :func:`coherent_image` — the coherent sum of the selected channels' analytic signals (band-passed,
   up-sampled 4x, nearest sample: a phase error of at most pi/16) on a lambda/2 grid, channels inside
   an f-number 1 aperture, with the number of summed channels per pixel;
2. seeds — its regional maxima above the same noise-floor (CFAR) rule as the DAS-WA baseline
   (:func:`freehand3d.ulm.baseline.weighted_average_localize`: row noise sigma of the envelope scaled
   by sqrt(channels summed), k = sqrt(2 ln(pixels / false_alarms))) that no G-ULM bubble already
   explains;
3. :func:`gated_echoes` — in every selected channel the echo at the seed's predicted time of flight
   is fitted by the same MEMGO model as in :func:`freehand3d.ulm.echoes.find_echoes` (the shape
   fixed to the reference pulse's, amplitude, time and phase free), its phase-precise time of
   arrival taken, and kept if it lies within half a carrier period of the prediction;
4. :func:`locate_seeds` — the position is the least-squares intersection of those channels' ellipses
   (Gauss-Newton from the seed, :func:`freehand3d.ulm.pipeline.refine_positions` with a shrinking
   association gate); it must be supported by at least ``min_channels`` echoes and stay within
   lambda/2 of the seed.

So the coherent sum is a detection test; every reported position still comes from echo fits and
ellipse intersections.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

from freehand3d.ulm.baseline import DEFAULT_FALSE_ALARMS
from freehand3d.ulm.echoes import FFT_WORKERS, ReferenceFit, bandpass, canonical_memgo, envelope_peak, fit_memgo_batch, phase_precise_delay
from freehand3d.ulm.probe import LinearProbe, echo_times, transmit_time

__all__ = ["PulseModel", "subtract_echoes", "upsampled_analytic", "image_grid", "coherent_image", "coherent_bubbles", "gated_fits"]


def upsampled_analytic(rf_band: np.ndarray, factor: int = 4) -> np.ndarray:
    """Analytic signal of band-passed RF (n_samples, M), up-sampled ``factor`` x in time (FFT zero
    padding, single precision)."""
    n = rf_band.shape[0]
    spectrum = sp_fft.rfft(np.asarray(rf_band, np.float32), axis=0, workers=FFT_WORKERS)
    full = np.zeros((n * factor, rf_band.shape[1]), np.complex64)
    m = spectrum.shape[0]
    full[:m] = 2 * spectrum
    full[0] *= 0.5
    if n % 2 == 0:
        full[m - 1] *= 0.5
    return sp_fft.ifft(full, axis=0, overwrite_x=True, workers=FFT_WORKERS) * np.float32(factor)


def image_grid(probe: LinearProbe, chosen: np.ndarray, z_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (x, z) of :func:`coherent_image`: about lambda / 2 apart, x on a whole fraction
    of the pitch from the first selected element (so every element sits on a pixel column)."""
    lam = probe.wavelength
    step = probe.pitch / max(1, round(probe.pitch / (lam / 2)))
    first, last = probe.element_x[chosen[0]], probe.element_x[chosen[-1]]
    x = first + np.arange(int(round((last - first) / step)) + 1) * step
    z = np.arange(z_range[0], z_range[1] + lam / 4, lam / 2)
    return x, z


def coherent_image(
    analytic_up: np.ndarray,
    factor: int,
    probe: LinearProbe,
    chosen: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    f_number: float = 1.0,
    noise_power: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(complex coherent sum (nz, nx), channels summed (nz, nx)) of the selected channels; with
    ``noise_power`` (M,) the second image is the sum of the summed channels' noise powers instead.

    ``analytic_up`` is :func:`upsampled_analytic` of the selected channels (columns in ``chosen``
    order); each channel contributes its nearest up-sampled analytic sample at the pixel's two-way
    time of flight, inside the aperture |x - x_k| <= z / (2 f_number). ``x`` must be a regular grid
    with every selected element on a column (:func:`image_grid`): the receive delays then form one
    table over (depth, column offset) shared by all channels.
    """
    fs_up = probe.sampling_frequency * factor
    n_up = analytic_up.shape[0]
    step = x[1] - x[0] if len(x) > 1 else probe.pitch
    xx, zz = np.meshgrid(x, z)
    tx_samples = ((transmit_time(np.stack([xx, zz], axis=-1), probe, tx_angle) - t0) * fs_up).astype(np.float32)
    reach = int(np.ceil(z[-1] / (2 * f_number) / step + 1e-9))
    d = np.arange(-reach, reach + 1) * step
    receive = np.sqrt(d[None, :] ** 2 + (z * z)[:, None]) * (fs_up / probe.speed_of_sound)
    outside = np.abs(d)[None, :] > z[:, None] / (2 * f_number) + 1e-9
    receive = np.where(outside, 4.0 * n_up, receive).astype(np.float32)  # out of aperture: past the end
    cols = np.rint((probe.element_x[chosen] - x[0]) / step).astype(np.int64)
    weights = np.ones(len(chosen), np.float32) if noise_power is None else np.asarray(noise_power, np.float32)
    from freehand3d.ulm._kernels import coherent_sum

    # compiled loop (each pixel adding the channels in order): bit for bit the former numpy loop
    # over channels (gather + add of a (depth, aperture) block per channel); on the analytic
    # bench's 128 channels 0.062 -> 0.018 CPU s/frame (A/B in one process, AMD EPYC, load ~8)
    image, counts = coherent_sum(analytic_up, tx_samples, receive, cols, reach, weights, (len(z), len(x)))
    return image, counts


class PulseModel:
    """The acquisition's two-way pulse (real and analytic), for removing located echoes with their
    side lobes (which one MEMGO component does not model): echo = A pulse(t - toa), A by least squares."""

    def __init__(self, probe: LinearProbe, pulse=None, half_window: int = 16):
        fs = probe.sampling_frequency
        if isinstance(pulse, tuple):
            pt, py = (np.asarray(v, float) for v in pulse)
            func = lambda t: np.interp(t, pt, py, left=0.0, right=0.0)  # noqa: E731
        else:
            func = pulse or probe.two_way_pulse
        self.fs = fs
        self.half = int(half_window)
        self.step = 1 / (16 * fs)
        self.t = np.arange(-(self.half + 8) * 16, (self.half + 8) * 16 + 1) * self.step
        values = func(self.t)
        from freehand3d.ulm.echoes import analytic_signal

        self.analytic = analytic_signal(values)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Analytic pulse at times ``t`` (s) relative to its envelope maximum (0 outside its support)."""
        pos = np.asarray(t, float) / self.step + (len(self.t) - 1) / 2
        i = np.clip(np.floor(pos).astype(int), 0, len(self.t) - 2)
        frac = pos - i
        out = self.analytic[i] * (1 - frac) + self.analytic[i + 1] * frac
        return np.where((pos >= 0) & (pos <= len(self.t) - 1), out, 0.0)

    def windows(self, toa_samples: np.ndarray, n_samples: int):
        """Each echo's window around its time of arrival (``toa_samples``, samples of a record of
        ``n_samples``): sample indices (E, 2 half + 1), which of them lie in the record, and the real
        pulse there (0 outside the record)."""
        idx = np.rint(toa_samples).astype(int)[:, None] + np.arange(-self.half, self.half + 1)[None, :]
        inside = (idx >= 0) & (idx < n_samples)
        return idx, inside, np.where(inside, self((idx - toa_samples[:, None]) / self.fs).real, 0.0)


def joint_echo_amplitudes(rf_band: np.ndarray, toa_samples: np.ndarray, model: PulseModel) -> np.ndarray:
    """Amplitudes (J, M) of J echoes A pulse(t - toa) in each of M channels (``toa_samples`` (J, M),
    samples of ``rf_band``), fitted jointly: one least-squares fit of all J echoes per channel, so
    that two echoes overlapping in a channel share its data instead of each taking the whole of it."""
    n, m = rf_band.shape
    amp = np.zeros(toa_samples.shape)
    for c in range(m):
        t = toa_samples[:, c]
        idx, inside, shape = model.windows(t, n)
        if not inside.any():
            continue
        # the rows the echoes cover, each echo's window placed in them
        rows, where = np.unique(idx[inside], return_inverse=True)
        design = np.zeros((len(rows), len(t)))
        echo = np.broadcast_to(np.arange(len(t))[:, None], idx.shape)[inside]
        np.add.at(design, (where, echo), shape[inside])
        amp[:, c] = np.linalg.lstsq(design, rf_band[rows, c], rcond=None)[0]
    return amp


def _memgo_analytic(u: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Analytic signal of MEMGO components (narrow-band form): a g(u) exp(i (w u + phi)), u = t - mu (E, T)."""
    from scipy.special import erf

    a, _, s, eta, w, phi = (params[:, i, None] for i in range(6))
    env = np.exp(-0.5 * (u / s) ** 2) * (1 + erf(eta * u / (s * np.sqrt(2))))
    return a * env * np.exp(1j * (w * u + phi))


class _Residual:
    """Band-passed channel data (real, native rate) and its up-sampled analytic signal, from which
    located bubbles' fitted echoes are removed one by one."""

    def __init__(self, rf_band: np.ndarray, factor: int):
        self.real = np.array(rf_band, float, copy=True)
        self.factor = factor
        self.analytic = upsampled_analytic(self.real, factor)

    @classmethod
    def of(cls, real: np.ndarray, analytic: np.ndarray, factor: int) -> "_Residual":
        """A residual holding the given arrays as they are (no copy, no new analytic signal)."""
        out = cls.__new__(cls)
        out.real, out.analytic, out.factor = real, analytic, factor
        return out

    def copy(self) -> "_Residual":
        return _Residual.of(self.real.copy(), self.analytic.copy(), self.factor)

    def subtract(self, toa_samples: np.ndarray, channels: np.ndarray, model: "PulseModel") -> np.ndarray:
        """Remove echoes A pulse(t - toa) (toa in samples of this record) from the given channels,
        each A by least squares against the data alone; returns A."""
        n = self.real.shape[0]
        windows = idx, inside, shape = model.windows(toa_samples, n)
        data = np.where(inside, self.real[np.clip(idx, 0, n - 1), channels[:, None]], 0.0)
        amp = (data * shape).sum(axis=1) / np.maximum((shape * shape).sum(axis=1), 1e-30)
        self.subtract_known(toa_samples, channels, amp, model, windows)
        return amp

    def subtract_known(self, toa_samples: np.ndarray, channels: np.ndarray, amp: np.ndarray, model: "PulseModel", windows=None) -> None:
        """Remove echoes of known amplitudes ``amp`` (real and analytic signal); ``windows``:
        :meth:`PulseModel.windows` of these echoes when already computed."""
        n = self.real.shape[0]
        idx, _, shape = model.windows(toa_samples, n) if windows is None else windows
        np.add.at(self.real, (np.clip(idx, 0, n - 1), np.broadcast_to(channels[:, None], idx.shape)), -amp[:, None] * shape)
        self.subtract_analytic(toa_samples, channels, amp, model)

    def subtract_analytic(self, toa_samples: np.ndarray, channels: np.ndarray, amp: np.ndarray, model: "PulseModel") -> None:
        """Remove echoes of known amplitudes ``amp`` from the up-sampled analytic signal only."""
        n, f, half = self.real.shape[0], self.factor, model.half
        idx_up = np.rint(toa_samples * f).astype(int)[:, None] + np.arange(-half * f, half * f + 1)[None, :]
        inside = (idx_up >= 0) & (idx_up < n * f)
        shape_up = np.where(inside, model((idx_up / f - toa_samples[:, None]) / model.fs), 0.0)
        np.add.at(self.analytic, (np.clip(idx_up, 0, n * f - 1), np.broadcast_to(channels[:, None], idx_up.shape)), (-amp[:, None] * shape_up).astype(np.complex64))

    def point_sum(self, probe: LinearProbe, chosen: np.ndarray, p: np.ndarray, *, tx_angle: float, t0: float, f_number: float) -> float:
        """|coherent sum| at one point, computed as :func:`coherent_image` does for a pixel."""
        return float(self.point_sums(probe, chosen, np.asarray(p, float).reshape(1, 2), tx_angle=tx_angle, t0=t0, f_number=f_number)[0])

    def point_sums(self, probe: LinearProbe, chosen: np.ndarray, points: np.ndarray, *, tx_angle: float, t0: float, f_number: float) -> np.ndarray:
        """:meth:`point_sum` at each of ``points`` (P, 2): the times of flight of all points at once,
        then each point's sum over its own channels in channel order (the same additions as one
        point at a time, so the same values to the last bit)."""
        n_up = self.analytic.shape[0]
        ex = probe.element_x[chosen]
        idx = np.rint((echo_times(points, probe, tx_angle)[:, chosen] - t0) * probe.sampling_frequency * self.factor).astype(int)
        valid = (np.abs(ex[None, :] - points[:, 0:1]) <= points[:, 1:2] / (2 * f_number)) & (idx >= 0) & (idx < n_up)
        return np.array([np.abs(self.analytic[i[v], np.flatnonzero(v)].sum()) for i, v in zip(idx, valid)], float)


def _weighted_intersection(seed, paths, weights, element_x, direction, gates, iterations=4):
    """Weighted least-squares intersection of the ellipses (paths, mm) from ``seed``, gate by gate."""
    p = np.array(seed, float)
    used = np.zeros(len(paths), bool)
    finite = np.isfinite(paths)
    for gate in gates:
        for _ in range(iterations):
            dx = p[0] - element_x
            r = np.hypot(dx, p[1])
            res = np.where(finite, paths, 0.0) - (p @ direction + r)
            used = finite & (np.abs(res) <= gate)
            if used.sum() < 3:
                return p, used
            jac = np.column_stack([direction[0] + dx / r, direction[1] + p[1] / r])
            w = np.where(used, weights, 0.0)
            jtj = (jac * w[:, None]).T @ jac + 1e-12 * np.eye(2)
            p = p + np.linalg.solve(jtj, (jac * (w * res)[:, None]).sum(axis=0))
    dx = p[0] - element_x
    res = np.where(finite, paths, np.inf) - (p @ direction + np.hypot(dx, p[1]))
    return p, finite & (np.abs(res) <= gates[-1])


#: Few fitted echoes (:func:`_echoes_agree`, ``few_echoes``): with at most this many echoes fitted in
#: a seed's aperture the count test asks every one of them to agree (3: more than there are) ...
FEW_ECHOES = 5
#: ... so instead all but one of them, and at least 3, must agree with participation ratio at least
#: this share of the agreeing count (PyMUST L11-5v-like 16 channels 30 dB, seeds of the final
#: check's search refused by the count test: on a true bubble 0.84-1.0, on other bubbles' leftovers
#: 0.57-0.87; docs/ulm.md, "Few echoes in the aperture").
FEW_ECHOES_PARTICIPATION = 0.9


def _echoes_agree(ok, used, params, *, min_channels, min_agreement=0.6, chance=0.25, z_score=2.0, min_participation=0.0, few_echoes=False) -> bool:
    """Whether a seed's fitted echoes (``ok``: fitted in its aperture; ``used``: agreeing with the
    intersection; ``params``: their MEMGO parameters, amplitude first) verify it as a bubble.

    Count: the intersection fits two coordinates, so two echoes agree for free; the others agree
    by chance with probability ``chance`` each (binomial, ``z_score`` sigmas above its mean); and
    at least ``min_channels`` and ``min_agreement`` of the fitted ones.
    Participation: the agreeing echoes must carry the seed's energy together: a fit in a channel
    with nothing there has a near-zero amplitude and a random phase that agrees 1 time in 4, so one
    strong echo left over from a bubble found earlier plus such fits passed the count (16 channels,
    noiseless PyMUST: amplitudes 537 and 0-8). The participation ratio (sum a)^2 / sum a^2 is the
    number of equally strong echoes with that sum and energy (1.06 there, ~n for a bubble). With
    ``min_participation`` it must also reach that share of the aperture's fitted echoes: inside the
    f-number 1 aperture element directivity changes a bubble's echo amplitude little, while echoes
    of several other bubbles that happen to line up with a seed are uneven (16 channels, PyMUST
    L22-14v-like 18 bubbles/frame 30 dB: true seeds 0.68-1.0 x n, 10th percentile 0.66; false ones
    from 0.4 x n).
    Few echoes (``few_echoes``): where the aperture holds 3 to ``FEW_ECHOES`` fitted echoes (a
    shallow bubble seen by few selected channels) the count needs all of them, or more than there
    are (3 echoes: 2 + 1 x 0.25 + 2 x 0.43 = 3.1); all but one of them (at least 3) then verify the
    seed if their participation ratio reaches ``FEW_ECHOES_PARTICIPATION`` of their number: few
    echoes, but each carrying its share of the seed's energy.
    """
    n = ok.sum()
    if few_echoes and 3 <= n <= FEW_ECHOES and used.sum() >= max(3, n - 1):
        amp = np.abs(params[used, 0])
        if amp.sum() ** 2 >= FEW_ECHOES_PARTICIPATION * used.sum() * (amp**2).sum():
            return True
    free = max(n - 2, 0)
    need = max(min_channels, min_agreement * n, 2 + free * chance + z_score * np.sqrt(free * chance * (1 - chance)))
    if used.sum() < need:
        return False
    amp = np.abs(params[used, 0])
    return bool(amp.sum() ** 2 >= max(min_channels, min_participation * n) * (amp**2).sum())


def coherent_bubbles(
    rf_band: np.ndarray,
    probe: LinearProbe,
    chosen: np.ndarray,
    reference: ReferenceFit,
    model: PulseModel,
    z_range: tuple[float, float],
    *,
    known: np.ndarray | None = None,
    known_peak: float = 0.0,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    false_alarms: float = DEFAULT_FALSE_ALARMS,
    threshold_db: float | None = None,
    f_number: float = 1.0,
    min_channels: int = 8,
    min_agreement: float = 0.6,
    chance: float = 0.25,
    z_score: float = 2.0,
    factor: int = 4,
    min_participation: float = 0.0,
    few_echoes: bool = False,
) -> np.ndarray:
    """Bubbles (K, 2) found by coherent seeding and located geometrically (see the module docstring).

    Seeds are taken brightest first; before each one its coherent sum is re-tested on the data
    minus the echoes of the bubbles already located (a side lobe or a second maximum of a bubble
    taken earlier no longer passes), its echoes are fitted at the predicted times of flight, the
    position is the weighted least-squares intersection of their ellipses (weights: fitted
    amplitude squared, channels inside the f-number aperture, gates lambda/2, lambda/4, lambda/8 of
    path), and the coherent sum at that position must pass the same threshold. ``few_echoes``: see
    :func:`_echoes_agree`.
    """
    from freehand3d.ulm.baseline import detection_level
    from freehand3d.ulm.pipeline import echo_paths
    from scipy.ndimage import maximum_filter

    lam = probe.wavelength
    element_x = probe.element_x[chosen]
    x, z = image_grid(probe, chosen, z_range)
    if len(x) < 5 or len(z) < 5:
        return np.zeros((0, 2))
    residual = _Residual(rf_band, factor)
    # each channel's noise power (Rayleigh sigma of its envelope, squared, relative to the median):
    # the noise of a sum grows with the summed channels' powers, not their count (edge channels of
    # a smoothed noise field are noisier)
    from freehand3d.ulm.pulse import noise_floor

    sigma = noise_floor(np.abs(residual.analytic[::factor]), axis=0)
    power = (sigma / max(float(np.median(sigma)), 1e-30)) ** 2
    image, counts = coherent_image(residual.analytic, factor, probe, chosen, x, z, tx_angle=tx_angle, t0=t0, f_number=f_number, noise_power=power)
    envelope = np.abs(image)
    level = detection_level(envelope, threshold_db=None, false_alarms=false_alarms, noise_scale=np.sqrt(counts))
    # the coherent sum's noise sigma per pixel: the CFAR level over its k (pixels that no
    # channel reaches are infinite)
    sigma_map = np.broadcast_to(level, envelope.shape) / np.sqrt(2 * np.log(max(int((counts > 0).sum()), 2) / false_alarms))
    floor = 0.0 if threshold_db is None else max(float(envelope.max()), known_peak) * 10 ** (threshold_db / 20)
    level = np.maximum(level, floor)
    level = np.broadcast_to(level, envelope.shape)
    radius = 2
    is_max = (envelope == maximum_filter(envelope, size=2 * radius + 1, mode="constant")) & (envelope >= level) & (envelope > 0)
    is_max[:radius], is_max[-radius:], is_max[:, :radius], is_max[:, -radius:] = False, False, False, False
    zi, xi = np.nonzero(is_max)
    order = np.argsort(-envelope[zi, xi])
    seeds = np.column_stack([x[xi[order]], z[zi[order]]])
    known = np.zeros((0, 2)) if known is None else np.asarray(known, float).reshape(-1, 2)
    if len(known) and len(seeds):
        seeds = seeds[np.min(np.linalg.norm(seeds[:, None] - known[None], axis=2), axis=1) > lam]
    direction = np.array([np.sin(tx_angle), np.cos(tx_angle)])
    half = reference.half_window
    fs = probe.sampling_frequency
    kw = dict(tx_angle=tx_angle, t0=t0, f_number=f_number)

    def pixel(p):
        i = int(np.clip(np.rint((p[1] - z[0]) / (z[1] - z[0])), 0, len(z) - 1))
        j = int(np.clip(np.rint((p[0] - x[0]) / (x[1] - x[0])), 0, len(x) - 1))
        return i, j

    # Re-test after removals: every seed passed the image's CFAR level (k sigma, k for
    # ``false_alarms`` per image over all pixels) on the data minus the echo-pair bubbles. The
    # re-test asks another question: is the seed explained by the bubbles located since (a side
    # lobe of one of them)? Then what is left at the seed is noise with the image's sigma (the
    # removals hardly lower it: the sum's noise at points 0.5-10 lambda from a removed bubble kept
    # 0.90-1.01 of its sigma over 60 noise-only PyMUST frames), and the test is made once per
    # seed, so k counts the seeds, not the pixels: k = sqrt(2 ln(seeds / false_alarms)), the same
    # ``false_alarms`` per image. Against the image level instead, a weak bubble next to a
    # located one failed whenever the removal took part of its echoes (PyMUST L11-5v-like, 18
    # bubbles/frame, 20 dB, 40 frames: 7 of the 30 bubbles that DAS-WA found and G-ULM missed).
    k_seed = np.sqrt(2 * np.log(max(len(seeds), 1) / false_alarms))

    def retest_level(p):
        i, j = pixel(p)
        return max(k_seed * sigma_map[i, j], floor)

    step = np.arange(-4, 5) * lam / 8
    fine = np.stack(np.meshgrid(step, step), axis=-1).reshape(-1, 2)
    found = []
    for seed in seeds:
        if residual.point_sum(probe, chosen, seed, **kw) < retest_level(seed):
            continue  # explained by a bubble located before it
        if found and np.min(np.linalg.norm(np.asarray(found) - seed, axis=1)) <= lam:
            continue
        aperture = np.abs(element_x - seed[0]) <= seed[1] / (2 * f_number)
        if aperture.sum() < min_channels:
            continue
        # the seed to lambda/8 (coherent sum on a local grid), so that the predicted times of
        # flight fix each echo's carrier cycle
        grid = seed + fine
        sums = residual.point_sums(probe, chosen, grid, **kw)
        seed = grid[int(np.argmax(sums))]
        params, ok, delay = gated_fits(residual.real, probe, chosen, seed, reference, tx_angle=tx_angle, t0=t0)
        ok &= aperture
        toa = np.where(ok, t0 + delay / fs, np.nan)
        paths = echo_paths(toa, probe, tx_angle)
        pos, used = _weighted_intersection(seed, paths, params[:, 0] ** 2, element_x, direction, (lam / 2, lam / 4, lam / 8))
        if np.linalg.norm(pos - seed) > lam / 2 or not np.isfinite(pos).all():
            continue
        if not _echoes_agree(ok, used, params, min_channels=min_channels, min_agreement=min_agreement, chance=chance, z_score=z_score, min_participation=min_participation, few_echoes=few_echoes):
            continue
        if residual.point_sum(probe, chosen, pos, **kw) < retest_level(pos):
            continue
        found.append(pos)
        # removed at the times of flight its position predicts, not at each channel's fitted
        # time: where a neighbour's echo overlaps, one component fitted to both lands between
        # them and its removal took most of the neighbour's echo too (PyMUST L11-5v-like, 18
        # bubbles/frame, 20 dB: a bubble 1.8 lambda from a located one kept 25 % of its
        # coherent sum, against 65 % for the removal of the located bubble's own echo)
        residual.subtract((echo_times(pos, probe, tx_angle)[chosen][used] - t0) * fs, np.flatnonzero(used), model)
    return np.asarray(found).reshape(-1, 2)


def gated_fits(
    rf_band: np.ndarray,
    probe: LinearProbe,
    chosen: np.ndarray,
    seed: np.ndarray,
    reference: ReferenceFit,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    iterations: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """MEMGO fit (M, 6) of each selected channel's echo at ``seed``'s predicted time of flight,
    whether its fitted echo lies within a carrier period of the prediction, and its time of arrival
    (samples): the prediction corrected by the fitted carrier phase (within half a period).

    The window (the reference pulse's support) is fitted by one component with the reference's
    shape (s, eta, w fixed; a, mu, phi free), started from the projection on that shape.
    """
    from scipy.special import erf

    fs = probe.sampling_frequency
    n_samples, n_ch = rf_band.shape
    arrival = (echo_times(seed, probe, tx_angle)[chosen] - t0) * fs  # (M,) samples
    mu0 = arrival + reference.params[1]
    half = reference.half_window
    idx = np.rint(mu0).astype(int)[:, None] + np.arange(-half, half + 1)[None, :]
    inside = (idx >= 0) & (idx < n_samples)
    windows = np.where(inside, rf_band[np.clip(idx, 0, n_samples - 1), np.arange(n_ch)[:, None]], 0.0)
    _, _, s_ref, eta_ref, w_ref, _ = reference.params
    u = idx - mu0[:, None]
    env = np.exp(-0.5 * (u / s_ref) ** 2) * (1 + erf(eta_ref * u / (s_ref * np.sqrt(2))))
    ci = (windows * env * np.cos(w_ref * u)).sum(axis=1)
    cq = (windows * env * np.sin(w_ref * u)).sum(axis=1)
    norm = np.maximum((env**2).sum(axis=1) / 2, 1e-30)
    init = np.column_stack([np.hypot(ci, cq) / norm, mu0, np.full(n_ch, s_ref), np.full(n_ch, eta_ref), np.full(n_ch, w_ref), np.arctan2(-cq, ci)])
    low = np.array([-np.inf, -np.inf, s_ref, eta_ref, w_ref, -np.inf])
    high = np.array([np.inf, np.inf, s_ref, eta_ref, w_ref, np.inf])
    params, _ = fit_memgo_batch(windows, idx.astype(float), init, iterations=iterations, bounds=(low, high))
    params = canonical_memgo(params)
    # time of arrival: the prediction corrected by the carrier phase of the fitted echo at the
    # predicted envelope maximum, against the reference pulse's phase at its own maximum
    peak_ref = envelope_peak(reference.params)
    phase_ref = reference.params[4] * (peak_ref - reference.params[1]) + reference.params[5]
    t_peak = arrival + peak_ref
    phase_fit = params[:, 4] * (t_peak - params[:, 1]) + params[:, 5]
    delay = arrival + np.angle(np.exp(1j * (phase_ref - phase_fit))) / params[:, 4]
    coarse = phase_precise_delay(params, reference.params)  # the fitted envelope's own estimate
    ok = np.isfinite(delay) & (np.abs(coarse - arrival) <= 2 * np.pi / w_ref) & (params[:, 0] > 0)
    return params, ok, delay


def subtract_echoes(
    rf: np.ndarray,
    probe: LinearProbe,
    echoes,
    paths: np.ndarray,
    centres: np.ndarray,
    element_x: np.ndarray,
    model: PulseModel,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    tolerance: float,
) -> np.ndarray:
    """Band-passed RF (n_samples, M) of the selected channels minus the echoes that the bubbles at
    ``centres`` explain: in each channel the echo nearest to each centre's predicted path (within
    ``tolerance`` mm), as A pulse(t - toa) with its fitted time of arrival and A by least squares;
    and the largest coherent amplitude of those bubbles (0 when none)."""
    return _subtract_from_band(bandpass(rf, probe), probe, echoes, paths, centres, element_x, model, tx_angle=tx_angle, t0=t0, tolerance=tolerance)


def _subtract_from_band(band, probe, echoes, paths, centres, element_x, model, *, tx_angle, t0, tolerance):
    """:func:`subtract_echoes` on channels already band-passed (``band`` is changed in place)."""
    centres = np.asarray(centres, float).reshape(-1, 2)
    if len(centres) == 0 or paths.size == 0:
        return band, 0.0
    direction = np.array([np.sin(tx_angle), np.cos(tx_angle)])
    predicted = (centres @ direction)[:, None] + np.hypot(centres[:, 0:1] - element_x[None, :], centres[:, 1:2])  # (K, M)
    diff = np.abs(np.where(np.isfinite(paths), paths, np.inf)[None, :, :] - predicted[:, :, None])  # (K, M, E)
    nearest = np.argmin(diff, axis=2)
    hit = np.take_along_axis(diff, nearest[..., None], axis=2)[..., 0] <= tolerance
    k_idx, ch = np.nonzero(hit)
    which = np.unique(np.column_stack([ch, nearest[k_idx, ch]]), axis=0)
    if len(which) == 0:
        return band, 0.0
    residual = _Residual.of(band, np.zeros((band.shape[0], band.shape[1]), np.complex64), 1)
    # each echo is removed at the time of flight its bubble predicts (the nearest bubble claiming
    # it), not at its own fitted time, which a neighbour's overlapping echo pulls (see
    # :func:`coherent_bubbles`)
    owner = np.full(diff.shape[1:], -1)
    best = np.full(diff.shape[1:], np.inf)
    for k, c in zip(k_idx, ch):
        e = nearest[k, c]
        if diff[k, c, e] < best[c, e]:
            best[c, e], owner[c, e] = diff[k, c, e], k
    times = np.array([echo_times(c, probe, tx_angle) for c in centres])  # (K, n_elements)
    element = np.searchsorted(probe.element_x, element_x)  # the channels' element indices
    toa_samples = (times[owner[which[:, 0], which[:, 1]], element[which[:, 0]]] - t0) * probe.sampling_frequency
    amp = residual.subtract(toa_samples, which[:, 0], model)
    # each bubble's coherent amplitude (the sum of its echoes' amplitudes inside the f-number 1
    # aperture): the relative detection floor refers to the strongest bubble, removed or not
    amp_of = dict(zip(map(tuple, which.tolist()), amp))
    strength = np.zeros(len(centres))
    for k, c in zip(k_idx, ch):
        if abs(element_x[c] - centres[k, 0]) <= centres[k, 1] / 2:
            strength[k] += amp_of[(c, nearest[k, c])]
    return residual.real, float(strength.max())
