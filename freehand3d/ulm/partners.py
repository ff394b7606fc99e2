"""Close partners for G-ULM with many channels: a bubble 0.4-2.5 wavelengths beside a located one.

Two bubbles about a wavelength apart at one depth send echoes that coincide within a fraction of a
carrier period in most channels. The echo pairs (stages 1-4 of :mod:`freehand3d.ulm.pipeline`) then
report one bubble, its fit pulled toward the partner (or one detection between the two), and the
coherent seeds (stage 5) skip seeds within a wavelength of a located bubble; the located bubble's
echo removal, with a free amplitude per channel, also takes the partner's echo where the two
overlap. :func:`find_partners` (stage 6, 64 or more selected channels) is seed-driven like stage 5:

1. **Ring search.** Every located bubble's echoes are removed from the band-passed channels (at the
   times of flight its position predicts, amplitude by least squares per channel,
   :class:`.coherent.PulseModel`). Around each located bubble c the coherent sum of that residual is
   searched on a lambda/4 grid 0.5-2.5 wavelengths from c (points more than a wavelength from every
   other located bubble); its maximum q is a candidate if it passes the noise level (k sigmas of the
   sum's noise, k for ``false_alarms`` per image over the located bubbles' ring cells) and
   ``relative`` (0.3) of c's own coherent amplitude. What a lone bubble's removal leaves (pulse
   model and position errors) grows with its echo energy and stays mostly under 0.3 of it.
2. **Joint location by alternation** (``iterations``): c is located on the data minus every other
   bubble and minus q's echoes, then q on the data minus every other bubble and minus c's echoes,
   each exactly as stage 5 locates a seed (lambda/8 grid of the coherent sum, gated MEMGO fits at
   the predicted times of flight, weighted least-squares ellipse intersection, agreement and
   participation tests). Each removal fits the two bubbles' per-channel amplitudes jointly (2 x 2
   least squares) and subtracts only the other's, so it no longer takes the located one's echo.
3. **Acceptance**, all of: both verified in the last alternation; both coherent sums pass the
   per-test noise level (and the partner's at least 0.1 of the other's); the two at least
   ``min_separation`` (0.35) wavelengths apart, one within a wavelength of c, the partner more
   than a wavelength from every other located bubble; and the two explain clearly more energy
   than one: with per-channel amplitudes fitted by least squares in each aperture channel's window
   (noise-normalised), E2 (the two jointly) - E1 (the best single point within lambda/2 of c) >=
   M + ``noise_gain`` sqrt(2 M) + ``mismatch`` E1, M the aperture's channels (the pair's M extra
   amplitudes gain chi-square(M) on noise; ``mismatch`` bounds what a second point gains on one
   bubble's echo through the pulse model's own error, measured on lone bubbles of PyMUST frames of
   both probes, docs/ulm.md).

Nothing is tested where no bubble was located, so noise-only frames stay without detections.
"""

from __future__ import annotations

import numpy as np

from freehand3d.ulm.coherent import PulseModel, _Residual, _weighted_intersection, _echoes_agree, gated_fits
from freehand3d.ulm.probe import LinearProbe, echo_times

__all__ = ["find_partners"]

DEBUG = None  # a list to receive one record per candidate (diagnostics)


def _ring(inner: float, outer: float, step: float) -> np.ndarray:
    n = int(np.ceil(outer / step))
    g = np.arange(-n, n + 1) * step
    pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    r = np.linalg.norm(pts, axis=1)
    return pts[(r >= inner - 1e-12) & (r <= outer + 1e-12)]


