"""Mean-shift clustering of ellipse-intersection points (stage 4 of geometric ULM).

Flat-kernel mean shift: every seed moves to the mean of the points within ``bandwidth`` until it stops
moving; seeds that converge within ``bandwidth`` of each other are merged (the one with more support
wins). Seeds are the occupied cells of a ``bandwidth`` grid (one per cell, at the cell's mean point),
which keeps the work proportional to the number of distinct locations, not of points.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["mean_shift"]


def mean_shift(
    points: np.ndarray,
    bandwidth: float,
    *,
    min_cluster_size: int = 1,
    max_iterations: int = 50,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 2-D points by flat-kernel mean shift.

    Parameters
    ----------
    points : array (N, 2)
        Points (mm); rows with NaN are ignored.
    bandwidth : float
        Kernel radius (mm); e.g. lambda / 4.
    min_cluster_size : int
        Clusters supported by fewer points (within ``bandwidth`` of the centre) are dropped.
    max_iterations : int
        Iteration cap for the seeds.
    weights : array (N,), optional
        Point weights for the means (default 1).

    Returns
    -------
    centres : numpy.ndarray (K, 2)
        Cluster centres, most supported first.
    sizes : numpy.ndarray (K,)
        Number of points within ``bandwidth`` of each centre.

    Examples
    --------
    >>> pts = np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0], [1.0, 1.01], [1.01, 1.0]])
    >>> centres, sizes = mean_shift(pts, 0.1, min_cluster_size=2)
    >>> sizes.tolist()
    [3, 2]
    """
    if bandwidth <= 0:
        raise ValueError("bandwidth must be positive")
    points = np.asarray(points, float).reshape(-1, 2)
    keep = np.isfinite(points).all(axis=1)
    points = points[keep]
    w = np.ones(len(points)) if weights is None else np.asarray(weights, float)[keep]
    if len(points) == 0:
        return np.zeros((0, 2)), np.zeros(0, int)
    tree = cKDTree(points)
    # one seed per occupied grid cell
    cells = np.floor(points / bandwidth).astype(np.int64)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    seeds = np.zeros((len(counts), 2))
    np.add.at(seeds, inverse, points)
    seeds /= counts[:, None]
    active = np.ones(len(seeds), bool)
    for _ in range(max_iterations):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        neighbours = tree.query_ball_point(seeds[idx], bandwidth)
        lengths = np.array([len(n) for n in neighbours])
        flat = np.concatenate([np.asarray(n, int) for n in neighbours]) if lengths.sum() else np.zeros(0, int)
        owner = np.repeat(np.arange(len(idx)), lengths)
        sums = np.zeros((len(idx), 2))
        np.add.at(sums, owner, points[flat] * w[flat, None])
        wsum = np.bincount(owner, weights=w[flat], minlength=len(idx))
        empty = wsum == 0
        new = np.where(empty[:, None], seeds[idx], sums / np.where(empty, 1, wsum)[:, None])
        moved = np.linalg.norm(new - seeds[idx], axis=1)
        seeds[idx] = new
        active[idx[(moved < 1e-4 * bandwidth) | empty]] = False
    support = np.array([len(n) for n in tree.query_ball_point(seeds, bandwidth)])
    order = np.argsort(-support, kind="stable")
    centres, sizes = [], []
    taken = np.zeros(len(seeds), bool)
    seed_tree = cKDTree(seeds)
    for k in order:
        if taken[k]:
            continue
        near = seed_tree.query_ball_point(seeds[k], bandwidth)
        taken[near] = True
        if support[k] >= min_cluster_size:
            centres.append(seeds[k])
            sizes.append(support[k])
    if not centres:
        return np.zeros((0, 2)), np.zeros(0, int)
    return np.asarray(centres), np.asarray(sizes, int)
