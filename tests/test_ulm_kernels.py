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
