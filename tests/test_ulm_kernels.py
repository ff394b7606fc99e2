"""The compiled G-ULM kernels give bit for bit what the numpy code they replaced gave."""

import numpy as np
import pytest

from freehand3d.ulm._kernels import coherent_sum, sliding_row_median


def _median_loop(values, rows):
    """The former noise-floor loop of detection_level: np.median of each window's finite values."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        window = values[max(0, i - rows) : i + rows + 1]
        window = window[np.isfinite(window)]
        if window.size:
            out[i] = np.median(window)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_sliding_row_median_is_np_median(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        nz, nx, rows = int(rng.integers(1, 70)), int(rng.integers(1, 30)), int(rng.integers(0, 35))
        values = rng.rayleigh(size=(nz, nx))
        if rng.random() < 0.4:
            values = np.round(values, 1)  # repeated values: the leaving copies must all go
        values[rng.random((nz, nx)) < rng.random() * 0.8] = np.nan  # dead (aperture-cut) pixels
        if rng.random() < 0.3:
            values[: int(rng.integers(0, nz + 1))] = np.nan  # whole rows without a live pixel
        np.testing.assert_array_equal(sliding_row_median(values, rows), _median_loop(values, rows))


def _coherent_loop(analytic_up, tx, receive, cols, reach, weights):
    """The former numpy loop of coherent_image (gather + add of each channel's block)."""
    nz, nx = tx.shape
    n_up = analytic_up.shape[0]
    padded = np.concatenate([analytic_up, np.zeros((1, analytic_up.shape[1]), analytic_up.dtype)])
    image = np.zeros((nz, nx), np.complex64)
    counts = np.zeros((nz, nx), np.float32)
    for m, col in enumerate(cols):
        lo, hi = max(0, col - reach), min(nx, col + reach + 1)
        if hi <= lo:
            continue
        idx = np.rint(tx[:, lo:hi] + receive[:, lo - col + reach : hi - col + reach]).astype(np.int32)
        valid = (idx >= 0) & (idx < n_up)
        np.copyto(idx, n_up, where=~valid)
        image[:, lo:hi] += padded[idx, m]
        counts[:, lo:hi] += valid * weights[m]
    return image, counts


def test_coherent_sum_is_the_numpy_loop():
    rng = np.random.default_rng(3)
    n_up, channels, nz, nx, reach = 900, 24, 40, 60, 9
    analytic = (rng.standard_normal((n_up, channels)) + 1j * rng.standard_normal((n_up, channels))).astype(np.complex64)
    depth = np.arange(nz)[:, None]
    tx = (depth * 20 + rng.random((nz, nx)) * 3 - 40).astype(np.float32)  # some samples before the record
    receive = (np.hypot(np.arange(-reach, reach + 1)[None, :] * 2.0, depth + 5) * 8 + 0.5).astype(np.float32)  # .5: ties
    receive[:, :2] = 4.0 * n_up  # out of aperture: past the record's end
    cols = np.array(sorted(rng.choice(np.arange(-5, nx + 5), channels, replace=False)))  # some off the grid
    weights = rng.random(channels).astype(np.float32)
    image, counts = coherent_sum(analytic, tx, receive, cols, reach, weights, (nz, nx))
    ref_image, ref_counts = _coherent_loop(analytic, tx, receive, cols, reach, weights)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(counts, ref_counts)


def _memgo_reference(t, p):
    """The numpy MEMGO value and Jacobian as before the compiled pass (unchanged arithmetic)."""
    from scipy.special import erf

    a, mu, s, eta, w, phi = (p[..., i, None] for i in range(6))
    u = t - mu
    gauss = np.exp(-0.5 * (u / s) ** 2)
    z = eta * u / (s * np.sqrt(2.0))
    skew = 1 + erf(z)
    dskew_dz = 2.0 / np.sqrt(np.pi) * np.exp(-(z**2))
    carrier_arg = w * u + phi
    cos_c, sin_c = np.cos(carrier_arg), np.sin(carrier_arg)
    base = gauss * skew
    f = a * base * cos_c
    d_gauss_du = -gauss * u / s**2
    d_skew_du = dskew_dz * eta / (s * np.sqrt(2.0))
    d_cos_du = -w * sin_c
    df_du = a * (d_gauss_du * skew * cos_c + gauss * d_skew_du * cos_c + base * d_cos_du)
    jac = np.empty(f.shape + (6,))
    jac[..., 0] = base * cos_c
    jac[..., 1] = -df_du
    jac[..., 2] = a * cos_c * gauss * (u**2 / s**3 * skew - dskew_dz * z / s)
    jac[..., 3] = a * cos_c * gauss * dskew_dz * u / (s * np.sqrt(2.0))
    jac[..., 5] = -a * base * sin_c
    jac[..., 4] = jac[..., 5] * u
    return f, jac


def test_memgo_jacobian_pass_is_the_numpy_arithmetic():
    from freehand3d.ulm.echoes import _memgo_parts, _memgo_value_and_jacobian

    rng = np.random.default_rng(5)
    n, width = 300, 21
    t = np.arange(width)[None, :] + rng.uniform(0, 500, (n, 1))
    p = np.column_stack([rng.normal(0, 3, n), t[:, 10] + rng.normal(0, 2, n), rng.uniform(1, 6, n), rng.normal(0, 1.5, n), rng.uniform(0.5, 2, n), rng.uniform(-4, 4, n)])
    f_ref, jac_ref = _memgo_reference(t, p)
    f, jac = _memgo_value_and_jacobian(t, p)
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_array_equal(jac, jac_ref)
    _, jac_parts = _memgo_value_and_jacobian(t, p, _memgo_parts(t, p)[1])  # the LM loop's reuse
    np.testing.assert_array_equal(jac_parts, jac_ref)


def test_keep_apart_is_the_dedupe_loop():
    from freehand3d.ulm._kernels import keep_apart

    rng = np.random.default_rng(7)
    channel = np.sort(rng.integers(0, 6, 400))
    peak = np.round(rng.uniform(0, 100, 400), 1)
    expected, last = np.ones(400, bool), {}
    for n, (c, pk) in enumerate(zip(channel.tolist(), peak.tolist())):
        prev = last.get(c)
        if prev is not None and abs(pk - prev) < 2.5:
            expected[n] = False
        else:
            last[c] = pk
    np.testing.assert_array_equal(keep_apart(channel, peak, 2.5), expected)


def test_memgo_model_pass_is_memgo_components():
    from freehand3d.ulm.echoes import _memgo_parts, memgo_components

    rng = np.random.default_rng(11)
    n, width = 300, 21
    t = np.arange(width)[None, :] + rng.uniform(0, 500, (n, 1))
    p = np.column_stack([rng.normal(0, 3, n), t[:, 10] + rng.normal(0, 2, n), rng.uniform(1, 6, n), rng.normal(0, 1.5, n), rng.uniform(0.5, 2, n), rng.uniform(-4, 4, n)])
    np.testing.assert_array_equal(_memgo_parts(t, p)[0], memgo_components(t, p))


def test_accept_steps_is_the_numpy_update():
    from freehand3d.ulm._kernels import accept_steps
    from freehand3d.ulm.echoes import _memgo_parts

    rng = np.random.default_rng(13)
    n, width = 200, 21
    t = np.arange(width)[None, :] + rng.uniform(0, 500, (n, 1))
    trial = np.column_stack([rng.normal(0, 3, n), t[:, 10] + rng.normal(0, 2, n), rng.uniform(1, 6, n), rng.normal(0, 1.5, n), rng.uniform(0.5, 2, n), rng.uniform(-4, 4, n)])
    params, res, cost, jac = rng.normal(size=(n, 6)), rng.normal(size=(n, width)), rng.random(n), rng.normal(size=(n, width, 6))
    res_trial, cost_trial = rng.normal(size=(n, width)), rng.random(n)
    better = rng.random(n) < 0.5
    expected = [params.copy(), res.copy(), cost.copy(), jac.copy()]
    expected[0][better], expected[1][better], expected[2][better] = trial[better], res_trial[better], cost_trial[better]
    expected[3][better] = _memgo_reference(t[better], trial[better])[1]
    accept_steps(better, t, trial, res_trial, cost_trial, _memgo_parts(t, trial)[1], params, res, cost, jac)
    for got, want in zip((params, res, cost, jac), expected):
        np.testing.assert_array_equal(got, want)


def test_lm_steps_solve_the_damped_normal_equations():
    from freehand3d.ulm._kernels import lm_steps

    rng = np.random.default_rng(7)
    jac = rng.standard_normal((50, 25, 6)) * np.array([1.0, 30.0, 0.1, 2.0, 50.0, 1.0])  # MEMGO-like column scales
    res = rng.standard_normal((50, 25))
    damping = 10.0 ** rng.uniform(-9, 6, 50)
    jac[3] = 0.0  # a dead window: only the 1e-12 damping term keeps it regular; zero step
    step, singular = lm_steps(jac, res, damping)
    jtj = jac.transpose(0, 2, 1) @ jac
    diag = np.einsum("epp->ep", jtj)
    eye = np.eye(6)
    system = jtj + damping[:, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
    jtr = (jac.transpose(0, 2, 1) @ res[..., None])[..., 0]
    assert not singular.any() and not step[3].any()
    expected = np.linalg.solve(system, jtr[..., None])[..., 0]
    # a different order of the same sums and eliminations (rounding only): measured max relative
    # difference 1.2e-13 (systems with damping 1e-9 and column scales 0.1..50 are ill-conditioned)
    np.testing.assert_allclose(step, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
