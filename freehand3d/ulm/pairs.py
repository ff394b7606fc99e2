"""Close pairs for G-ULM: split one located bubble into two when the data hold a second one beside it.

Two bubbles 0.4-2 wavelengths apart at about one depth send echoes that coincide within a fraction of
a carrier period in most channels, so one fitted echo per channel (stages 1-4 of
:mod:`freehand3d.ulm.pipeline`) and the coherent seeds (stage 5, which skip seeds within a wavelength
of a located bubble) report one bubble between them: a false positive and two misses. What tells the
two apart is how the two echoes interfere across the aperture: their path difference grows with the
angle under which an element sees them (about dx sin(theta) for two points dx apart laterally), so
their sum changes shape and phase from channel to channel in a way no single point's echo does.

:func:`split_pairs` (stage 6) fits, around every located bubble, one point and two points to the
matched-filtered channels (the band-passed channel data correlated with the two-way pulse) and keeps
two when they explain clearly more (a generalised likelihood-ratio test):

* one point at q: channel m holds g_m p(t - tau_m(q)), g_m free per channel (directivity, spreading);
  explained energy E1 = sum_m MF_m(tau_m(q))^2 / s_m^2 (s_m: the noise sigma of channel m's matched
  filter output);
* two points q1, q2 with one amplitude ratio rho for all channels: g_m (p(t - tau_m(q1)) + rho
  p(t - tau_m(q2))); E2 = sum_m (MF_m(tau1) + rho MF_m(tau2))^2 / (s_m^2 (1 + rho^2 + 2 rho
  r(tau1 - tau2))), r the pulse's normalised autocorrelation. The per-channel gain absorbs any smooth
  or rough amplitude profile, the common rho does not absorb the interference between the two;
* the other located bubbles' echoes are removed first (all bubbles' per-channel amplitudes by joint
  least squares in the matched-filter domain, each bubble tested against the data minus the others);
* search: q1 the best single point within lambda/2 of the bubble (lambda/16 grid); q2 on a lambda/4
  grid 0.3-2.5 wavelengths from it, rho in 0.25..1; then three alternations on lambda/16 grids;
* accept when E2 - E1 >= ``noise_gain`` + ``mismatch`` x E1: the noise term bounds what a second
  point gains on noise (measured, docs/ulm.md), the relative term what it gains on one bubble's
  echo through the pulse model's own error (measured on noiseless frames), and the two points lie
  at least ``min_separation`` wavelengths apart.
Nothing is added where no bubble was located, so noise-only frames stay as they were.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

from freehand3d.ulm.probe import LinearProbe, echo_times

__all__ = ["split_pairs", "pair_statistics"]

DEBUG = None


def _disc(radius_out: float, step: float, radius_in: float = 0.0) -> np.ndarray:
    n = int(np.ceil(radius_out / step))
    g = np.arange(-n, n + 1) * step
    pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    r = np.linalg.norm(pts, axis=1)
    return pts[(r <= radius_out + 1e-12) & (r >= radius_in - 1e-12)]


class _Matched:
    """Matched-filtered channels up-sampled ``up`` x, the pulse's autocorrelation, noise sigmas."""

    def __init__(self, rf_band: np.ndarray, probe: LinearProbe, chosen: np.ndarray, model, *, tx_angle: float, t0: float, up: int = 4):
        fs = probe.sampling_frequency
        n, m = rf_band.shape
        half = int(model.half) + 4
        k = np.arange(-half, half + 1)
        p = np.real(model(k / fs))
        h = np.zeros(n)
        h[k % n] = p
        spec = sp_fft.rfft(np.asarray(rf_band, float), axis=0) * np.conj(sp_fft.rfft(h))[:, None]
        self.mf = sp_fft.irfft(spec, n * up, axis=0) * up  # MF(t) = sum_k y(t + k) p_k
        self.up, self.rate = up, fs * up
        # autocorrelation of the sampled pulse at lags j / (fs up), |lag| <= 2 half samples (once per
        # pulse model)
        key = (half, up)
        cached = getattr(model, "_pair_autocorrelation", None)
        if cached is None or cached[0] != key:
            lag = np.arange(-2 * half * up, 2 * half * up + 1) / up
            r = np.real(model((k[None, :] - lag[:, None]) / fs)) @ p
            cached = (key, r / float(np.dot(p, p)), float(np.dot(p, p)))
            model._pair_autocorrelation = cached
        _, self.r, self.r0 = cached
        self.r_lag0 = 2 * half * up
        self.sigma = np.median(np.abs(self.mf[:: 2 * up]), axis=0) / 0.6745  # (M,) noise sigma of MF output
        self.probe, self.chosen, self.tx_angle, self.t0 = probe, chosen, tx_angle, t0
        self.ex = probe.element_x[chosen]

    def times(self, q: np.ndarray) -> np.ndarray:
        return (echo_times(q, self.probe, self.tx_angle)[..., self.chosen] - self.t0) * self.rate

    def at(self, t: np.ndarray, cols: np.ndarray) -> np.ndarray:
        n = self.mf.shape[0]
        i = np.rint(t).astype(np.int64)
        ok = (i >= 0) & (i < n)
        return np.where(ok, self.mf[np.clip(i, 0, n - 1), cols], 0.0)

    def corr(self, dt: np.ndarray) -> np.ndarray:
        """Normalised autocorrelation at lags dt (up-sampled samples)."""
        i = np.rint(dt).astype(np.int64) + self.r_lag0
        ok = (i >= 0) & (i < len(self.r))
        return np.where(ok, self.r[np.clip(i, 0, len(self.r) - 1)], 0.0)


