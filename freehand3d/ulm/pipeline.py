"""Geometric ULM (G-ULM): microbubble positions straight from RF channel data, no beamforming.

Stages (each importable and testable on its own):

1. :func:`freehand3d.ulm.echoes.find_echoes` — echoes per channel, MEMGO fits, phase-precise ToA.
2. :func:`match_echoes` — pair echoes of channels ``i`` and ``i + gap`` whose path difference the
   geometry allows, intersect their conics (:mod:`freehand3d.ulm.intersect`) and keep the points
   whose predicted echo paths in further channels (``i - gap``, ``i + 2 gap`` and the channel half way)
   are found within a tolerance ("re-projection" check).
3. :func:`freehand3d.ulm.cluster.mean_shift` — one bubble per cluster of intersection points;
   :func:`suppress_ghosts` drops satellite clusters next to much better-supported ones.
4. optional :func:`refine_positions` — least-squares multilateration of each cluster centre from
   the echoes of all selected channels that it explains (Gauss-Newton, a few steps).
5. coherent seeding (:mod:`freehand3d.ulm.coherent`, default on) — the echoes of the bubbles found
   are removed, the coherent sum of the selected channels seeds weak bubbles above the DAS-WA
   noise-floor rule, and each seed is located from its own MEMGO-fitted echoes by the
   least-squares intersection of their ellipses.
6. close partners (:mod:`freehand3d.ulm.partners`, with the coherent stage and 64 or more
   channels) — a bubble 0.4-2.5 wavelengths beside a located one, whose echoes coincide with its
   echoes in most channels, is searched for in the coherent sum of the residual and located jointly
   with it.

:func:`localize` chains them for one frame or many.
"""

from __future__ import annotations

import warnings

import numpy as np

from freehand3d.ulm.baseline import DEFAULT_FALSE_ALARMS
from freehand3d.ulm.cluster import mean_shift
from freehand3d.ulm.echoes import Echoes, find_echoes, reference_fit
from freehand3d.ulm.intersect import intersect_plane_wave
from freehand3d.ulm.probe import LinearProbe

__all__ = ["default_baseline", "derived_parameters", "resolve_pulse", "mask_nonfinite", "select_channels", "echo_paths", "match_echoes", "multilaterate", "chance_support", "refine_positions", "suppress_ghosts", "localize", "localize_frame"]


#: With 4-31 channels a coherent seed's agreeing echoes must have a participation ratio (sum a)^2 /
#: sum a^2 of at least this share of the echoes fitted in its f-number 1 aperture
#: (:func:`freehand3d.ulm.coherent.coherent_bubbles`, ``min_participation``): inside that aperture
#: a bubble's echoes are about equally strong, while echoes of other bubbles that line up with a
#: seed by chance are not. PyMUST 16 channels, 30 dB, 40 frames: L22-14v-like 18 bubbles/frame
#: false positives 43 -> 35 (0 deg) and 27 -> 20 (5 deg), no true positive lost at 0 deg, one at 5;
#: L11-5v-like unchanged (docs/ulm.md). 32+ channels: 0 (not measured there).
FEW_CHANNEL_SEED_PARTICIPATION = 0.5


#: Close-partner stage (:mod:`freehand3d.ulm.partners`, after the coherent stage) with this many
#: selected channels or more (measured with 128: PyMUST L11-5v-like 20 dB cells behind DAS-WA ->
#: ahead, docs/ulm.md "Close partners"; not measured with fewer, whose f-number 1 aperture holds
#: fewer channels to verify a partner with).
PARTNERS = True
PARTNER_MIN_CHANNELS = 64

#: With 16-31 channels every located bubble finally gets its position polished by its echoes
#: re-fitted at the times of flight it predicts, and is kept only if the coherent sum of the
#: channels there passes the noise-floor rule (:func:`_few_channel_final_check`; docs/ulm.md, "G-ULM
#: with few channels", rule 7). PyMUST 16 channels, 30 dB, 40 frames per cell: Jaccard +0.6..+5.4
#: points in all 8 cells, false positives 103 -> 38 over the 8 (docs/ulm.md). 32+ channels: not run.
FEW_CHANNEL_FINAL_CHECK = True

#: Polish (rule 7): an echo re-fitted at a bubble's predicted time of flight takes part when its
#: envelope peak reaches this many noise sigmas (Rayleigh sigma of the channel's band-passed
#: envelope) ...
FEW_CHANNEL_POLISH_SNR = 2.0
#: ... and the polished position is kept when at least this share of the channels agree with it
#: (within lambda/8 of path) with echoes of at least ``FEW_CHANNEL_STRONG_SNR`` sigmas (6 of 16):
#: where fewer strong echoes agree (deep bubbles on the L11-5v-like probe, whose 1.35-lambda wide
#: elements leave 4-5 channels above 3 sigmas at 30 dB) the weak echoes' phase noise moved good
#: positions 0.3 lambda off, and the matched position is kept.
FEW_CHANNEL_POLISH_SHARE = 0.375
FEW_CHANNEL_STRONG_SNR = 3.0
#: A move that keeps the depth within this many wavelengths (a lateral correction: the bubbles
#: located 0.25-0.56 lambda off on the L11-5v-like probe were all off laterally, depth within 0.12
#: lambda) needs only ``FEW_CHANNEL_LATERAL_STRONG`` strong agreeing echoes: a shallow bubble has
#: only 3-5 of the 16 channels in its f-number 1 aperture. Measured with the echoes' joint
#: removal (docs/ulm.md, "Lateral polish").
FEW_CHANNEL_LATERAL_DEPTH = 1 / 16
FEW_CHANNEL_LATERAL_STRONG = 4
#: Rule 7 (3): the coherent stage's search once more, on the data minus every bubble kept (their
#: polished positions, amplitudes fitted jointly), each bubble it finds kept if it passes test (2).
#: Weak bubbles that the first search missed stand out in this residual (PyMUST L11-5v-like 0 deg
#: 9 bubbles/frame, 30 dB: the 5 that G-ULM 16 missed and DAS-WA 128 found had coherent sums of
#: 5.8-15.4 noise sigmas there, against a 99th percentile of 3.6 at random points).
#: PyMUST 16 channels, 30 dB, 40 frames per cell: L11-5v-like +0.3..+1.0 points in all 4 cells
#: (0 deg 9 bubbles/frame 94.5 -> 95.1 %, ahead of DAS-WA 128's 94.8), L22-14v-like 0, 0, -0.3,
#: -0.2 (docs/ulm.md, "G-ULM with few channels", "Search once more").
FEW_CHANNEL_SEARCH = True