class _Frame:
    """Band-passed selected channels, the pulse model and the geometry one frame's searches share."""

    def __init__(self, rf_band, probe: LinearProbe, chosen, reference, model: PulseModel, *, tx_angle, t0, f_number, factor=4):
        from freehand3d.ulm.pulse import noise_floor

        self.band = np.asarray(rf_band, float)
        self.probe, self.chosen, self.reference, self.model = probe, chosen, reference, model
        self.tx_angle, self.t0, self.f_number, self.factor = tx_angle, t0, f_number, factor
        self.element_x = probe.element_x[chosen]
        self.fs = probe.sampling_frequency
        self.direction = np.array([np.sin(tx_angle), np.cos(tx_angle)])
        self.full = _Residual(self.band, factor)  # nothing removed
        self.sigma = noise_floor(np.abs(self.full.analytic[::factor]), axis=0)  # (M,) Rayleigh sigma per channel
        self.kw = dict(tx_angle=tx_angle, t0=t0, f_number=f_number)

    def aperture(self, p) -> np.ndarray:
        return np.abs(self.element_x - p[0]) <= p[1] / (2 * self.f_number)

    def residual(self, positions) -> _Residual:
        """The band-passed data minus the echoes of the bubbles at ``positions`` (each in its
        f-number aperture, at its predicted times of flight, in the given order)."""
        res = self.full.copy()
        for p in positions:
            self.subtract(res, p)
        return res

    def subtract(self, res: _Residual, p) -> None:
        cols = np.flatnonzero(self.aperture(p))
        if len(cols):
            res.subtract((echo_times(np.asarray(p, float), self.probe, self.tx_angle)[self.chosen][cols] - self.t0) * self.fs, cols, self.model)

    def windows(self, res: _Residual, pts: np.ndarray, cols: np.ndarray):
        """One window per channel of ``cols`` that holds the echoes of all ``pts`` (P, 2): their times
        of arrival (P, C) in samples, the window's sample indices (C, W) and which lie inside the
        record, ``res``'s real data there (C, W), and each point's pulse there (P, C, W)."""
        n, half = res.real.shape[0], self.model.half
        toa = (echo_times(pts, self.probe, self.tx_angle)[:, self.chosen][:, cols] - self.t0) * self.fs
        lo = np.floor(toa.min(axis=0)).astype(int) - half
        span = int(np.ceil((toa.max(axis=0) - toa.min(axis=0)).max())) + 2 * half + 2
        idx = lo[:, None] + np.arange(span)[None, :]
        inside = (idx >= 0) & (idx < n)
        y = np.where(inside, res.real[np.clip(idx, 0, n - 1), cols[:, None]], 0.0)
        shapes = np.where(inside[None], self.model((idx[None] - toa[:, :, None]) / self.fs).real, 0.0)
        return toa, idx, inside, y, shapes

    def energies(self, res: _Residual, singles, pair, cols) -> tuple[np.ndarray, float]:
        """Energy of ``res`` (real, native rate) that per-channel echo fits explain in ``cols``
        (noise-normalised: divided by each channel's noise variance): one bubble at each of
        ``singles`` (N, 2) -> (N,), and the two of ``pair`` jointly (2 x 2 least squares per channel)."""
        pts = np.vstack([np.asarray(singles, float).reshape(-1, 2), np.asarray(pair, float).reshape(2, 2)])
        *_, y, shapes = self.windows(res, pts, cols)
        w = 1.0 / np.maximum(self.sigma[cols], 1e-30) ** 2
        b = (shapes * y[None]).sum(axis=2)  # (P, C)
        ss = (shapes * shapes).sum(axis=2)
        single = ((b[:-2] ** 2 / np.maximum(ss[:-2], 1e-30)) * w).sum(axis=1)
        b1, b2 = b[-2], b[-1]
        g11, g22 = ss[-2], ss[-1]
        g12 = (shapes[-2] * shapes[-1]).sum(axis=1)
        det = g11 * g22 - g12 * g12
        det = np.where(det > 1e-6 * g11 * g22, det, np.inf)
        two = (g22 * b1 * b1 - 2 * g12 * b1 * b2 + g11 * b2 * b2) / det
        two = np.where(np.isfinite(det), two, np.maximum(b1 * b1 / np.maximum(g11, 1e-30), b2 * b2 / np.maximum(g22, 1e-30)))
        return single, float((two * w).sum())

    def subtract_partner(self, res: _Residual, keep, remove) -> None:
        """Remove the echoes of the bubble at ``remove`` from ``res``, with per-channel amplitudes
        fitted jointly with those of the bubble at ``keep`` (2 x 2 least squares per channel), so
        that where the two echoes overlap the removal does not take the kept bubble's echo too."""
        cols = np.flatnonzero(self.aperture(remove))
        if len(cols) == 0:
            return
        n = res.real.shape[0]
        toa, idx, inside, y, shapes = self.windows(res, np.array([keep, remove], float), cols)
        b = (shapes * y[None]).sum(axis=2)
        g11, g22 = (shapes * shapes).sum(axis=2)
        g12 = (shapes[0] * shapes[1]).sum(axis=1)
        det = g11 * g22 - g12 * g12
        ok = det > 1e-3 * g11 * g22
        amp = np.where(ok, (g11 * b[1] - g12 * b[0]) / np.where(ok, det, 1.0), 0.0)  # the removed one's amplitude
        # nearly coincident echoes (det ~ 0): split the projection evenly
        amp = np.where(ok, amp, 0.5 * b[1] / np.maximum(g22, 1e-30))
        sh = shapes[1]
        np.add.at(res.real, (np.clip(idx, 0, n - 1), np.broadcast_to(cols[:, None], idx.shape)), np.where(inside, -amp[:, None] * sh, 0.0))
        res.subtract_analytic(toa[1], cols, amp, self.model)

    def noise(self, p) -> float:
        """Rayleigh sigma of the coherent sum's noise at ``p`` (channels' powers added)."""
        return float(np.sqrt((self.sigma[self.aperture(p)] ** 2).sum()))

    def point_sum(self, res: _Residual, p) -> float:
        return float(self.sums(res, np.asarray(p, float).reshape(1, 2))[0])

    def sums(self, res: _Residual, pts: np.ndarray) -> np.ndarray:
        """|coherent sum| of ``res`` at each of ``pts`` (N, 2) (:meth:`_Residual.point_sums`)."""
        return res.point_sums(self.probe, self.chosen, pts, **self.kw)

    def locate(self, res: _Residual, seed, *, min_channels, min_agreement=0.6, chance=0.25, z_score=2.0):
        """Stage 5's location of one seed on ``res``: (position, verified?, coherent sum there)."""
        lam = self.probe.wavelength
        step = np.arange(-4, 5) * lam / 8
        grid = np.asarray(seed, float) + np.stack(np.meshgrid(step, step), axis=-1).reshape(-1, 2)
        seed = grid[int(np.argmax(self.sums(res, grid)))]
        aperture = self.aperture(seed)
        if aperture.sum() < min_channels:
            return seed, False, 0.0
        params, ok, delay = gated_fits(res.real, self.probe, self.chosen, seed, self.reference, tx_angle=self.tx_angle, t0=self.t0)
        ok &= aperture
        from freehand3d.ulm.pipeline import echo_paths

        paths = echo_paths(np.where(ok, self.t0 + delay / self.fs, np.nan), self.probe, self.tx_angle)
        pos, used = _weighted_intersection(seed, paths, params[:, 0] ** 2, self.element_x, self.direction, (lam / 2, lam / 4, lam / 8))
        if not (np.isfinite(pos).all() and np.linalg.norm(pos - seed) <= lam / 2):
            return seed, False, self.point_sum(res, seed)  # the next alternation starts from the seed
        good = _echoes_agree(ok, used, params, min_channels=min_channels, min_agreement=min_agreement, chance=chance, z_score=z_score)
        return pos, good, self.point_sum(res, pos)


