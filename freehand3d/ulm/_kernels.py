"""Compiled CPU kernels (numba) for G-ULM's hot loops; each gives exactly (bit for bit) what the
numpy code it replaces gave, in the same order of floating-point operations:

* :func:`sliding_row_median` — the noise floor of :func:`freehand3d.ulm.baseline.detection_level`;
* :func:`coherent_sum` — the delay-and-sum of :func:`freehand3d.ulm.coherent.coherent_image`;
* :func:`memgo_value_and_jacobian` — the arithmetic of the MEMGO Jacobian in the LM fits;
* :func:`keep_apart` — the per-channel duplicate-echo loop of :func:`freehand3d.ulm.echoes.find_echoes`;
* :func:`accept_steps` — the LM step acceptance with its Jacobian rows.

Compiled on first use (cached on disk next to this file, or in numba's user cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _sliding_median(values, offsets, rows, out):
    nz = len(offsets) - 1
    buf = np.empty(len(values))
    tmp = np.empty(len(values))
    n = 0
    for i in range(-rows, nz):
        # the window of row i is rows i-rows .. i+rows: row i+rows enters, row i-rows-1 leaves
        enter, leave = i + rows, i - rows - 1
        a0, a1 = (offsets[enter], offsets[enter + 1]) if enter < nz else (0, 0)
        r0, r1 = (offsets[leave], offsets[leave + 1]) if leave >= 0 else (0, 0)
        # one merge pass: skip the leaving values (sorted, all present), merge the entering ones
        m = 0
        a, r = a0, r0
        for k in range(n):
            b = buf[k]
            if r < r1 and b == values[r]:
                r += 1
                continue
            while a < a1 and values[a] <= b:
                tmp[m] = values[a]
                m += 1
                a += 1
            tmp[m] = b
            m += 1
        while a < a1:
            tmp[m] = values[a]
            m += 1
            a += 1
        buf, tmp = tmp, buf
        n = m
        if i >= 0 and n > 0:
            h = n // 2
            out[i] = buf[h] if n % 2 else (buf[h - 1] + buf[h]) / 2


def sliding_row_median(values: np.ndarray, rows: int) -> np.ndarray:
    """Median of the finite values of rows i-``rows``..i+``rows`` of ``values`` (nz, nx), for every
    row i (NaN where a window holds none); bit for bit ``np.median`` of each window.

    One sorted buffer slides down the image (each step one merge pass drops the row leaving the
    window and inserts the row entering it), instead of a fresh median of 2 rows + 1 rows for each
    row: on the analytic bench's 128-channel coherent image (244 x 255 pixels, +-30 rows) the 244
    ``np.median`` calls per frame took 0.085 CPU s, this 0.008 (A/B in one process, AMD EPYC, load ~8).
    """
    values = np.asarray(values, float)
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    sorted_rows = np.sort(np.where(finite, values, np.inf), axis=1)  # each row's finite values first
    flat = sorted_rows[np.arange(values.shape[1])[None, :] < counts[:, None]]
    out = np.full(len(values), np.nan)
    _sliding_median(np.ascontiguousarray(flat), offsets, int(rows), out)
    return out


@njit(cache=True, nogil=True)
def _coherent_sum(padded, tx_samples, receive, cols, reach, weights, image, counts):
    nz, nx = image.shape
    n_up = padded.shape[1]
    for i in range(nz):
        for m in range(len(cols)):  # channels in order: each pixel's sum adds them in numpy's order
            c = cols[m]
            lo, hi = max(0, c - reach), min(nx, c + reach + 1)
            w = weights[m]
            for j in range(lo, hi):
                t = np.float32(tx_samples[i, j] + receive[i, j - c + reach])
                idx = np.rint(t)
                if idx >= 0 and idx < n_up:
                    image[i, j] += padded[m, int(idx)]
                    counts[i, j] += w


def coherent_sum(analytic_up, tx_samples, receive, cols, reach, weights, shape):
    """(image complex64, counts float32) of :func:`freehand3d.ulm.coherent.coherent_image`: channel
    m (column ``analytic_up[:, m]``, element on pixel column ``cols[m]``) adds its nearest
    up-sampled sample at tx_samples + receive[depth, column offset + reach] to every pixel within
    ``reach`` columns, and ``weights[m]`` to the pixel's count where that sample exists."""
    image = np.zeros(shape, np.complex64)
    counts = np.zeros(shape, np.float32)
    padded = np.ascontiguousarray(np.asarray(analytic_up, np.complex64).T)  # (M, n_up): one channel's samples contiguous
    _coherent_sum(padded, np.ascontiguousarray(tx_samples, np.float32), np.ascontiguousarray(receive, np.float32), np.asarray(cols, np.int64), int(reach), np.asarray(weights, np.float32), image, counts)
    return image, counts


