"""Ellipse (and parabola) intersections: where a scatterer can be, given two channels' echo paths.

An echo received by element ``e`` after the total path ``d`` (transmit + receive, mm) constrains
the scatterer ``p`` to

* an ellipse ``|p - v| + |p - e| = d`` with foci at the virtual transmitter ``v`` and the element
  (diverging or focused transmits), or
* for a plane wave with unit direction ``n`` (the far-virtual-source limit ``v -> -inf n``), the
  parabola ``n . p + |p - e| = d`` with focus ``e`` (distances counted from the plane ``n . p = 0``).

Method (exact, no iterations): both conics of one transmit share the focus ``v`` (or the direction
``n``), so subtracting the squared equations of channel ``i`` and ``j`` cancels every quadratic term
and leaves a straight line through both intersections; substituting the line back into one conic
gives a quadratic in one unknown. This is the shared-focus reduction of the general (Eberly)
two-ellipse problem, which would need a quartic; it is exact here because the transmitter is common
to all channels. For plane waves the reduction is carried out on the parabolas directly, so no large
virtual-source distance ever enters the arithmetic (a finite ``v`` 1 m away would lose ~6 digits).

All functions are vectorised over leading dimensions and return NaN where no valid (z > 0)
intersection exists.
"""

from __future__ import annotations

import numpy as np

__all__ = ["intersect_plane_wave", "intersect_ellipses", "plane_wave_path", "ellipse_path"]