def split_pairs(
    rf_band: np.ndarray,
    probe: LinearProbe,
    chosen: np.ndarray,
    centres: np.ndarray,
    model,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    noise_gain: float = 250.0,
    mismatch: float = 0.15,
    alone: float = 2.5,
    stay: float = 0.6,
    min_separation: float = 0.3,
    ring: tuple[float, float] = (0.3, 2.5),
    rhos: tuple[float, ...] = (0.3, 0.55, 1.0),
    max_angle_deg: float = 60.0,
    iterations: int = 3,
) -> np.ndarray:
    """Located bubbles (K, 2) with each one that hides a close second bubble replaced by the two
    (module docstring). ``rf_band``: band-passed selected channels (n_samples, M); ``model``: the
    pulse (:class:`freehand3d.ulm.coherent.PulseModel`)."""
    centres = np.asarray(centres, float).reshape(-1, 2)
    if len(centres) == 0:
        return centres
    lam = probe.wavelength
    mf = _Matched(rf_band, probe, chosen, model, tx_angle=tx_angle, t0=t0)
    m_all = len(chosen)
    cols_all = np.arange(m_all)
    # every bubble's per-channel amplitude, jointly by least squares in the matched-filter domain
    t_c = mf.times(centres)  # (K, M)
    mvals = mf.at(t_c, cols_all[None, :])  # (K, M)
    gram = mf.corr(t_c[:, None, :] - t_c[None, :, :])  # (K, K, M)
    gram = np.moveaxis(gram, 2, 0) + 1e-2 * np.eye(len(centres))[None]
    amps = np.linalg.solve(gram, mvals.T[:, :, None])[..., 0].T  # (K, M) in units of r0
    local = _disc(lam / 2, lam / 16)
    ring_pts = _disc(ring[1] * lam, lam / 4, ring[0] * lam)
    rho = np.asarray(rhos, float)
    out = []
    for c_i, c in enumerate(centres):
        cols = np.flatnonzero(np.abs(mf.ex - c[0]) <= c[1] * np.tan(np.radians(max_angle_deg)))
        if len(cols) < 8:
            out.append(c)
            continue
        near = [j for j in range(len(centres)) if j != c_i and np.linalg.norm(centres[j] - c) < 8 * lam]
        w = 1.0 / np.maximum(mf.sigma[cols], 1e-30) ** 2

        def mfc(q):  # matched filter of the data minus the other bubbles, at q's times (N, C)
            t = mf.times(np.asarray(q).reshape(-1, 2))[:, cols]
            v = mf.at(t, cols[None, :])
            for j in near:
                v = v - amps[j, cols] * mf.corr(t - t_c[j, cols])
            return v, t

        v1, t1 = mfc(c + local)
        e1 = (v1**2 * w).sum(axis=1) / mf.r0
        b = int(np.argmax(e1))
        q1, e_single = c + local[b], float(e1[b])
        v1, t1 = v1[b : b + 1], t1[b : b + 1]

        def pair_energy(va, ta, vb, tb):  # (Na or 1, C) x (Nb, C) -> (N, n_rho)
            num = (va[:, None, :] + rho[None, :, None] * vb[:, None, :]) ** 2
            den = 1 + rho[None, :, None] ** 2 + 2 * rho[None, :, None] * mf.corr(ta - tb)[:, None, :]
            return (num / np.maximum(den, 1e-3) * w).sum(axis=2) / mf.r0

        # coarse: the second point on a ring around the best single one (a merged pair's fitted
        # point lies nearer the stronger bubble, which the alternation below then moves onto)
        v2, t2 = mfc(q1 + ring_pts)
        e2 = pair_energy(v1, t1, v2, t2)
        j, r_i = np.unravel_index(int(np.argmax(e2)), e2.shape)
        q2, rho_best, e_pair = q1 + ring_pts[j], rho[r_i], float(e2[j, r_i])
        coarse = e_pair - e_single
        if coarse >= 0.5 * (noise_gain + mismatch * e_single):
            fine_rho = np.clip(rho_best * np.array([0.75, 0.87, 1.0, 1.15, 1.3]), 0.2, 1.0)
            for _ in range(iterations):
                rho = fine_rho
                va, ta = mfc(q2)
                vb, tb = mfc(q1 + local)
                # q1 free, q2 fixed: E(q1, q2) with the roles as in pair_energy(q1 -> a, q2 -> b)
                num = (vb[:, None, :] + rho[None, :, None] * va[:, None, :]) ** 2
                den = 1 + rho[None, :, None] ** 2 + 2 * rho[None, :, None] * mf.corr(tb - ta)[:, None, :]
                e = (num / np.maximum(den, 1e-3) * w).sum(axis=2) / mf.r0
                j, r_i = np.unravel_index(int(np.argmax(e)), e.shape)
                q1 = q1 + local[j]
                va, ta = mfc(q1)
                cand = q2 + local
                vb, tb = mfc(cand)
                e = pair_energy(va, ta, vb, tb)
                e[np.linalg.norm(cand - q1, axis=1) < min_separation * lam] = -np.inf
                j, r_i = np.unravel_index(int(np.argmax(e)), e.shape)
                q2, rho_best, e_pair = cand[j], rho[r_i], float(e[j, r_i])
                fine_rho = np.clip(rho_best * np.array([0.75, 0.87, 1.0, 1.15, 1.3]), 0.2, 1.0)
            rho = np.asarray(rhos, float)
        gain = e_pair - e_single
        # one of the two stays on the located bubble (within ``stay`` wavelengths): a second point far
        # from both is an unexplained neighbour's echo, not this bubble's partner
        stays = min(np.linalg.norm(q1 - c), np.linalg.norm(q2 - c)) <= stay * lam
        # only a bubble with no other located one within ``alone`` wavelengths: beside one, what the
        # other's imperfect removal leaves (its position error, amplitude by least squares in
        # overlapping channels) made split ghosts (analytic simulator, 30 dB, pairs 1-1.5 lambda)
        others = np.delete(centres, c_i, axis=0)
        if len(others):
            stays &= float(np.min(np.linalg.norm(others - c, axis=1))) > alone * lam
        accept = gain >= noise_gain + mismatch * e_single and np.linalg.norm(q1 - q2) >= min_separation * lam and stays
        if DEBUG is not None:
            DEBUG.append(dict(c=c, q1=q1, q2=q2, rho=rho_best, e1=e_single, gain=gain, rel=gain / max(e_single, 1e-9), coarse=coarse, accept=accept))
        if accept:
            out.extend([q1, q2])
        else:
            out.append(c)
    return np.asarray(out).reshape(-1, 2)