@njit(cache=True, nogil=True)
def _jacobian_row(jac, e, k, ae, uu, g, zz, sk, dsk, cc, sn, se, s2e, s3e, sq, etae, we):
    """One sample's row of the MEMGO Jacobian (a, mu, s, eta, w, phi) from the model's factors."""
    base = g * sk
    d_gauss_du = -g * uu / s2e
    d_skew_du = dsk * etae / sq
    d_cos_du = -we * sn
    df_du = ae * (d_gauss_du * sk * cc + g * d_skew_du * cc + base * d_cos_du)
    acg = ae * cc * g
    jac[e, k, 0] = base * cc
    jac[e, k, 1] = -df_du
    jac[e, k, 2] = acg * (uu * uu / s3e * sk - dsk * zz / se)
    jac[e, k, 3] = acg * dsk * uu / sq
    j5 = -ae * base * sn
    jac[e, k, 5] = j5
    jac[e, k, 4] = j5 * uu


@njit(cache=True, nogil=True)
def _memgo_jacobian(u, gauss, z, skew, dskew_dz, cos_c, sin_c, a, s, s2, s3, s_sqrt2, eta, w, f, jac):
    n, m = u.shape
    for e in range(n):
        ae, se, s2e, s3e, sq, etae, we = a[e], s[e], s2[e], s3[e], s_sqrt2[e], eta[e], w[e]
        for k in range(m):
            uu, g, zz, sk, dsk, cc, sn = u[e, k], gauss[e, k], z[e, k], skew[e, k], dskew_dz[e, k], cos_c[e, k], sin_c[e, k]
            f[e, k] = ae * (g * sk) * cc
            _jacobian_row(jac, e, k, ae, uu, g, zz, sk, dsk, cc, sn, se, s2e, s3e, sq, etae, we)


def memgo_value_and_jacobian(u, gauss, z, skew, dskew_dz, cos_c, sin_c, a, s, eta, w):
    """The arithmetic of :func:`freehand3d.ulm.echoes._memgo_value_and_jacobian` after its
    transcendental functions (all (E, T); parameters (E,)), in one pass, in numpy's order of
    operations (the per-echo powers of s computed by numpy as there): f (E, T), J (E, T, 6)."""
    f = np.empty(u.shape)
    jac = np.empty(u.shape + (6,))
    _memgo_jacobian(u, gauss, z, skew, dskew_dz, cos_c, sin_c, a, s, s**2, s**3, s * np.sqrt(2.0), eta, w, f, jac)
    return f, jac


@njit(cache=True, nogil=True)
def keep_apart(channel, peak, gap):
    """Echoes sorted by channel (then by preference): keep each unless the last one kept in its
    channel lies less than ``gap`` from it (the loop of ``find_echoes``' ``dedupe``)."""
    n = len(channel)
    keep = np.ones(n, np.bool_)
    have = False
    last_c = -1
    last_pk = 0.0
    for i in range(n):
        if channel[i] != last_c:
            last_c = channel[i]
            have = False
        if have and abs(peak[i] - last_pk) < gap:
            keep[i] = False
        else:
            last_pk = peak[i]
            have = True
    return keep


_TWO_OVER_SQRT_PI = 2.0 / np.sqrt(np.pi)


