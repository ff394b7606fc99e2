"""Stage 2 and 3 of N-wire calibration: group candidate dots into N-wire layers, label each dot with
its wire, and locate the diagonal-wire point in phantom coordinates by similar triangles.

Geometric priors (Liu et al. 2025, section 2.3; PLUS ``PlusFidLineFinder``/``PlusFidLabeling``):

* intra-layer collinearity: the three dots of one N lie on a line (the image plane cuts the plane of
  the N); the middle one lies between the other two;
* inter-layer parallelism: the layers are parallel planes, so their lines are parallel;
* distance consistency: line-to-line distances are proportional to the distances between the layer
  planes, and the length of each N (side wire to side wire) is proportional to the side-wire spacing
  of its layer, with the same factor for every layer;
* rigidity (freehand3d's addition): the distances between the diagonal-wire dots of different layers
  in the image equal the distances between their similar-triangles positions in the phantom (within
  ``distance_tolerance_percent`` + 1 mm), since the image plane is rigid.

Tolerances are in mm (converted with the pixel size) and degrees, so they do not depend on the
image resolution. The paper's pixel/slope values at its 0.078-ish mm/px are about: collinearity
eps = 0.05 slope ~ 2.9 degrees, diff = 10 px ~ 0.8 mm.

Labelling follows PLUS: N-wire layers in phantom-definition order from the top of the image to the
bottom, and inside one N the points from right to left (wire 1, diagonal wire 2, wire 3).
"""

from __future__ import annotations

import math

import numpy as np

from freehand3d.io.plus_segmentation import SegmentationParams
from freehand3d.phantoms import NWirePhantom