def find_partners(
    rf_band: np.ndarray,
    probe: LinearProbe,
    chosen: np.ndarray,
    centres: np.ndarray,
    reference,
    model: PulseModel,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    min_channels: int = 8,
    false_alarms: float = 1e-4,
    relative: float = 0.3,
    noise_gain: float = 6.0,
    mismatch: float = 0.15,
    ring: tuple[float, float] = (0.5, 2.5),
    iterations: int = 3,
    min_separation: float = 0.35,
    f_number: float = 1.0,
) -> np.ndarray:
    """Located bubbles (K, 2) with the partners found beside them appended (and each such bubble
    moved to its joint position); see the module docstring. ``rf_band``: the band-passed selected
    channels (n_samples, M), nothing removed; ``reference`` / ``model``: the acquisition's pulse
    (:class:`freehand3d.ulm.echoes.ReferenceFit`, :class:`freehand3d.ulm.coherent.PulseModel`);
    ``min_channels`` / ``false_alarms``: stage 5's (``seed_min_channels``, ``seed_false_alarms``)."""
    centres = np.asarray(centres, float).reshape(-1, 2)
    if len(centres) == 0:
        return centres
    lam = probe.wavelength
    frame = _Frame(rf_band, probe, chosen, reference, model, tx_angle=tx_angle, t0=t0, f_number=f_number)
    ring_pts = _ring(ring[0] * lam, ring[1] * lam, lam / 4)
    # one test per located bubble over its ring's resolution cells (about lambda/2 apart)
    cells = max(1.0, np.pi * (ring[1] ** 2 - ring[0] ** 2) / 0.25)
    k = np.sqrt(2 * np.log(len(centres) * cells / false_alarms))
    k_re = np.sqrt(2 * np.log(2 * len(centres) / false_alarms))
    own_all = frame.sums(frame.full, centres)  # each bubble's coherent amplitude
    rest = frame.residual(centres)  # every located bubble removed
    step = np.arange(-4, 5) * lam / 8
    local = np.stack(np.meshgrid(step, step), axis=-1).reshape(-1, 2)
    out = [c for c in centres]
    for i, c in enumerate(centres):
        others = np.delete(np.asarray(out), i, axis=0)
        cand = c + ring_pts
        cand = cand[cand[:, 1] > 0]
        if len(others):
            cand = cand[np.min(np.linalg.norm(cand[:, None] - others[None], axis=2), axis=1) > lam]
        if len(cand) == 0:
            continue
        sums = frame.sums(rest, cand)
        b = int(np.argmax(sums))
        q = cand[b]
        noise = frame.noise(q)
        own = float(own_all[i])
        rec = dict(c=c.copy(), q=q.copy(), s=float(sums[b]), own=own, noise=noise, k=k)
        if sums[b] < max(k * noise, relative * own):
            if DEBUG is not None:
                DEBUG.append(dict(rec, stage="ring"))
            continue
        base = frame.residual(others)
        p1, p2 = c.copy(), q.copy()
        ok1 = ok2 = False
        s1 = s2 = 0.0
        for _ in range(iterations):
            w = base.copy()
            frame.subtract_partner(w, p1, p2)
            p1, ok1, s1 = frame.locate(w, p1, min_channels=min_channels)
            w = base.copy()
            frame.subtract_partner(w, p2, p1)
            p2, ok2, s2 = frame.locate(w, p2, min_channels=min_channels)
        sep = float(np.linalg.norm(p1 - p2))
        cols = np.flatnonzero(frame.aperture(c))
        e_single, e_pair = frame.energies(base, c + local, np.array([p1, p2]), cols)
        e1 = float(e_single.max())
        gain = e_pair - e1
        accept = ok1 and ok2 and sep >= min_separation * lam and s1 >= k_re * frame.noise(p1) and s2 >= max(k_re * frame.noise(p2), 0.1 * s1)
        accept = accept and gain >= len(cols) + noise_gain * np.sqrt(2 * len(cols)) + mismatch * e1
        # one of the two stays on the located bubble's neighbourhood, the other on the ring
        accept = accept and min(np.linalg.norm(p1 - c), np.linalg.norm(p2 - c)) <= lam and max(np.linalg.norm(p1 - c), np.linalg.norm(p2 - c)) <= (ring[1] + 0.5) * lam
        if accept and len(others):
            # the partner more than a wavelength from every other located bubble (as its ring
            # candidates and stage 5's seeds): what two close located bubbles' removals leave
            # between them is not a third one
            gaps = np.linalg.norm(others[:, None] - np.array([p1, p2])[None], axis=2).min(axis=0)
            accept = gaps[0] > lam / 2 and gaps[1] > lam
        if DEBUG is not None:
            DEBUG.append(dict(rec, stage="pair", p1=p1, p2=p2, ok1=ok1, ok2=ok2, s1=s1, s2=s2, sep=sep, accept=accept, e1=e1, gain=gain, m=len(cols)))
        if accept:
            out[i] = p1
            out.append(p2)
    return np.asarray(out).reshape(-1, 2)