def plane_wave_path(points: np.ndarray, element: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Total path n . p + |p - e| (mm) for points (..., 2), elements (..., 2), unit direction (2,)."""
    points = np.asarray(points, float)
    return points @ np.asarray(direction, float) + np.linalg.norm(points - element, axis=-1)


def ellipse_path(points: np.ndarray, source: np.ndarray, element: np.ndarray) -> np.ndarray:
    """Total path |p - v| + |p - e| (mm) for points (..., 2)."""
    points = np.asarray(points, float)
    return np.linalg.norm(points - source, axis=-1) + np.linalg.norm(points - element, axis=-1)


def _solve_line_quadratic(p0, u, a2, a1, a0):
    """Roots s of a2 s^2 + a1 s + a0 = 0 on the line p0 + s u, as two candidate points (..., 2, 2)."""
    disc = a1**2 - 4 * a2 * a0
    # tangent conics give a slightly negative discriminant through rounding: treat as a double root
    disc = np.where((disc < 0) & (disc > -1e-9 * (a1**2 + np.abs(4 * a2 * a0))), 0.0, disc)
    sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
    # numerically stable pair of roots (no cancellation), with the linear case a2 ~ 0 handled
    q = -0.5 * (a1 + np.copysign(sq, a1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = np.where(np.abs(a2) > 1e-14 * np.abs(a1) + 1e-300, q / a2, -a0 / a1)
        r2 = np.where(q != 0, a0 / q, r1)
    roots = np.stack([r1, r2], axis=-1)  # (..., 2)
    return p0[..., None, :] + roots[..., :, None] * u[..., None, :]


def _pick_deepest(candidates, valid):
    """Of two candidate points (..., 2, 2) keep the valid one with the larger z, NaN if none."""
    z = np.where(valid, candidates[..., 1], -np.inf)
    best = np.argmax(z, axis=-1)
    point = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    ok = np.isfinite(np.max(z, axis=-1))
    return np.where(ok[..., None], point, np.nan)


def intersect_plane_wave(
    element_i: np.ndarray,
    path_i: np.ndarray,
    element_j: np.ndarray,
    path_j: np.ndarray,
    direction: np.ndarray = (0.0, 1.0),
    *,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """Intersect two plane-wave parabolas n.p + |p - e_i| = d_i and n.p + |p - e_j| = d_j.

    Parameters
    ----------
    element_i, element_j : array (..., 2)
        Element positions (x, z) in mm.
    path_i, path_j : array (...)
        Total echo paths (speed of sound times time of arrival, transmit distance counted from the
        plane n . p = 0) in mm.
    direction : array (2,)
        Unit propagation direction of the plane wave, (sin(angle), cos(angle)).
    tolerance : float
        Relative slack (mm) when checking that a root lies on the physical branch (|p-e| >= 0).

    Returns
    -------
    numpy.ndarray (..., 2)
        The intersection with z > 0 (the deepest if two), NaN where none.
    """
    ei = np.asarray(element_i, float)
    ej = np.asarray(element_j, float)
    di = np.asarray(path_i, float)
    dj = np.asarray(path_j, float)
    ei, ej = np.broadcast_arrays(ei, ej)
    di, dj = np.broadcast_arrays(di, dj)
    shape = np.broadcast_shapes(ei.shape[:-1], di.shape)
    ei, ej = np.broadcast_to(ei, shape + (2,)), np.broadcast_to(ej, shape + (2,))
    di, dj = np.broadcast_to(di, shape), np.broadcast_to(dj, shape)
    n = np.asarray(direction, float)
    # |p-e|^2 = (d - n.p)^2 for both channels; the difference is linear in p:
    #   2 p.(e_j - e_i) + |e_i|^2 - |e_j|^2 = (d_i - d_j)(d_i + d_j) - 2 (d_i - d_j) n.p
    dd = di - dj
    normal = 2 * (ej - ei) + 2 * dd[..., None] * n
    rhs = dd * (di + dj) - (np.sum(ei**2, -1) - np.sum(ej**2, -1))
    norm2 = np.sum(normal**2, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = normal * (rhs / norm2)[..., None]
        u = np.stack([-normal[..., 1], normal[..., 0]], -1) / np.sqrt(norm2)[..., None]
    # substitute p = p0 + s u into |p - e_i|^2 = (d_i - n.p)^2
    w = p0 - ei
    nu = u @ n
    h = di - p0 @ n
    a2 = 1 - nu**2
    a1 = 2 * (np.sum(u * w, -1) + h * nu)
    a0 = np.sum(w * w, -1) - h**2
    candidates = _solve_line_quadratic(p0, u, a2, a1, a0)
    # physical branch: the receive distance d - n.p must be >= 0 for both channels
    along = candidates @ n
    valid = (
        (candidates[..., 1] > 0)
        & (di[..., None] - along >= -tolerance)
        & (dj[..., None] - along >= -tolerance)
        & np.isfinite(candidates[..., 1])
    )
    return _pick_deepest(candidates, valid)


def intersect_ellipses(
    source: np.ndarray,
    element_i: np.ndarray,
    path_i: np.ndarray,
    element_j: np.ndarray,
    path_j: np.ndarray,
    *,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """Intersect |p - v| + |p - e_i| = d_i with |p - v| + |p - e_j| = d_j (shared focus v).

    Parameters
    ----------
    source : array (..., 2)
        Virtual transmitter position (mm).
    element_i, element_j : array (..., 2)
        Receiving elements (mm).
    path_i, path_j : array (...)
        Total paths (mm).
    tolerance : float
        Slack (mm) for the branch check r = |p - v| <= d.

    Returns
    -------
    numpy.ndarray (..., 2)
        The intersection with z > 0 (the deepest if two), NaN where none.

    Notes
    -----
    With r = |p - v|, each ellipse reads |p - e|^2 - |p - v|^2 = d^2 - 2 d r, linear in p and r.
    Eliminating r between the two channels leaves a line; on it r is linear in the line parameter,
    and r^2 = |p - v|^2 is the quadratic that is solved.
    """
    v = np.asarray(source, float)
    ei = np.asarray(element_i, float)
    ej = np.asarray(element_j, float)
    di = np.asarray(path_i, float)
    dj = np.asarray(path_j, float)
    shape = np.broadcast_shapes(v.shape[:-1], ei.shape[:-1], ej.shape[:-1], di.shape, dj.shape)
    v, ei, ej = (np.broadcast_to(a, shape + (2,)) for a in (v, ei, ej))
    di, dj = np.broadcast_to(di, shape), np.broadcast_to(dj, shape)
    # L_k(p) = |p-e_k|^2 - |p-v|^2 = 2 p.(v - e_k) + |e_k|^2 - |v|^2 = d_k^2 - 2 d_k r
    gi = 2 * (v - ei)
    gj = 2 * (v - ej)
    ci = np.sum(ei**2, -1) - np.sum(v**2, -1)
    cj = np.sum(ej**2, -1) - np.sum(v**2, -1)
    # d_j L_i - d_i L_j = d_j d_i^2 - d_i d_j^2  (r cancels): a line normal . p = rhs
    normal = dj[..., None] * gi - di[..., None] * gj
    rhs = dj * di**2 - di * dj**2 - (dj * ci - di * cj)
    norm2 = np.sum(normal**2, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = normal * (rhs / norm2)[..., None]
        u = np.stack([-normal[..., 1], normal[..., 0]], -1) / np.sqrt(norm2)[..., None]
        # r(s) = (d_i^2 - L_i(p0 + s u)) / (2 d_i) = r0 + r1 s
        r0 = (di**2 - (np.sum(gi * p0, -1) + ci)) / (2 * di)
        r1 = -np.sum(gi * u, -1) / (2 * di)
    w = p0 - v
    a2 = 1 - r1**2
    a1 = 2 * (np.sum(u * w, -1) - r0 * r1)
    a0 = np.sum(w * w, -1) - r0**2
    candidates = _solve_line_quadratic(p0, u, a2, a1, a0)
    r = np.linalg.norm(candidates - v[..., None, :], axis=-1)
    roots = np.sum((candidates - p0[..., None, :]) * u[..., None, :], -1)
    r_on_line = r0[..., None] + r1[..., None] * roots
    valid = (
        (candidates[..., 1] > 0)
        & (r_on_line >= -tolerance)  # r^2 = |p-v|^2 also admits r = -|p-v|: not a real echo
        & (r <= di[..., None] + tolerance)
        & (r <= dj[..., None] + tolerance)
        & np.isfinite(candidates[..., 1])
    )
    return _pick_deepest(candidates, valid)