#: the paper's inter-layer parallelism tolerance, |k - k_main| < eps1 = 0.05 (slope), as an angle
PARALLEL_ANGLE_DEG = math.degrees(math.atan(0.05))


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
    points : (K, 2) candidate dots (x, y) pixels, strongest first (as
        :func:`~.detect.detect_points` returns them; the order breaks ties between geometries).
    phantom : the N-wire phantom (layers in definition order).
    spacing_mm : pixel size; default ``params.approximate_spacing_mm_per_pixel``.
    params : PLUS segmentation parameters (tolerances); PLUS defaults when None.
    collinearity_mm : max distance of the middle dot from its N's line
        (default ``CollinearPointsMaxDistanceFromLineMm``).
    max_angle_difference_deg : max angle between the lines of two layers (default the smaller of
        ``MaxAngleDifferenceDegrees`` and the paper's eps1 = 0.05 slope, 2.86 degrees: on the PLUS
        recording the layers' lines differ by at most 1.1 degrees, while collinear speckle in
        frames without the phantom passed PLUS's 10 degrees).
    distance_tolerance_percent : allowed relative error of line distances and N lengths against
        the phantom (default ``MaxLinePairDistanceErrorPercent``); the stretch factors (N length
        / side-wire spacing) of all layers must agree within it.
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
    if max_angle_difference_deg is None:
        max_angle = min(params.max_angle_difference_degrees, PARALLEL_ANGLE_DEG)
    else:
        max_angle = max_angle_difference_deg
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

    diagonals = diagonal_intersections(phantom)
    if not use_constraints or n_layers == 1:
        best, best_cost = _best_without_priors(pts, triples, residual, tol_line, n_layers)
    else:
        best, best_cost = None, math.inf
        # PLUS's order first (layer 1 at the top of the image); the reverse only if that fails
        for order in (np.arange(n_layers), np.arange(n_layers)[::-1]):
            found, cost = _search_layers(pts, triples, u, length_mm, centre, residual, side_spacing[order],
                                         None if offsets is None else offsets[order], spacing, tol_line,
                                         max_angle, tol_rel, diagonals=diagonals[order])
            if found is not None:
                labelled = np.empty((n_layers, 3, 2))
                for line_idx, layer in zip(found, order):
                    labelled[layer] = pts[triples[line_idx]]
                best, best_cost = labelled.reshape(-1, 2), cost
                break
    if best is None:
        return fail
    return (best, best_cost) if return_cost else best


def _best_without_priors(pts, triples, residual, tol_line, n_layers):
    """Ablation: the most collinear disjoint triples (strongest dots first on ties), top to bottom."""
    order = np.lexsort((triples.sum(axis=1), residual))
    used, chosen = set(), []
    for t in order:
        if used.isdisjoint(triples[t]):
            chosen.append(t)
            used.update(triples[t].tolist())
            if len(chosen) == n_layers:
                break
    if len(chosen) < n_layers:
        return None, math.inf
    chosen = sorted(chosen, key=lambda t: pts[triples[t]].mean(axis=0)[1])
    return pts[triples[chosen]].reshape(-1, 2), float(residual[chosen].sum() / tol_line)


def _search_layers(pts, triples, u, length_mm, centre, residual, side_spacing, offsets, spacing, tol_line,
                   max_angle, tol_rel, rank_weight=3.0, diagonals=None):
    """Depth-first search for one triple per layer (top to bottom) satisfying the inter-layer priors;
    returns (triple indices per layer, cost) of the cheapest set, or (None, inf)."""
    n_layers = len(side_spacing)
    m = len(triples)
    members = np.zeros((m, len(pts)), bool)
    members[np.arange(m)[:, None], triples] = True
    disjoint = ~(members.astype(np.uint8) @ members.T.astype(np.uint8)).astype(bool)
    cos = np.clip(np.abs(u @ u.T), 0.0, 1.0)
    parallel = np.degrees(np.arccos(cos)) <= max_angle
    below = centre[None, :, 1] > centre[:, None, 1]  # [a, b]: b lies below a
    compatible = disjoint & parallel & below
    # length / side spacing is the same stretch factor for every layer
    factor = length_mm[:, None] / side_spacing[None, :]  # (m, L)
    best, best_cost = None, math.inf

    def finish(chosen):
        nonlocal best, best_cost
        chosen = np.asarray(chosen)
        dirs = u[chosen]
        angle = float(np.degrees(np.arccos(np.clip(np.abs(dirs @ dirs.T), 0, 1).min())))
        f = factor[chosen, np.arange(n_layers)]
        spread = f.max() / f.min() - 1.0
        if spread > tol_rel:
            return
        cost = float(residual[chosen].sum() / tol_line) + angle / max_angle + spread / tol_rel
        # candidates come strongest first: between equally good geometries prefer strong dots
        # over speckle that happens to be collinear
        cost += rank_weight * float(triples[chosen].mean()) / len(pts)
        if offsets is not None:
            mean_dir = dirs.sum(axis=0)
            mean_dir /= np.linalg.norm(mean_dir)
            normal = np.array([-mean_dir[1], mean_dir[0]])
            line_pos = (centre[chosen] @ normal) * spacing
            img_gaps = np.abs(np.diff(line_pos))
            ph_gaps = np.abs(np.diff(offsets))
            if np.any(ph_gaps <= 0):
                return
            gap_factor = img_gaps / ph_gaps
            # the image plane cuts the layer planes obliquely: gaps only stretch, and not by much
            # more than the tolerance (PLUS bounds line-pair distances by the same percentage;
            # twice it here, as for the spread below: PLUS's fCal 1.2 recordings stretch up to
            # 1.11 with a 10 % tolerance, while a false layer of static markers on the VLCUS
            # recording stretched 1.72 with 20 %)
            if gap_factor.min() < 1 - tol_rel or gap_factor.max() > 1 + 2 * tol_rel:
                return
            gspread = gap_factor.max() / gap_factor.min() - 1.0
            if gspread > 2 * tol_rel:
                return
            cost += gspread / tol_rel
        if diagonals is not None:
            # the image plane is rigid: distances between the diagonal-wire dots in the image must
            # equal those between their similar-triangles positions in the phantom (either wire
            # order, the view may be mirrored); random collinear speckle fails this
            lab = pts[triples[chosen]]  # (L, 3, 2)
            ab = np.linalg.norm(lab[:, 1] - lab[:, 0], axis=1)
            ac = np.linalg.norm(lab[:, 2] - lab[:, 0], axis=1)
            img = lab[:, 1] * spacing
            iu = np.triu_indices(n_layers, 1)
            d_img = np.linalg.norm(img[:, None] - img[None], axis=2)[iu]
            best_rel = math.inf
            for alpha in (ab / ac, 1.0 - ab / ac):
                p2 = diagonals[:, 0] + alpha[:, None] * (diagonals[:, 1] - diagonals[:, 0])
                d_ph = np.linalg.norm(p2[:, None] - p2[None], axis=2)[iu]
                rel = np.max(np.abs(d_img - d_ph) / (d_ph * tol_rel + 1.0))
                best_rel = min(best_rel, rel)
            if best_rel > 1.0:
                return
            cost += best_rel
        if cost < best_cost:
            best, best_cost = chosen, cost

    if offsets is not None:
        ph_step = np.abs(np.diff(offsets))

    def extend(chosen, allowed):
        layer = len(chosen)
        if layer == n_layers:
            finish(chosen)
            return
        f0 = factor[chosen[0], 0]
        ok = allowed & (np.abs(factor[:, layer] / f0 - 1.0) <= tol_rel)
        if offsets is not None and ph_step[layer - 1] > 0:
            # the gap to the previous layer must pass finish()'s stretch bounds (measured along the
            # first line's normal here, so with a little slack for the mean direction used there):
            # prunes the search early when a frame has many candidate dots
            d0 = u[chosen[0]]
            normal0 = np.array([-d0[1], d0[0]])
            gap = np.abs((centre - centre[chosen[-1]]) @ normal0) * spacing / ph_step[layer - 1]
            ok &= (gap >= (1 - tol_rel) * 0.97) & (gap <= (1 + 2 * tol_rel) * 1.03)
        for t in np.flatnonzero(ok):
            extend(chosen + [t], allowed & compatible[t])

    for first in range(m):
        extend([first], compatible[first].copy())
    return best, best_cost


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