def _seed_min_channels(n_channels: int) -> int:
    """Default echoes that must agree with a coherent seed: an eighth of the channels, 3..8."""
    return max(3, min(8, n_channels // 8))


def _seed_min_participation(n_channels: int) -> float:
    return FEW_CHANNEL_SEED_PARTICIPATION if n_channels < 32 else 0.0


def _warn(message: str) -> None:
    from freehand3d.ulm.files import ULMWarning

    warnings.warn(message, ULMWarning, stacklevel=3)


def mask_nonfinite(rf: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(rf with NaN/Inf set to 0, per-channel "usable" mask, count of bad samples) of one frame
    (n_samples, n_elements). A channel with any non-finite sample is left out of that frame only."""
    finite = np.isfinite(rf)
    if finite.all():
        return rf, np.ones(rf.shape[1], bool), 0
    return np.where(finite, rf, 0.0), finite.all(axis=0), int((~finite).sum())


def resolve_pulse(rf: np.ndarray, probe: LinearProbe, pulse=None):
    """The reference two-way pulse to use: ``pulse`` as given (callable or (t, values)); for None
    the pulse estimated from ``rf`` (:func:`freehand3d.ulm.pulse.estimate_pulse`) with a warning;
    ``"analytic"`` the probe's model pulse (:meth:`LinearProbe.two_way_pulse`). When the data hold too
    few clean echoes to estimate it, the model pulse is used, with a warning saying so."""
    if isinstance(pulse, str):
        if pulse != "analytic":
            raise ValueError(f"pulse must be None, 'analytic', a callable or (t, values), got {pulse!r}")
        return None
    if pulse is not None:
        return pulse
    from freehand3d.ulm.pulse import estimate_pulse

    try:
        estimated = estimate_pulse(rf, probe)
    except ValueError as exc:
        _warn(f"no pulse given and {exc}; using the probe's analytic pulse model (times of arrival may be biased)")
        return None
    _warn("no pulse given: using the two-way pulse estimated from the data (median of isolated echoes)")
    return estimated


def select_channels(n_elements: int, channels: int) -> np.ndarray:
    """Indices of ``channels`` elements spread evenly over the aperture (both ends included)."""
    if channels < 2 or channels > n_elements:
        raise ValueError(f"channels must be between 2 and {n_elements}, got {channels}")
    return np.unique(np.round(np.linspace(0, n_elements - 1, channels)).astype(int))


def _direction(tx_angle: float) -> np.ndarray:
    return np.array([np.sin(tx_angle), np.cos(tx_angle)])


def default_baseline(probe: LinearProbe) -> float:
    """Default channel-pair baseline (mm): 3 mm, at most a quarter of the aperture.

    The lateral scatter of an intersection grows as (path error) x depth / baseline, so a longer
    baseline tolerates noisier times of arrival; a longer one also pairs more unrelated echoes and
    the two channels see the bubble under more different angles. Measured on PyMUST data at in-band
    SNR 30 dB (benchmarks/bench_ulm_pymust.py, docs/ulm.md): L11-5v-like 0.8 / 3 / 6 mm -> Jaccard
    65 / 82 / 74 %, L22-14v-like 0.8 / 1.5 / 3 mm -> 82 / 95 / 98 %.
    """
    aperture = probe.pitch * (probe.n_elements - 1)
    return float(min(3.0, aperture / 4))


def derived_parameters(probe: LinearProbe, channels: int = 128) -> dict:
    """The G-ULM parameters :func:`localize` uses by default for this probe and channel count."""
    chosen = select_channels(probe.n_elements, channels)
    spacing = float(np.median(np.diff(probe.element_x[chosen])))
    baseline = default_baseline(probe)
    gap = int(max(1, min(len(chosen) // 5 or 1, round(baseline / spacing))))
    n_pairs = max(1, len(chosen) - gap)
    lam = probe.wavelength
    verify_all = 4 <= len(chosen) < 32
    return {
        "baseline_mm": baseline,
        "gap": gap,
        "verify_all": verify_all,
        "pair_gaps": sorted({1, 2, gap}) if verify_all else [gap],
        "chance_false_alarms": 1.0,
        "pair_baseline_mm": gap * spacing,
        "bandwidth_mm": lam / 4,
        "tolerance_mm": lam / 8,
        "min_cluster_size": 1 if n_pairs < 4 else max(3, int(round(0.05 * n_pairs))),
        "min_votes": 2 if len(chosen) >= 64 else 1,
        "false_alarms": 10.0,
        "threshold_db": -26.0,
        "max_cost": 0.7,
        "coherent": len(chosen) >= 16,
        "seed_false_alarms": DEFAULT_FALSE_ALARMS,
        "seed_threshold_db": -20.0,
        "seed_min_channels": _seed_min_channels(len(chosen)),
        "seed_min_participation": _seed_min_participation(len(chosen)),
    }


def echo_paths(toa: np.ndarray, probe: LinearProbe, tx_angle: float = 0.0) -> np.ndarray:
    """Convert times of arrival (s) to plane-wave paths n.p + |p - e| (mm), see :mod:`.intersect`."""
    first_fired = np.min(probe.element_x * np.sin(tx_angle))
    return probe.speed_of_sound * np.asarray(toa, float) + first_fired


def _nearest_residual(paths_in_channel: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|nearest echo path - predicted| for predicted (N,) against paths (N, E) (NaN padded)."""
    diff = np.abs(paths_in_channel - predicted[:, None])
    diff = np.where(np.isfinite(diff), diff, np.inf)
    return diff.min(axis=1)


def match_echoes(
    paths: np.ndarray,
    element_x: np.ndarray,
    *,
    tx_angle: float = 0.0,
    gap: int = 1,
    amplitude: np.ndarray | None = None,
    max_amplitude_ratio: float = 3.0,
    tolerance: float = 0.01,
    min_votes: int = 2,
) -> np.ndarray:
    """Intersection points of matched echoes of channel pairs (i, i + gap), checked in other channels.

    Parameters
    ----------
    paths : array (M, E)
        Echo paths (mm) per selected channel, NaN padded.
    element_x : array (M,)
        Lateral positions of the selected elements (mm).
    tx_angle : float
        Plane-wave angle (radians).
    gap : int
        Channel pairs are ``gap`` selected channels apart (a longer baseline conditions the
        intersection better, a shorter one makes matching less ambiguous).
    amplitude : array (M, E), optional
        Fitted echo amplitudes; pairs whose ratio exceeds ``max_amplitude_ratio`` are not matched.
    tolerance : float
        Largest disagreement (mm of path) between a predicted and a found echo in a check channel.
    min_votes : int
        Check channels that must agree (capped by how many exist for the pair).

    Returns
    -------
    numpy.ndarray (N, 2)
        Validated intersection points (x, z) in mm.
    """
    paths = np.asarray(paths, float)
    n_channels = len(paths)
    if n_channels <= gap:
        return np.zeros((0, 2))
    n = _direction(tx_angle)
    elements = np.stack([element_x, np.zeros_like(element_x)], axis=1)
    i_idx = np.arange(n_channels - gap)
    j_idx = i_idx + gap
    di = paths[i_idx][:, :, None]  # (P, E, 1)
    dj = paths[j_idx][:, None, :]  # (P, 1, E)
    baseline = np.abs(element_x[j_idx] - element_x[i_idx])[:, None, None]
    feasible = np.abs(di - dj) <= baseline + tolerance  # triangle inequality on receive distances
    if amplitude is not None:
        ai = amplitude[i_idx][:, :, None]
        aj = amplitude[j_idx][:, None, :]
        ratio = ai / aj
        feasible &= (ratio <= max_amplitude_ratio) & (ratio >= 1 / max_amplitude_ratio)
    pair, ei_, ej_ = np.nonzero(feasible)
    if len(pair) == 0:
        return np.zeros((0, 2))
    ci, cj = i_idx[pair], j_idx[pair]
    points = intersect_plane_wave(elements[ci], paths[ci, ei_], elements[cj], paths[cj, ej_], n)
    ok = np.isfinite(points).all(axis=1)
    points, ci, cj = points[ok], ci[ok], cj[ok]
    # re-projection: the same scatterer must explain an echo in the check channels
    votes = np.zeros(len(points), int)
    available = np.zeros(len(points), int)
    checks = [ci - gap, cj + gap]
    if gap >= 2:
        checks.append((ci + cj) // 2)
    for check in checks:
        exists = (check >= 0) & (check < n_channels)
        if not exists.any():
            continue
        rows = np.flatnonzero(exists)
        ch = check[rows]
        predicted = points[rows] @ n + np.hypot(points[rows, 0] - element_x[ch], points[rows, 1])
        residual = _nearest_residual(paths[ch], predicted)
        votes[rows] += residual <= tolerance
        available[rows] += 1
    # pairs with no check channel at all (two-channel use) cannot be checked and are kept
    needed = np.minimum(min_votes, available)
    return points[votes >= needed]


def refine_positions(
    positions: np.ndarray,
    paths: np.ndarray,
    element_x: np.ndarray,
    *,
    tx_angle: float = 0.0,
    tolerance: float = 0.02,
    iterations: int = 4,
    min_channels: int = 3,
    max_move: float | None = None,
) -> np.ndarray:
    """Least-squares multilateration of each position from the echo paths it explains.

    For every position, each channel's echo nearest to the predicted path (within ``tolerance`` mm)
    is associated; then a few Gauss-Newton steps minimise the sum of squared path residuals.
    Positions with fewer than ``min_channels`` associated echoes are returned unchanged, and so are
    those that moved more than ``max_move`` (default ``tolerance``).
    """
    positions = np.array(positions, float, copy=True)
    start = positions.copy()
    if len(positions) == 0:
        return positions
    n = _direction(tx_angle)
    finite = np.where(np.isfinite(paths), paths, np.inf)

    def predict(p):  # (K, 2) -> (K, M)
        dx = p[:, 0:1] - element_x[None, :]
        r = np.hypot(dx, p[:, 1:2])
        return (p @ n)[:, None] + r, dx / r, p[:, 1:2] / r

    pred, _, _ = predict(positions)
    diff = np.abs(finite[None, :, :] - pred[:, :, None])  # (K, M, E)
    nearest = np.argmin(diff, axis=2)
    measured = np.take_along_axis(np.broadcast_to(finite, diff.shape), nearest[..., None], axis=2)[..., 0]
    used = np.take_along_axis(diff, nearest[..., None], axis=2)[..., 0] <= tolerance
    enough = used.sum(axis=1) >= min_channels
    for _ in range(iterations):
        pred, drdx, drdz = predict(positions)
        jac = np.stack([n[0] + drdx, n[1] + drdz], axis=-1) * used[..., None]  # (K, M, 2)
        res = np.where(used, measured - pred, 0.0)
        jtj = np.einsum("kmi,kmj->kij", jac, jac) + 1e-12 * np.eye(2)
        jtr = np.einsum("kmi,km->ki", jac, res)
        step = np.linalg.solve(jtj[enough], jtr[enough][..., None])[..., 0]
        positions[enough] += step
    # a centre that wanders far was pulled by echoes of another bubble: keep the cluster centre
    moved = np.linalg.norm(positions - start, axis=1) > (tolerance if max_move is None else max_move)
    positions[moved] = start[moved]
    return positions


def multilaterate(
    positions: np.ndarray,
    paths: np.ndarray,
    element_x: np.ndarray,
    *,
    tx_angle: float = 0.0,
    gates: tuple[float, ...] = (0.05, 0.025),
    iterations: int = 3,
    min_channels: int = 3,
    return_echoes: bool = False,
):
    """Least-squares intersection of all channels' ellipses for each start position, and its support.

    For each position (vectorised over all of them), every channel's echo nearest to the predicted
    path is associated when within the current gate (mm of path); a few Gauss-Newton steps minimise
    the squared path residuals; the gates shrink in turn (re-associating each time). Positions with
    fewer than ``min_channels`` associated echoes stop moving. Returns (positions (N, 2), support
    (N,) = channels whose nearest echo lies within the last gate of the final position); with
    ``return_echoes`` also that echo's index per channel (N, M), -1 where none agrees.
    """
    p = np.array(positions, float, copy=True).reshape(-1, 2)
    if len(p) == 0:
        return (p, np.zeros(0, int), np.zeros((0, len(element_x)), int)) if return_echoes else (p, np.zeros(0, int))
    n = _direction(tx_angle)
    finite = np.where(np.isfinite(paths), paths, np.inf)[None]  # (1, M, E)

    def associate(p, gate):
        dx = p[:, 0:1] - element_x[None, :]
        r = np.hypot(dx, p[:, 1:2])
        diff = finite - ((p @ n)[:, None] + r)[:, :, None]  # (N, M, E)
        nearest = np.argmin(np.abs(diff), axis=2)
        res = np.take_along_axis(diff, nearest[..., None], axis=2)[..., 0]
        return res, np.abs(res) <= gate, dx / r, p[:, 1:2] / r, nearest

    for gate in gates:
        for _ in range(iterations):
            res, used, drdx, drdz, _ = associate(p, gate)
            move = used.sum(axis=1) >= min_channels
            if not move.any():
                break
            jac = np.stack([n[0] + drdx, n[1] + drdz], axis=-1) * used[..., None]  # (N, M, 2)
            jtj = np.einsum("kmi,kmj->kij", jac[move], jac[move]) + 1e-12 * np.eye(2)
            jtr = np.einsum("kmi,km->ki", jac[move], np.where(used[move], res[move], 0.0))
            p[move] += np.linalg.solve(jtj, jtr[..., None])[..., 0]
    _, used, _, _, nearest = associate(p, gates[-1])
    if return_echoes:
        return p, used.sum(axis=1), np.where(used, nearest, -1)
    return p, used.sum(axis=1)


def chance_support(paths: np.ndarray, gate: float, candidates: int = 1, false_alarms: float = 1.0) -> int:
    """Agreeing channels that an intersection of unrelated echoes reaches by chance too rarely to matter.

    The two paired channels agree by construction. Any other channel m's nearest echo falls within
    +-``gate`` (the widest association gate of :func:`multilaterate`, whose fit then pulls it in) of
    an arbitrary predicted path with probability p_m = 2 gate x its echo count / the span of all echo
    paths, so the chance agreements are about Poisson with mean mu = sum p_m. With ``candidates``
    intersections tried, the support needed is 2 + the smallest k with
    candidates x P(Poisson(mu) >= k) <= ``false_alarms`` (expected chance candidates per frame,
    default 1: such a candidate must still win its echoes in :func:`_verified_centres`; PyMUST, 16
    channels, 30 dB, 40 frames per cell: 0.1 -> 1 raised L11-5v-like 90.9 / 93.9 % to 92.7 / 94.5 %
    at 9 bubbles per frame and 77.5 / 81.5 % to 84.8 / 85.6 % at 18 (seeds 1, 2), cost L22-14v-like
    96.7 -> 95.4 %, and noise-only frames kept 0 detections).
    """
    from scipy.stats import poisson

    finite = np.isfinite(paths)
    if not finite.any():
        return 2
    count = finite.sum(axis=1)
    span = max(float(paths[finite].max() - paths[finite].min()), 4 * gate)
    mu = float(np.minimum(2 * gate * count / span, 1.0).sum())
    k = 1
    while k < paths.shape[0] and max(candidates, 1) * poisson.sf(k - 1, mu) > false_alarms:
        k += 1
    return 2 + k


def suppress_ghosts(
    centres: np.ndarray,
    sizes: np.ndarray,
    *,
    merge_radius: float,
    ghost_radius: float,
    ghost_ratio: float = 3.0,
) -> np.ndarray:
    """Drop cluster centres explained by a better-supported neighbour.

    Overlapping echoes of two close bubbles create a few mismatched pairs whose intersections form
    small satellite clusters next to the true ones. A centre is dropped if a centre with more support
    lies within ``merge_radius``, or one with ``ghost_ratio`` times its support within
    ``ghost_radius``. Centres are expected most supported first (as :func:`mean_shift` returns).
    """
    centres = np.asarray(centres, float).reshape(-1, 2)
    sizes = np.asarray(sizes, float)
    keep = np.ones(len(centres), bool)
    order = np.argsort(-sizes, kind="stable")
    for rank, k in enumerate(order):
        stronger = order[:rank][keep[order[:rank]]]
        if len(stronger) == 0:
            continue
        d = np.linalg.norm(centres[stronger] - centres[k], axis=1)
        if np.any(d <= merge_radius) or np.any((d <= ghost_radius) & (sizes[stronger] >= ghost_ratio * sizes[k])):
            keep[k] = False
    return centres[keep]


def localize_frame(
    rf: np.ndarray,
    probe: LinearProbe,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    channels: int | np.ndarray = 128,
    bandwidth: float | None = None,
    min_cluster_size: int | None = None,
    gap: int | None = None,
    baseline: float | None = None,
    tolerance: float | None = None,
    refine: bool = False,
    threshold_db: float | None = -26.0,
    false_alarms: float = 10.0,
    max_cost: float = 0.7,
    merge_radius: float | None = None,
    ghost_radius: float | None = None,
    ghost_ratio: float = 3.0,
    min_votes: int | None = None,
    pulse=None,
    echoes: Echoes | None = None,
    coherent: bool | None = None,
    seed_false_alarms: float = DEFAULT_FALSE_ALARMS,
    seed_threshold_db: float | None = -20.0,
    seed_min_channels: int | None = None,
    pair_gaps=None,
    verify_all: bool | None = None,
) -> np.ndarray:
    """G-ULM on one RF frame (n_samples, n_elements); returns (K, 2) positions (x, z) in mm.

    See :func:`localize` for the parameters.
    """
    rf = np.asarray(rf)
    if rf.ndim != 2 or rf.shape[1] != probe.n_elements:
        raise ValueError(f"rf must be (n_samples, {probe.n_elements}), got {rf.shape}")
    chosen = select_channels(probe.n_elements, channels) if np.ndim(channels) == 0 else np.asarray(channels, int)
    rf, usable, _ = mask_nonfinite(rf)
    if not usable[chosen].all():  # channels with NaN/Inf samples sit this frame out
        chosen = chosen[usable[chosen]]
        echoes = None
        if len(chosen) < 2:
            return np.zeros((0, 2))
    element_x = probe.element_x[chosen]
    lam = probe.wavelength
    bandwidth = lam / 4 if bandwidth is None else bandwidth
    tolerance = lam / 8 if tolerance is None else tolerance
    if gap is None:
        baseline = default_baseline(probe) if baseline is None else baseline
        spacing = np.median(np.diff(element_x)) if len(element_x) > 1 else probe.pitch
        gap = int(max(1, min(len(chosen) // 5 or 1, round(baseline / spacing))))
    resolved = resolve_pulse(rf, probe, pulse) if (echoes is None or coherent) else None
    reference = reference_fit(probe, resolved) if (echoes is None or coherent) else None
    if echoes is None:
        echoes = find_echoes(rf[:, chosen], probe, t0=t0, threshold_db=threshold_db, false_alarms=false_alarms, max_cost=max_cost, reference=reference)
    paths = echo_paths(echoes.toa, probe, tx_angle)
    n_pairs = max(1, len(chosen) - gap)
    if min_votes is None:
        # many channels: two of the (up to three) check channels must confirm a pair; few
        # channels: one, or weak bubbles lose too many pairs in noise
        min_votes = 2 if len(chosen) >= 64 else 1
    if verify_all is None:
        # few channels (4..31): a bubble seen by few of them loses its only confirmed pair when one
        # neighbouring echo is hidden, and pairs of channels 8-13 wavelengths apart scatter laterally
        # (docs/ulm.md, "G-ULM with few channels"); two or three channels leave nothing to verify
        # against; with 32 it measured no better than the neighbour checks (analytic bench 92.0 vs
        # 92.8 %, PyMUST within a frame's bubbles either way), so those keep them
        verify_all = 4 <= len(chosen) < 32
    if verify_all:
        gaps = sorted({1, 2, gap}) if pair_gaps is None else sorted(set(np.atleast_1d(pair_gaps).astype(int).tolist()))
        centres = _verified_centres(paths, element_x, echoes.amplitude, tx_angle=tx_angle, gaps=gaps, tolerance=tolerance, bandwidth=bandwidth, lam=lam, side_lobe=reference.residual_level if reference is not None else 0.0, ghost_radius=ghost_radius)
        centres = _finish(centres, rf, probe, chosen, resolved, reference, echoes, paths, coherent, tx_angle, t0, seed_false_alarms, seed_threshold_db, seed_min_channels)
        # after all stages only: also running it on the echo-pair bubbles before the coherent stage
        # measured +0.6 / -0.8 points on PyMUST (L11-5v-like 0 deg 9 / 5 deg 18 bubbles) and 91.0 ->
        # 87.4 % on the analytic bench (clutter -20 dB: 3 more coherent-stage false positives)
        if FEW_CHANNEL_FINAL_CHECK and len(chosen) >= 16 and reference is not None:
            centres = _few_channel_final_check(centres, rf, probe, chosen, reference, resolved, tx_angle=tx_angle, t0=t0, false_alarms=seed_false_alarms, threshold_db=seed_threshold_db, min_channels=seed_min_channels)
        return centres
    points = match_echoes(paths, element_x, tx_angle=tx_angle, gap=gap, amplitude=echoes.amplitude, tolerance=tolerance, min_votes=min_votes)
    if min_cluster_size is None:
        # few pairs (tiny channel counts) cannot outvote anything; otherwise 5 % of the pairs, at
        # least three: in noise a weak bubble's echoes pass the noise floor in only a handful of
        # channels, while with many pairs a few mismatched ones make small ghost clusters
        min_cluster_size = 1 if n_pairs < 4 else max(3, int(round(0.05 * n_pairs)))
    centres, sizes = mean_shift(points, bandwidth, min_cluster_size=min_cluster_size)
    centres = suppress_ghosts(centres, sizes, merge_radius=lam / 2 if merge_radius is None else merge_radius, ghost_radius=2 * lam if ghost_radius is None else ghost_radius, ghost_ratio=ghost_ratio)
    if refine and len(centres):
        centres = refine_positions(centres, paths, element_x, tx_angle=tx_angle, tolerance=2 * tolerance)
    return _finish(centres, rf, probe, chosen, resolved, reference, echoes, paths, coherent, tx_angle, t0, seed_false_alarms, seed_threshold_db, seed_min_channels)


def _verified_centres(paths, element_x, amplitude, *, tx_angle, gaps, tolerance, bandwidth, lam, side_lobe=0.0, ghost_radius=None, rounds=4):
    """Few channels: intersections of all channel pairs ``gaps`` apart, each moved to the
    least-squares intersection of every channel's echo that agrees with it; one centre per cluster
    of the moved points; centres taken most supported first, each echo explaining one bubble only,
    kept when more channels agree than chance allows (:func:`chance_support`). In rounds: the echoes
    of the bubbles accepted are removed and the rest searched again, where fewer echoes make chance
    agreement rarer, so weaker bubbles need less support."""
    gates = (2 * tolerance, tolerance)
    channel = np.arange(paths.shape[0])
    claimed = np.zeros(paths.shape, bool)
    out, strength = [], []
    for _ in range(rounds):
        rest = np.where(claimed, np.nan, paths)
        cand = [match_echoes(rest, element_x, tx_angle=tx_angle, gap=g, amplitude=amplitude, tolerance=tolerance, min_votes=0) for g in gaps if g < len(rest)]
        points = np.concatenate(cand) if cand else np.zeros((0, 2))
        if len(points) == 0:
            break
        need = chance_support(rest, gates[0], candidates=len(points))
        _, support = multilaterate(points, rest, element_x, tx_angle=tx_angle, gates=(gates[0],), iterations=0)
        points = points[support >= 3]
        moved, support = multilaterate(points, rest, element_x, tx_angle=tx_angle, gates=gates)
        centres, _ = mean_shift(moved[support >= need], bandwidth, min_cluster_size=1)
        centres, support, which = multilaterate(centres, rest, element_x, tx_angle=tx_angle, gates=gates, return_echoes=True)
        accepted = 0
        for k in np.argsort(-support, kind="stable"):
            own = (which[k] >= 0) & ~claimed[channel, np.maximum(which[k], 0)]
            if own.sum() < need or (out and np.min(np.linalg.norm(np.asarray(out) - centres[k], axis=1)) <= lam / 2):
                continue
            if out and _cycle_slipped(rest[channel[own], which[k][own]], np.asarray(out), element_x[own], centres[k], tx_angle=tx_angle, lam=lam, tolerance=tolerance):
                continue
            out.append(centres[k])
            strength.append(float(np.median(np.abs(amplitude[channel[own], which[k][own]]))) if amplitude is not None else 1.0)
            # its echoes (within the wider gate, so that noisy ones leave no ghost behind) explain nothing else
            _, _, near = multilaterate(centres[k][None], np.where(claimed, np.nan, paths), element_x, tx_angle=tx_angle, gates=(gates[0],), iterations=0, return_echoes=True)
            hit = near[0] >= 0
            claimed[channel[hit], near[0][hit]] = True
            accepted += 1
        if accepted == 0:
            break
    out, strength = np.asarray(out).reshape(-1, 2), np.asarray(strength)
    if side_lobe > 0 and len(out) > 1:
        # the pulse's side lobes (echoes up to ``side_lobe`` of the main one, a carrier period or two
        # off, in every channel alike) form a consistent ghost just behind a strong bubble: a centre
        # within ``ghost_radius`` of one whose echoes are more than 1 / (2 side_lobe) times stronger
        # is taken for that (the rule :func:`find_echoes` applies to residual echoes)
        ghost_radius = 2 * lam if ghost_radius is None else ghost_radius
        d = np.linalg.norm(out[:, None] - out[None], axis=2)
        ghost = ((d <= ghost_radius) & (strength[None, :] * 2 * side_lobe > strength[:, None])).any(axis=1)
        out = out[~ghost]
    return out


def _cycle_slipped(own_paths, accepted, element_x, centre, *, tx_angle, lam, tolerance) -> bool:
    """Whether most of a centre's echo paths lie one carrier period (lambda of path) from the paths
    of a bubble accepted within 2 lambda: the same echoes timed one cycle off (the phase-precise
    time of arrival picked the neighbouring cycle), a ghost lambda/2 or so from the bubble."""
    near = accepted[np.linalg.norm(accepted - centre, axis=1) <= 2 * lam]
    if len(near) == 0 or len(own_paths) == 0:
        return False
    n = _direction(tx_angle)
    predicted = (near @ n)[:, None] + np.hypot(near[:, 0:1] - element_x[None, :], near[:, 1:2])  # (J, own)
    slipped = np.abs(np.abs(own_paths[None, :] - predicted) - lam) <= tolerance
    return bool((slipped.sum(axis=1) * 2 >= len(own_paths)).any())


def _finish(centres, rf, probe, chosen, resolved, reference, echoes, paths, coherent, tx_angle, t0, seed_false_alarms, seed_threshold_db, seed_min_channels):
    if coherent is None:
        # with fewer than 16 channels the f-number 1 aperture holds 2-5 of them: too few for the
        # agreement test to reject grating-lobe seeds (analytic bench, 8 channels: 25 false
        # positives per 10 frames, Jaccard 76.6 -> 67.2 %)
        coherent = len(chosen) >= 16
    if coherent:
        centres = _add_coherent(centres, rf, probe, chosen, reference, resolved, echoes, paths, tx_angle=tx_angle, t0=t0, false_alarms=seed_false_alarms, threshold_db=seed_threshold_db, min_channels=seed_min_channels)
    return centres


def default_depth_range(probe: LinearProbe, n_samples: int, t0: float = 0.0, tx_angle: float = 0.0) -> tuple[float, float]:
    """1 mm .. the deepest depth whose echoes lie wholly inside the record (16 carrier periods before
    its end, less the steering's extra path across the aperture); the DAS-WA default too."""
    t_end = t0 + n_samples / probe.sampling_frequency
    aperture = probe.pitch * (probe.n_elements - 1)
    depth = probe.speed_of_sound * (t_end - 16 / probe.center_frequency) / 2
    return (1.0, max(1.5, depth * np.cos(tx_angle) - aperture * abs(np.sin(tx_angle))))


def _add_coherent(centres, rf, probe, chosen, reference, pulse, echoes, paths, *, tx_angle, t0, false_alarms, threshold_db, min_channels):
    """Bubbles found by coherent seeding (:mod:`freehand3d.ulm.coherent`) that no centre explains."""
    from freehand3d.ulm.coherent import PulseModel, _subtract_from_band, coherent_bubbles
    from freehand3d.ulm.echoes import bandpass

    lam = probe.wavelength
    element_x = probe.element_x[chosen]
    # the echoes of the bubbles found so far are removed first, so that neither their side lobes
    # nor their echoes seed new bubbles, and a weak bubble next to a strong one is seen on its own
    model = PulseModel(probe, pulse, reference.half_window)
    band = bandpass(rf[:, chosen], probe)  # also the close-partner stage's data (nothing removed)
    rf_band, known_peak = _subtract_from_band(band.copy(), probe, echoes, paths, centres, element_x, model, tx_angle=tx_angle, t0=t0, tolerance=lam / 4)
    z_range = default_depth_range(probe, rf.shape[0], t0, tx_angle)
    if min_channels is None:
        min_channels = _seed_min_channels(len(chosen))
    found = coherent_bubbles(rf_band, probe, chosen, reference, model, z_range, known=centres, known_peak=known_peak, tx_angle=tx_angle, t0=t0, false_alarms=false_alarms, threshold_db=threshold_db, min_channels=min_channels, min_participation=_seed_min_participation(len(chosen)))
    out = [c for c in centres]
    for p in found:
        if not out or np.min(np.linalg.norm(np.asarray(out) - p, axis=1)) > lam / 2:
            out.append(p)
    out = np.asarray(out).reshape(-1, 2)
    if PARTNERS and len(chosen) >= PARTNER_MIN_CHANNELS and len(out):
        from freehand3d.ulm.partners import find_partners

        out = find_partners(band, probe, chosen, out, reference, model, tx_angle=tx_angle, t0=t0, min_channels=min_channels, false_alarms=false_alarms)
    return out


def localize(
    rf: np.ndarray,
    probe: LinearProbe | None = None,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    channels: int | np.ndarray = 128,
    bandwidth: float | None = None,
    min_cluster_size: int | None = None,
    gap: int | None = None,
    baseline: float | None = None,
    tolerance: float | None = None,
    refine: bool = False,
    threshold_db: float | None = -26.0,
    false_alarms: float = 10.0,
    max_cost: float = 0.7,
    merge_radius: float | None = None,
    ghost_radius: float | None = None,
    ghost_ratio: float = 3.0,
    min_votes: int | None = None,
    pulse=None,
    coherent: bool | None = None,
    seed_false_alarms: float = DEFAULT_FALSE_ALARMS,
    seed_threshold_db: float | None = -20.0,
    seed_min_channels: int | None = None,
    pair_gaps=None,
    verify_all: bool | None = None,
    progress: bool = False,
):
    """Localize microbubbles by geometric ULM.

    Parameters
    ----------
    rf : array (n_samples, n_elements) or (n_frames, n_samples, n_elements)
        RF channel data of plane-wave transmits.
    probe : LinearProbe, optional
        Array geometry, sampling and pulse (L22-14v-like defaults).
    tx_angle : float
        Plane-wave steering angle (radians).
    t0 : float
        Time (s) of the first sample.
    channels : int or array of int
        Number of channels used, spread evenly over the aperture, or the element indices.
    bandwidth : float, optional
        Mean-shift radius (mm); default lambda / 4.
    min_cluster_size : int, optional
        Intersection points a bubble needs; default 5 % of the channel pairs, at least 3 (1 when
        fewer than 4 pairs exist).
    gap : int, optional
        Channel-pair separation in selected channels; default the one nearest ``baseline`` mm, at
        most a fifth of the channels (so most pairs keep both check channels).
    baseline : float, optional
        Target element separation (mm) of the intersected channel pairs when ``gap`` is None;
        default :func:`default_baseline` (3 mm, at most a quarter of the aperture).
    tolerance : float, optional
        Re-projection tolerance (mm of path); default lambda / 8.
    refine : bool
        Refine cluster centres by least-squares multilateration over all channels.
    threshold_db : float or None
        Echoes must also reach this level relative to the frame maximum (None: noise floor only).
    false_alarms : float
        Noise-floor (CFAR) echo threshold: expected noise crossings per frame
        (:func:`freehand3d.ulm.echoes.cfar_threshold`); default 10: the geometric checks reject
        unmatched noise echoes (noise-only PyMUST frames at 10 and 30 dB: 0 detections with 1, 10
        and 30), and the lower threshold keeps weak echoes (16 channels, L22-14v-like, 30 dB:
        Jaccard 84 % with 0.1, 88 % with 10).
    max_cost : float
        Largest relative MEMGO residual of an accepted echo (0.7: a noisy but real echo leaves a
        large residual; geometry, not the fit, rejects noise).
    merge_radius, ghost_radius, ghost_ratio
        Satellite-cluster suppression (:func:`suppress_ghosts`); defaults lambda / 2, 2 lambda, 3.
    min_votes : int, optional
        Check channels that must confirm an intersection (:func:`match_echoes`); default 2 with 64
        or more channels, 1 with fewer.
    pulse : callable, (t, values), "analytic" or None
        Two-way pulse of the acquisition (envelope maximum at t = 0), e.g. the one stored in
        ``rf.npz``; None estimates it from the data (with a warning, :func:`resolve_pulse`);
        "analytic" takes the probe's model pulse. Sets the MEMGO reference and onset offset.
    coherent : bool, optional
        Coherent seeding stage (default: on with 16 or more channels) (:mod:`freehand3d.ulm.coherent`): weak bubbles whose echoes sit
        under each channel's noise floor (PyMUST, in-band SNR 20 dB, 128 channels: Jaccard
        41-66 % -> 96-100 %). With 64 or more channels it is followed by the close-partner stage
        (:mod:`freehand3d.ulm.partners`, ``pipeline.PARTNERS``).
    seed_false_alarms, seed_threshold_db : float
        Its detection rule, the same as DAS-WA's: noise-floor maxima per image (default
        ``baseline.DEFAULT_FALSE_ALARMS``, 1e-4) and a floor relative to the strongest bubble (-20 dB).
    seed_min_channels : int, optional
        Echoes that must agree with a seed's intersection; default an eighth of the channels,
        3..8 (and at least 60 % of the aperture's fitted echoes, beyond chance).
    pair_gaps : int or sequence of int, optional
        With ``verify_all``: the pair gaps intersected (default 1, 2 and ``gap``: a bubble whose
        echo one channel misses keeps a pair, and the baseline gap keeps a well-conditioned one).
    verify_all : bool, optional
        Few-channel matching (default: on with 4..31 channels; docs/ulm.md, "G-ULM with few
        channels"): every pair intersection is checked against all selected channels, moved to the
        least-squares intersection of the echoes that agree, and kept when more channels agree than
        chance allows (:func:`chance_support`); otherwise the neighbour checks of
        :func:`match_echoes` and mean-shift clusters (``min_votes``, ``min_cluster_size``).
    progress : bool
        Show a progress bar over frames.

    Returns
    -------
    numpy.ndarray (K, 2) for one frame, or (K, 3) with columns (frame, x, z) for several; mm.
    """
    if probe is None:
        _warn("no probe given: assuming the L22-14v-like LinearProbe() defaults")
        probe = LinearProbe()
    rf = np.asarray(rf)
    if rf.ndim not in (2, 3):
        raise ValueError("rf must be (n_samples, n_elements) or (n_frames, n_samples, n_elements)")
    bad = ~np.isfinite(rf)
    if bad.any():
        per_channel = bad.any(axis=-2)
        _warn(f"{int(bad.sum())} NaN/Inf RF samples in {int(per_channel.sum())} channel-frame(s): those channels are left out of those frames")
        if bad.all():
            raise ValueError("every RF sample is NaN or infinite")
    pulse = resolve_pulse(np.where(bad, 0.0, rf) if bad.any() else rf, probe, pulse)
    pulse = "analytic" if pulse is None else pulse  # resolved once for all frames
    kwargs = dict(tx_angle=tx_angle, t0=t0, channels=channels, bandwidth=bandwidth, min_cluster_size=min_cluster_size, gap=gap, baseline=baseline, tolerance=tolerance, refine=refine, threshold_db=threshold_db, false_alarms=false_alarms, max_cost=max_cost, merge_radius=merge_radius, ghost_radius=ghost_radius, ghost_ratio=ghost_ratio, min_votes=min_votes, pulse=pulse, coherent=coherent, seed_false_alarms=seed_false_alarms, seed_threshold_db=seed_threshold_db, seed_min_channels=seed_min_channels, pair_gaps=pair_gaps, verify_all=verify_all)
    if rf.ndim == 2:
        return localize_frame(rf, probe, **kwargs)
    if rf.ndim != 3:
        raise ValueError("rf must be (n_samples, n_elements) or (n_frames, n_samples, n_elements)")
    frames = range(len(rf))
    if progress:
        from rich.progress import track

        frames = track(frames, description="G-ULM")
    out = []
    for f in frames:
        pos = localize_frame(rf[f], probe, **kwargs)
        out.append(np.column_stack([np.full(len(pos), f), pos]))
    return np.concatenate(out) if out else np.zeros((0, 3))


def _few_channel_final_check(centres, rf, probe, chosen, reference, pulse, *, tx_angle, t0, false_alarms=DEFAULT_FALSE_ALARMS, threshold_db=-20.0, min_channels=None, iterations=2):
    """Few channels (16-31), after all stages: each located bubble is (1) re-positioned from its own
    echoes re-fitted at the times of flight its position predicts, and (2) kept only if the coherent
    sum of all selected channels at its position passes the noise-floor rule; both on the selected
    channels' data minus the echoes of every other located bubble (the amplitudes of all located
    bubbles' echoes fitted jointly in each channel, :func:`freehand3d.ulm.coherent.joint_echo_amplitudes`).

    (1) In each channel the window at the predicted time is fitted by one MEMGO component of the
    reference pulse's shape (:func:`freehand3d.ulm.coherent.gated_fits`): its time of arrival is the
    prediction corrected by the fitted carrier phase (within half a period), so the prediction picks
    the carrier cycle, not the channel's own envelope (which a neighbour's overlapping echo or the
    element's directivity shifts by a cycle). Echoes whose envelope peak reaches
    ``FEW_CHANNEL_POLISH_SNR`` noise sigmas take part, equally weighted (all channels, for the
    lateral leverage of the outer ones); the position is their least-squares intersection (gates
    lambda/4, lambda/8 of path), kept if it moved at most lambda/2 and at least
    ``FEW_CHANNEL_POLISH_SHARE`` of the channels agree with echoes of ``FEW_CHANNEL_STRONG_SNR``
    sigmas or more (``FEW_CHANNEL_LATERAL_STRONG`` echoes for a move that keeps the depth within
    ``FEW_CHANNEL_LATERAL_DEPTH`` wavelengths). Repeated ``iterations`` times (the other bubbles' removals use the new positions).

    (2) |sum over the channels of the analytic signal at the predicted times| (4x up-sampled, nearest
    sample) must reach k sigma of that sum's noise (sqrt of the summed channel noise powers), k =
    sqrt(2 ln(bubbles / false_alarms)): the coherent stage's per-seed re-test rule. A bubble made of
    other bubbles' echoes that line up by chance, or a satellite of a bubble found, leaves little
    there once those bubbles' echoes are removed.

    (3) With ``FEW_CHANNEL_SEARCH``: the coherent stage's search
    (:func:`freehand3d.ulm.coherent.coherent_bubbles`, same noise-floor, ``threshold_db`` and echo
    rules) once more on the data minus every bubble kept, each bubble it finds kept if it passes (2).
    Its seeds with 3-5 echoes fitted in the aperture are verified by the few-echo rule
    (``few_echoes``, :func:`freehand3d.ulm.coherent._echoes_agree`) as well as by the count.
    """
    from freehand3d.ulm.coherent import PulseModel, _Residual, _weighted_intersection, gated_fits, joint_echo_amplitudes, upsampled_analytic
    from freehand3d.ulm.echoes import bandpass
    from freehand3d.ulm.probe import echo_times
    from freehand3d.ulm.pulse import noise_floor

    centres = np.asarray(centres, float).reshape(-1, 2)
    if len(centres) == 0:
        return centres
    lam = probe.wavelength
    element_x = probe.element_x[chosen]
    direction = _direction(tx_angle)
    fs = probe.sampling_frequency
    factor = 4
    band = bandpass(rf[:, chosen], probe)
    analytic = upsampled_analytic(band, factor)
    sigma = noise_floor(np.abs(analytic[::factor]), axis=0)  # each channel's Rayleigh sigma
    model = PulseModel(probe, pulse, reference.half_window)
    peak_per_amplitude = reference.envelope_peak_per_amplitude
    strong_needed = max(3, int(round(FEW_CHANNEL_POLISH_SHARE * len(chosen))))
    channels = np.arange(len(chosen))

    def echoes(positions):
        """Times of flight (J, M, samples) of the bubbles at ``positions`` and their echoes'
        amplitudes A (J, M), echo = A pulse(t - toa), fitted jointly per channel
        (:func:`freehand3d.ulm.coherent.joint_echo_amplitudes`): where echoes of close bubbles
        overlap, each one's A no longer takes the other's echo too."""
        toa = np.array([(echo_times(c, probe, tx_angle)[chosen] - t0) * fs for c in positions]).reshape(-1, len(chosen))
        return toa, joint_echo_amplitudes(band, toa, model)

    def removal(toa, amp, which=None):
        """The data with the echoes (``echoes``) of all bubbles, or of those indexed by ``which``, removed."""
        rest = _Residual.of(band.copy(), analytic.copy(), factor)
        which = np.arange(len(toa)) if which is None else np.asarray(which, int)
        if len(which):
            rest.subtract_known(toa[which].ravel(), np.tile(channels, len(which)), amp[which].ravel(), model)
        return rest

    def without_others(positions):
        """For each bubble k, the data minus the echoes of every other one: all removed once, then
        k's own echoes (the same joint amplitudes) added back."""
        toa, amp = echoes(positions)
        every = removal(toa, amp)
        for k in range(len(positions)):
            own = removal(toa, amp, [k])
            yield k, _Residual.of(every.real + (band - own.real), every.analytic + (analytic - own.analytic), factor)

    out = centres.copy()
    for _ in range(iterations):
        moved = out.copy()
        for k, rest in without_others(out):
            params, ok, delay = gated_fits(rest.real, probe, chosen, out[k], reference, tx_angle=tx_angle, t0=t0)
            snr = np.abs(params[:, 0]) * peak_per_amplitude / np.maximum(sigma, 1e-30)
            ok &= snr >= FEW_CHANNEL_POLISH_SNR
            paths = echo_paths(np.where(ok, t0 + delay / fs, np.nan), probe, tx_angle)
            pos, used = _weighted_intersection(out[k], paths, np.ones(len(paths)), element_x, direction, (lam / 4, lam / 8))
            if not np.isfinite(pos).all() or used.sum() < 3 or np.linalg.norm(pos - centres[k]) > lam / 2:
                continue
            strong = (used & (snr >= FEW_CHANNEL_STRONG_SNR)).sum()
            lateral = abs(pos[1] - out[k][1]) <= FEW_CHANNEL_LATERAL_DEPTH * lam
            if strong < (min(FEW_CHANNEL_LATERAL_STRONG, strong_needed) if lateral else strong_needed):
                continue
            moved[k] = pos
        out = moved
    noise = np.sqrt(np.sum(sigma**2))

    def passes(positions, start=0):
        """Test (2) for the bubbles from index ``start`` on (k sigma for all of ``positions``)."""
        k_sigma = np.sqrt(2 * np.log(max(len(positions), 1) / false_alarms))
        keep = np.ones(len(positions), bool)
        for k, rest in without_others(positions):
            if k >= start:
                keep[k] = rest.point_sum(probe, chosen, positions[k], tx_angle=tx_angle, t0=t0, f_number=1e-6) >= k_sigma * noise
        return positions[keep]

    out = passes(out)
    if FEW_CHANNEL_SEARCH and len(out):
        from freehand3d.ulm.coherent import coherent_bubbles

        toa, amp = echoes(out)
        rest = removal(toa, amp)
        # the strongest kept bubble's coherent amplitude (its echoes' amplitudes summed over its
        # f-number 1 aperture), which the coherent stage's relative floor refers to
        strongest = float(np.max(np.sum(amp * (np.abs(element_x[None] - out[:, :1]) <= out[:, 1:] / 2), axis=1)))
        z_range = default_depth_range(probe, rf.shape[0], t0, tx_angle)
        extra = coherent_bubbles(rest.real, probe, chosen, reference, model, z_range, known=out, known_peak=strongest, tx_angle=tx_angle, t0=t0, false_alarms=false_alarms, threshold_db=threshold_db, min_channels=_seed_min_channels(len(chosen)) if min_channels is None else min_channels, min_participation=_seed_min_participation(len(chosen)), few_echoes=True)
        if len(extra):
            out = passes(np.vstack([out, extra]), start=len(out))
    return out
