"""Stage 2 and 3 of N-wire calibration: group candidate dots into N-wire layers, label each dot with
its wire, and locate the diagonal-wire point in phantom coordinates by similar triangles.

Geometric priors (Liu et al. 2025, section 2.3; PLUS ``PlusFidLineFinder``/``PlusFidLabeling``):

* intra-layer collinearity: the three dots of one N lie on a line (the image plane cuts the plane of
  the N); the middle one lies between the other two;
* inter-layer parallelism: the layers are parallel planes, so their lines are parallel;
* distance consistency: line-to-line distances are proportional to the distances between the layer
  planes, and the length of each N (side wire to side wire) is proportional to the side-wire spacing
  of its layer, with the same factor for every layer.

Tolerances are in mm (converted with the pixel size) and degrees, so they do not depend on the
image resolution. The paper's pixel/slope values at its 0.078-ish mm/px are about: collinearity
eps = 0.05 slope ~ 2.9 degrees, diff = 10 px ~ 0.8 mm.

Labelling follows PLUS: N-wire layers in phantom-definition order from the top of the image to the
bottom, and inside one N the points from right to left (wire 1, diagonal wire 2, wire 3).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from freehand3d.io.plus_segmentation import SegmentationParams
from freehand3d.phantoms import NWirePhantom


# ---------------------------------------------------------------------------------------------
# phantom geometry
def _closest_points_of_lines(p1, d1, p2, d2):
    """Points on line 1 and line 2 closest to each other (the intersection for coplanar lines)."""
    w = p1 - p2
    a, b, c = d1 @ d1, d1 @ d2, d2 @ d2
    d, e = d1 @ w, d2 @ w
    den = a * c - b * b
    if abs(den) < 1e-12:
        raise ValueError("the diagonal wire is parallel to a side wire")
    s = (b * e - c * d) / den
    t = (a * e - b * d) / den
    return p1 + s * d1, p2 + t * d2


def diagonal_intersections(phantom: NWirePhantom) -> np.ndarray:
    """Where the (infinite) diagonal wire of each N meets its two side wires, phantom mm.

    Returns
    -------
    (L, 2, 3): ``[:, 0]`` = W12 (diagonal x wire 1), ``[:, 1]`` = W32 (diagonal x wire 3).
    """
    out = []
    for nwire in phantom.nwires:
        w1, w2, w3 = nwire.wires
        d2 = w2.back - w2.front
        _, a = _closest_points_of_lines(w1.front, w1.back - w1.front, w2.front, d2)
        _, b = _closest_points_of_lines(w3.front, w3.back - w3.front, w2.front, d2)
        out.append([a, b])
    return np.asarray(out, float)


def layer_geometry(phantom: NWirePhantom) -> tuple[np.ndarray, np.ndarray | None]:
    """Side-wire spacing of each N (mm) and the signed offsets of the layer planes along their
    common normal (mm, None when the layers are not parallel planes)."""
    spacing, normals, points = [], [], []
    for nwire in phantom.nwires:
        w1, w2, w3 = nwire.wires
        spacing.append(w1.distance_to(w3.front[None])[0])
        n = np.cross(w1.back - w1.front, w2.back - w2.front)
        if np.linalg.norm(n) < 1e-9:
            n = np.cross(w1.back - w1.front, w3.front - w1.front)
        n = n / np.linalg.norm(n)
        normals.append(n)
        points.append(w1.front)
    ref = normals[0]
    parallel = all(abs(abs(n @ ref) - 1.0) < 1e-3 for n in normals)
    offsets = np.array([p @ ref for p in points]) if parallel else None
    return np.asarray(spacing, float), offsets


# ---------------------------------------------------------------------------------------------
# line finding
def collinear_triples(points: np.ndarray, max_distance_px: float, min_theta_deg: float = -70.0,
                      max_theta_deg: float = 70.0) -> np.ndarray:
    """All (outer, middle, outer) index triples whose middle dot lies within ``max_distance_px`` of
    the segment joining the outer dots (strictly between them) and whose line angle to the image
    x axis is within [min_theta, max_theta] degrees.

    Returns
    -------
    (M, 3) int, the outer dot with the larger x first.
    """
    pts = np.asarray(points, float).reshape(-1, 2)
    k = len(pts)
    if k < 3:
        return np.zeros((0, 3), int)
    i, j = np.triu_indices(k, 1)
    d = pts[j] - pts[i]
    length = np.linalg.norm(d, axis=1)
    ok = length > 0
    i, j, d, length = i[ok], j[ok], d[ok], length[ok]
    u = d / length[:, None]
    theta = np.degrees(np.arctan2(u[:, 1], u[:, 0]))
    theta = (theta + 90.0) % 180.0 - 90.0  # line angle in [-90, 90)
    ok = (theta >= min_theta_deg) & (theta <= max_theta_deg)
    i, j, u, length = i[ok], j[ok], u[ok], length[ok]
    rel = pts[None, :, :] - pts[i][:, None, :]  # (pairs, k, 2)
    along = np.einsum("pkc,pc->pk", rel, u)
    across = np.abs(rel[..., 0] * u[:, None, 1] - rel[..., 1] * u[:, None, 0])
    between = (along > 0) & (along < length[:, None])
    hit = between & (across <= max_distance_px)
    hit[np.arange(len(i)), i] = False
    hit[np.arange(len(j)), j] = False
    pair, mid = np.nonzero(hit)
    a, b = i[pair], j[pair]
    right_first = pts[a, 0] >= pts[b, 0]
    first = np.where(right_first, a, b)
    last = np.where(right_first, b, a)
    return np.stack([first, mid, last], axis=1).astype(int)


def _line_features(pts: np.ndarray, triples: np.ndarray):
    outer_a, outer_b = pts[triples[:, 0]], pts[triples[:, 2]]
    d = outer_b - outer_a
    length = np.linalg.norm(d, axis=1)
    u = d / length[:, None]
    u[u[:, 0] < 0] *= -1  # direction with +x so that angles compare
    centre = pts[triples].mean(axis=1)
    rel = pts[triples[:, 1]] - outer_a
    residual = np.abs(rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0])
    return u, length, centre, residual


def find_nwires(
    points: np.ndarray,
    phantom: NWirePhantom,
    spacing_mm: float | None = None,
    params: SegmentationParams | None = None,
    *,
    collinearity_mm: float | None = None,
    max_angle_difference_deg: float | None = None,
    distance_tolerance_percent: float | None = None,
    use_constraints: bool = True,
    return_cost: bool = False,
):
    """Find the N-wire layers among candidate dots and label every dot with its wire.

    Parameters
    ----------
    points : (K, 2) candidate dots (x, y) pixels (e.g. from :func:`~.detect.detect_points`).
    phantom : the N-wire phantom (layers in definition order).
    spacing_mm : pixel size; default ``params.approximate_spacing_mm_per_pixel``.
    params : PLUS segmentation parameters (tolerances); PLUS defaults when None.
    collinearity_mm : max distance of the middle dot from its N's line
        (default ``CollinearPointsMaxDistanceFromLineMm``).
    max_angle_difference_deg : max angle between the lines of two layers
        (default ``MaxAngleDifferenceDegrees``).
    distance_tolerance_percent : allowed relative error of line distances and N lengths against
        the phantom (default ``MaxLinePairDistanceErrorPercent``).
    use_constraints : False switches the inter-layer priors off (only collinearity remains; for
        ablation studies: the best-scoring set of disjoint lines is taken).
    return_cost : also return the geometric cost of the chosen labelling.

    Returns
    -------
    labelled : (3 L, 2) float (x, y) in PLUS order (layer by layer, wires 1, 2, 3), or None when no
        set of dots satisfies the priors (the frame is reported as failed).
    """
    params = params or SegmentationParams()
    spacing = float(params.approximate_spacing_mm_per_pixel if spacing_mm is None else spacing_mm)
    tol_line = (params.collinear_points_max_distance_from_line_mm if collinearity_mm is None else collinearity_mm) / spacing
    max_angle = params.max_angle_difference_degrees if max_angle_difference_deg is None else max_angle_difference_deg
    tol_rel = (params.max_line_pair_distance_error_percent if distance_tolerance_percent is None
               else distance_tolerance_percent) / 100.0
    pts = np.asarray(points, float).reshape(-1, 2)
    n_layers = len(phantom.nwires)
    fail = (None, math.inf) if return_cost else None
    if len(pts) < 3 * n_layers:
        return fail
    triples = collinear_triples(pts, tol_line, params.min_theta_degrees, params.max_theta_degrees)
    if len(triples) < n_layers:
        return fail
    u, length_px, centre, residual = _line_features(pts, triples)
    side_spacing, offsets = layer_geometry(phantom)
    length_mm = length_px * spacing

    if use_constraints:
        # an N is never shorter than its side-wire spacing (the image plane cuts the wires at an
        # angle), nor more than about 3x longer (PLUS accepts lines up to 70 degrees)
        plausible = (length_mm >= side_spacing.min() * (1 - tol_rel)) & (length_mm <= side_spacing.max() * 3.0)
        keep = np.nonzero(plausible)[0]
        triples, u, length_px, length_mm, centre, residual = (
            triples[keep], u[keep], length_px[keep], length_mm[keep], centre[keep], residual[keep])
        if len(triples) < n_layers:
            return fail

    best, best_cost = None, math.inf
    for combo in itertools.combinations(range(len(triples)), n_layers):
        idx = triples[list(combo)]
        if len(np.unique(idx)) != idx.size:
            continue  # a dot belongs to one wire only
        combo = np.array(combo)
        # layers from the top of the image (smallest y) down
        combo = combo[np.argsort(centre[combo, 1])]
        cost = float(residual[combo].sum() / tol_line)
        if use_constraints and n_layers > 1:
            dirs = u[combo]
            cosines = np.clip(np.abs(dirs @ dirs.T), 0, 1)
            angle = np.degrees(np.arccos(cosines.min()))
            if angle > max_angle:
                continue
            mean_dir = dirs.sum(axis=0)
            mean_dir /= np.linalg.norm(mean_dir)
            normal = np.array([-mean_dir[1], mean_dir[0]])
            cost += angle / max_angle
            orders = [np.arange(n_layers), np.arange(n_layers)[::-1]]
            best_order_cost, ok_any = math.inf, False
            for order in orders:
                layer_cost = 0.0
                # N lengths: length / side spacing is the same factor for every layer
                factor = length_mm[combo] / side_spacing[order]
                spread = factor.max() / factor.min() - 1.0
                if spread > 2 * tol_rel:
                    continue
                layer_cost += spread / tol_rel
                if offsets is not None:
                    line_pos = (centre[combo] @ normal) * spacing
                    img_gaps = np.diff(line_pos)
                    ph_gaps = np.abs(np.diff(offsets[order]))
                    if np.any(ph_gaps <= 0):
                        continue
                    gap_factor = img_gaps / ph_gaps
                    # distances stretch by the same factor (>= 1) as the N lengths
                    if gap_factor.min() < 1 - tol_rel:
                        continue
                    gspread = gap_factor.max() / gap_factor.min() - 1.0
                    if gspread > 2 * tol_rel:
                        continue
                    layer_cost += gspread / tol_rel
                ok_any = True
                # prefer PLUS's order (top = first layer) unless only the reverse fits
                if layer_cost < best_order_cost:
                    best_order_cost = layer_cost
                    chosen_order = order
                if order is orders[0]:
                    break
            if not ok_any:
                continue
            cost += best_order_cost
        else:
            chosen_order = np.arange(n_layers)
            # without priors prefer the lines made of the strongest dots (listed first)
            cost += idx.sum() / max(len(pts), 1) * 1e-3
        if cost < best_cost:
            best_cost = cost
            labelled = np.empty((n_layers, 3, 2))
            for line_idx, layer in zip(combo, chosen_order):
                labelled[layer] = pts[triples[line_idx]]
            best = labelled.reshape(-1, 2)
    if best is None:
        return fail
    return (best, best_cost) if return_cost else best


# ---------------------------------------------------------------------------------------------
# similar triangles
def middle_wire_points(labelled: np.ndarray, phantom: NWirePhantom) -> np.ndarray:
    """Phantom position (mm) of each diagonal-wire dot by similar triangles.

    ``alpha = |B - A| / |C - A|`` in the image (A, B, C: dots of wires 1, 2, 3); the point is
    ``W12 + alpha (W32 - W12)`` where W12, W32 are the diagonal's intersections with wires 1 and 3.

    Parameters
    ----------
    labelled : (3 L, 2) or (N, 3 L, 2) labelled dots.

    Returns
    -------
    (L, 3) or (N, L, 3) phantom mm.
    """
    lab = np.asarray(labelled, float)
    single = lab.ndim == 2
    if single:
        lab = lab[None]
    n_layers = len(phantom.nwires)
    lab = lab.reshape(lab.shape[0], n_layers, 3, 2)
    ab = np.linalg.norm(lab[:, :, 1] - lab[:, :, 0], axis=-1)
    ac = np.linalg.norm(lab[:, :, 2] - lab[:, :, 0], axis=-1)
    alpha = ab / ac
    w = diagonal_intersections(phantom)  # (L, 2, 3)
    out = w[None, :, 0] + alpha[..., None] * (w[None, :, 1] - w[None, :, 0])
    return out[0] if single else out


__all__ = [
    "diagonal_intersections",
    "layer_geometry",
    "collinear_triples",
    "find_nwires",
    "middle_wire_points",
]