@njit(cache=True, nogil=True)
def _accept_steps(better, t, trial, res_trial, cost_trial, gauss, z, skew, cos_c, s3, params, res, cost, jac):
    n, m = t.shape
    for e in range(n):
        if not better[e]:
            continue
        for p in range(6):
            params[e, p] = trial[e, p]
        cost[e] = cost_trial[e]
        ae, mue, se, etae, we, pe = trial[e, 0], trial[e, 1], trial[e, 2], trial[e, 3], trial[e, 4], trial[e, 5]
        s2e, s3e, sq = se * se, s3[e], se * np.sqrt(2.0)
        for k in range(m):
            res[e, k] = res_trial[e, k]
            uu = t[e, k] - mue
            g, zz, sk, cc = gauss[e, k], z[e, k], skew[e, k], cos_c[e, k]
            dsk = _TWO_OVER_SQRT_PI * math.exp(-(zz * zz))
            sn = math.sin(we * uu + pe)
            _jacobian_row(jac, e, k, ae, uu, g, zz, sk, dsk, cc, sn, se, s2e, s3e, sq, etae, we)


def accept_steps(better, t, trial, res_trial, cost_trial, parts, params, res, cost, jac):
    """The LM step acceptance of :func:`freehand3d.ulm.echoes.fit_memgo_batch` in place: where
    ``better``, the trial parameters, residual and cost replace the current ones and the Jacobian
    row is recomputed from the trial model's factors ``parts`` (gauss, z, skew, cos) -- the same
    operations as :func:`freehand3d.ulm.echoes._memgo_value_and_jacobian` (its exp and sin equal
    the C library's, which this calls), without the row subsets and scatter copies."""
    gauss, z, skew, cos_c = (np.ascontiguousarray(v, float) for v in parts)
    _accept_steps(better, np.ascontiguousarray(t, float), trial, res_trial, cost_trial, gauss, z, skew, cos_c, trial[:, 2] ** 3, params, res, cost, jac)


@njit(cache=True, nogil=True)
def _lm_steps(jac, res, damping, step, singular):
    n, m, q = jac.shape
    a = np.empty((q, q))
    b = np.empty(q)
    for e in range(n):
        for i in range(q):
            b[i] = 0.0
            for j in range(q):
                a[i, j] = 0.0
        for k in range(m):
            rk = res[e, k]
            for i in range(q):
                ji = jac[e, k, i]
                b[i] += ji * rk
                for j in range(i, q):
                    a[i, j] += ji * jac[e, k, j]
        d = damping[e]
        for i in range(q):
            for j in range(i + 1, q):
                a[j, i] = a[i, j]
        for i in range(q):
            a[i, i] = a[i, i] + d * (a[i, i] + 1e-12)
        # Gaussian elimination with partial pivoting (as LAPACK's getrf/getrs)
        ok = True
        for c in range(q):
            p = c
            best = abs(a[c, c])
            for r in range(c + 1, q):
                if abs(a[r, c]) > best:
                    best = abs(a[r, c])
                    p = r
            if best == 0.0:
                ok = False
                break
            if p != c:
                for j in range(q):
                    a[c, j], a[p, j] = a[p, j], a[c, j]
                b[c], b[p] = b[p], b[c]
            for r in range(c + 1, q):
                f = a[r, c] / a[c, c]
                if f != 0.0:
                    for j in range(c + 1, q):
                        a[r, j] -= f * a[c, j]
                    b[r] -= f * b[c]
        if not ok:
            singular[e] = True
            for i in range(q):
                step[e, i] = 0.0
            continue
        for i in range(q - 1, -1, -1):
            s = b[i]
            for j in range(i + 1, q):
                s -= a[i, j] * step[e, j]
            step[e, i] = s / a[i, i]


def lm_steps(jac, res, damping):
    """Levenberg-Marquardt steps of :func:`freehand3d.ulm.echoes.fit_memgo_batch` in one compiled
    pass: per row e, (J^T J + damping_e (diag(J^T J) + 1e-12) I) step = J^T r (normal equations
    summed sample by sample, 6x6 Gaussian elimination with partial pivoting). Equal to the batched
    BLAS products and ``np.linalg.solve`` to rounding (a different order of the same sums).

    Returns (step (E, 6), singular (E,) bool): rows whose system is exactly singular get no step
    and are flagged (the caller solves them by least squares)."""
    jac = np.ascontiguousarray(jac, float)
    n = jac.shape[0]
    step = np.zeros((n, jac.shape[2]))
    singular = np.zeros(n, np.bool_)
    _lm_steps(jac, np.ascontiguousarray(res, float), np.ascontiguousarray(damping, float), step, singular)
    return step, singular
