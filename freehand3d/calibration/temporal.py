"""Temporal calibration: the lag between the tracker stream and the video stream.

Two position signals of the same up-and-down probe motion are aligned in time:

- the **video signal**: the depth (row, pixels) of the bright water-tank bottom line where it
  crosses the middle column of the search rectangle (:func:`bottom_line_positions`);
- the **tracker signal**: the probe position (ProbeToReference translation) projected onto its
  principal axis of motion (:func:`principal_motion_signal`).

Both are normalised (mean removed, divided by the standard deviation), the tracker signal is
resampled linearly at ``video time + lag`` for each candidate lag, and the lag with the smallest sum
of squared differences wins: first on a grid with the video frame period as step, then around the
best coarse lag with ``resolution_s`` steps. The direction of motion in the image is unknown, so
both polarities of the tracker signal are tried.

Sign convention (PLUS's ``TrackerLagSec``): the tracker sample that belongs to the video frame
stamped ``t`` is the one stamped ``t + lag``. A negative lag means the tracker timestamps are early.
To correct a recording, add ``-lag`` to the tracker timestamps (``freehand3d calibrate
--time-offset-s`` / PLUS's ``LocalTimeOffsetSec`` of the tracker).

These facts follow PLUS's vtkPlusTemporalCalibrationAlgo, vtkPlusLineSegmentationAlgo and
vtkPlusPrincipalMotionDetectionAlgo (scan lines, 50 %-of-peak centre of gravity, RANSAC line with a
0.5 px band, SSD on std-normalised signals, 0.5 s search range, both polarities, smallest lag of
the two). Two choices differ and are documented where they are made: the polarity is chosen by the
better alignment (``polarity="best"``; ``"plus"`` takes PLUS's smallest-|lag| rule), and the
uncertainty is a jackknife over contiguous blocks of the recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from freehand3d.errors import InputError

#: PLUS's line search: 40 scan lines, at least 5 with a peak, a RANSAC band of 0.5 px
N_SCANLINES = 40
MIN_SCANLINES = 5
RANSAC_BAND_PX = 0.5
PEAK_FRACTION = 0.5
#: PLUS refuses signals that barely move (mm for the tracker, px for the video)
MIN_TRACKER_SWING_MM = 8.0
MIN_VIDEO_SWING_PX = 30.0


@dataclass
class LineDetection:
    """Bottom-line detections of a frame stack (N frames).

    ``ok`` (N,) bool; ``origin`` (N, 2) a point on the line (mean of the inlier peaks, x = column,
    y = row, pixels); ``direction`` (N, 2) unit vector with x >= 0; ``position`` (N,) the row where
    the line crosses the middle column of the search rectangle (NaN where ``ok`` is False);
    ``inliers`` (N,) number of scan-line peaks on the line.
    """

    ok: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    position: np.ndarray
    inliers: np.ndarray


@dataclass
class TemporalResult:
    """Result of a temporal calibration (PLUS's ``TrackerLagSec`` convention, module docstring)."""

    tracker_lag_s: float
    tracker_lag_std_s: float
    method: str
    calibration_error: float  # RMS of the aligned signals, in tracker units (mm), as PLUS reports
    max_calibration_error: float
    polarity: int
    video_frames_used: int
    tracker_frames_used: int
    lag_on_bound: bool = False
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "tracker_lag_s": self.tracker_lag_s,
            "tracker_lag_std_s": self.tracker_lag_std_s,
            "method": self.method,
            "calibration_error": self.calibration_error,
            "max_calibration_error": self.max_calibration_error,
            "polarity": self.polarity,
            "video_frames_used": self.video_frames_used,
            "tracker_frames_used": self.tracker_frames_used,
            "lag_on_bound": self.lag_on_bound,
        }
        out.update(self.details)
        return out


# --------------------------------------------------------------------------- video signal


def _largest_peak_cog(profile: np.ndarray) -> float | None:
    """Centre of gravity of the brightest-area run above half the profile's maximum (PLUS's rule:
    a run that does not end before the profile does is not counted; a value exactly at the
    threshold neither starts nor ends a run)."""
    profile = np.asarray(profile)
    peak = int(profile.max())
    if peak <= 0:
        return None
    thr = PEAK_FRACTION * peak
    state = np.where(profile > thr, 1, np.where(profile < thr, -1, 0))
    nz = np.nonzero(state)[0]
    if len(nz) == 0:
        return None
    # at the threshold the previous state carries on
    filled = state[nz][np.maximum(np.searchsorted(nz, np.arange(len(profile)), side="right") - 1, 0)]
    filled[: nz[0]] = -1
    inside = filled > 0
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts = np.nonzero(edges == 1)[0]
    ends = np.nonzero(edges == -1)[0]
    if len(starts) and ends[-1] == len(profile):  # still inside at the end: never counted
        starts, ends = starts[:-1], ends[:-1]
    if len(starts) == 0:
        return None
    above = np.where(state > 0, profile.astype(np.int64), 0)
    csum = np.concatenate([[0], np.cumsum(above)])
    areas = csum[ends] - csum[starts]
    k = int(np.argmax(areas))  # first of equal areas, as PLUS keeps the first
    if areas[k] <= 0:
        return None
    start = int(starts[k])
    stop = start
    while stop < len(profile) and profile[stop] > thr:
        stop += 1
    seg = profile[start:stop].astype(np.float64)
    if seg.sum() <= 0:
        return None
    return float((seg * np.arange(start, stop)).sum() / seg.sum())


def _fit_line(points: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Largest consensus line through ``points`` (every pair tried, so the result is deterministic),
    refined by total least squares on its inliers: (origin, unit direction, inlier count)."""
    n = len(points)
    if n < 2:
        return None
    i, j = np.triu_indices(n, 1)
    d = points[j] - points[i]
    length = np.hypot(d[:, 0], d[:, 1])
    good = length > 0
    i, d, length = i[good], d[good], length[good]
    if len(i) == 0:
        return None
    normals = np.stack([-d[:, 1], d[:, 0]], axis=1) / length[:, None]
    dist = np.abs((points[None, :, :] - points[i][:, None, :]) @ normals[:, :, None])[..., 0]
    inl = dist <= band
    counts = inl.sum(axis=1)
    k = int(np.argmax(counts))
    if counts[k] < 2:
        return None
    chosen = points[inl[k]]
    origin = chosen.mean(axis=0)
    _, _, vt = np.linalg.svd(chosen - origin, full_matrices=False)
    direction = vt[0]
    if direction[0] < 0:
        direction = -direction
    return origin, direction, int(counts[k])


def bottom_line_positions(
    frames: np.ndarray,
    clip: tuple[int, int, int, int] | None = None,
    n_scanlines: int = N_SCANLINES,
) -> LineDetection:
    """Find the bright straight line (a water-tank bottom) in each frame.

    Parameters
    ----------
    frames : (N, H, W) array
        B-mode frames, MF orientation.
    clip : (x, y, width, height) or None
        Search rectangle in pixels (whole frame when None); clipped to the frame.
    n_scanlines : int
        Number of evenly spaced columns searched for an intensity peak.

    Returns
    -------
    LineDetection
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must be (N, H, W) images, got shape {frames.shape}")
    n, h, w = frames.shape
    if clip is None or clip[2] <= 0 or clip[3] <= 0:
        x0, y0, cw, ch = 0, 0, w, h
    else:
        x0, y0, cw, ch = (int(v) for v in clip)
        if not (0 <= x0 < w and 0 <= y0 < h):
            x0, y0 = 0, 0
        cw, ch = min(cw, w - x0), min(ch, h - y0)
    spacing = (cw - 1) / (n_scanlines - 1)
    columns = np.array([int(x0 + spacing * k) for k in range(n_scanlines)])
    ok = np.zeros(n, bool)
    origin = np.full((n, 2), np.nan)
    direction = np.full((n, 2), np.nan)
    position = np.full(n, np.nan)
    inliers = np.zeros(n, int)
    for f in range(n):
        block = frames[f, y0:y0 + ch][:, columns]
        pts = []
        for k, col in enumerate(columns):
            cog = _largest_peak_cog(block[:, k])
            if cog is not None:
                pts.append((float(col), y0 + cog))
        if len(pts) < 2:
            continue
        fit = _fit_line(np.array(pts), RANSAC_BAND_PX)
        if fit is None:
            continue
        o, d, count = fit
        if d[0] < 0.01:  # nearly vertical: its crossing with the middle column is unstable
            continue
        ok[f] = True
        origin[f], direction[f], inliers[f] = o, d, count
        t = (x0 + 0.5 * cw - o[0]) / d[0]
        position[f] = abs(o[1] + t * d[1])
    return LineDetection(ok, origin, direction, position, inliers)


# --------------------------------------------------------------------------- tracker signal


def principal_motion_signal(positions: np.ndarray) -> np.ndarray:
    """Project (N, 3) positions onto their first principal axis (mm)."""
    positions = np.asarray(positions, dtype=np.float64)
    centred = positions - positions.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return positions @ vt[0]


# --------------------------------------------------------------------------- alignment


def _normalise(values: np.ndarray) -> tuple[np.ndarray, float]:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    if not np.isfinite(std) or std < 1e-10:
        return values - values.mean(), 1.0
    return (values - values.mean()) / std, 1.0 / std


def _ssd_curve(t_fixed, fixed, t_moving, moving, offsets):
    """Negative SSD between the normalised fixed signal and the moving signal resampled at
    ``t_fixed + offset`` (linear, clamped at the ends), for each offset; also the normalisation
    factor of the moving signal at each offset."""
    values = np.empty(len(offsets))
    factors = np.empty(len(offsets))
    fixed_n, _ = _normalise(fixed)
    for i, off in enumerate(offsets):
        resampled = np.interp(t_fixed + off, t_moving, moving)
        moving_n, factor = _normalise(resampled)
        values[i] = -float(((fixed_n - moving_n) ** 2).sum())
        factors[i] = factor
    return values, factors


def _search(t_fixed, fixed, t_moving, moving, max_lag, resolution):
    period = (t_fixed[-1] - t_fixed[0]) / max(len(t_fixed) - 1, 1)
    coarse = np.arange(-max_lag, max_lag + 1e-12, period)
    values, _ = _ssd_curve(t_fixed, fixed, t_moving, moving, coarse)
    best = coarse[int(np.argmax(values))]
    fine = np.arange(best - 3 * period, best + 3 * period + 1e-12, resolution)
    fine = fine[np.abs(fine) <= max_lag + 1e-12]  # the fine search stays inside the range
    fvalues, factors = _ssd_curve(t_fixed, fixed, t_moving, moving, fine)
    k = int(np.argmax(fvalues))
    return float(fine[k]), float(fvalues[k]), float(factors[k])


def align_signals(
    t_video: np.ndarray,
    video: np.ndarray,
    t_tracker: np.ndarray,
    tracker: np.ndarray,
    max_lag_s: float = 0.5,
    resolution_s: float = 0.001,
    polarity: str = "best",
    method: str = "line",
    n_blocks: int = 5,
) -> TemporalResult:
    """Tracker lag that best aligns a tracker position signal with a video position signal.

    Parameters
    ----------
    t_video, video : (N,) arrays
        Video frame timestamps (s) and the image position signal (any unit).
    t_tracker, tracker : (M,) arrays
        Tracker timestamps (s) and the tracker position signal (mm).
    max_lag_s : float
        Search range (PLUS: 0.5 s); the tracker signal is cut by this much at both ends of the
        common time range so every candidate lag sees real samples.
    resolution_s : float
        Step of the fine search (PLUS: 1 ms).
    polarity : "best" or "plus"
        Which sign of the tracker signal to keep: the one that aligns better (default), or
        PLUS's rule (the one giving the smaller |lag|).
    n_blocks : int
        Contiguous blocks for the jackknife uncertainty (0: no uncertainty).

    Returns
    -------
    TemporalResult
    """
    t_video = np.asarray(t_video, float)
    video = np.asarray(video, float)
    t_tracker = np.asarray(t_tracker, float)
    tracker = np.asarray(tracker, float)
    lo = max(t_video[0], t_tracker[0])
    hi = min(t_video[-1], t_tracker[-1])
    if lo + max_lag_s >= hi - max_lag_s:
        raise ValueError(
            f"the video ({t_video[0]:.3f}..{t_video[-1]:.3f} s) and tracker ({t_tracker[0]:.3f}.."
            f"{t_tracker[-1]:.3f} s) recordings overlap too little for a +-{max_lag_s:g} s lag search"
        )
    vmask = (t_video >= lo) & (t_video <= hi)
    tmask = (t_tracker >= lo + max_lag_s) & (t_tracker <= hi - max_lag_s)
    tv, v = t_video[vmask], video[vmask]
    tt, s = t_tracker[tmask], tracker[tmask]
    if len(tv) < 4 or len(tt) < 4:
        raise ValueError("too few video or tracker samples in the common time range")
    if np.ptp(s) < MIN_TRACKER_SWING_MM:
        raise ValueError(f"the tracker signal swings only {np.ptp(s):.1f} mm (need >= {MIN_TRACKER_SWING_MM:g})")

    results = {}
    for sign in (1, -1):
        results[sign] = _search(tv, v, tt, sign * s, max_lag_s, resolution_s)
    if polarity == "plus":
        sign = 1 if abs(results[1][0]) < abs(results[-1][0]) else -1
    elif polarity == "best":
        sign = 1 if results[1][1] >= results[-1][1] else -1
    else:
        raise ValueError(f"polarity must be 'best' or 'plus', not {polarity!r}")
    lag, value, factor = results[sign]

    # PLUS's error figures: RMS and max of the aligned normalised signals, in tracker units
    fixed_n, _ = _normalise(v)
    inside = (tt > tv[0] + lag) & (tt < tv[-1] + lag)
    moving_n, _ = _normalise(sign * s[inside]) if inside.sum() > 1 else (sign * s, 1.0)
    resampled = np.interp(tv + lag, tt[inside] if inside.sum() > 1 else tt, moving_n)
    err = np.abs(resampled - fixed_n)
    cal_error = float(np.sqrt(-value) / factor)
    max_error = float(err.max() / factor)

    std = float("nan")
    blocks = []
    if n_blocks and n_blocks >= 3:
        edges = np.linspace(tv[0], tv[-1], n_blocks + 1)
        for b in range(n_blocks):
            keep = ~((tv >= edges[b]) & (tv < edges[b + 1] if b < n_blocks - 1 else tv <= edges[b + 1]))
            if keep.sum() < 4:
                continue
            blocks.append(_search(tv[keep], v[keep], tt, sign * s, max_lag_s, resolution_s)[0])
        if len(blocks) >= 3:
            arr = np.array(blocks)
            m = len(arr)
            std = float(np.sqrt((m - 1) / m * ((arr - arr.mean()) ** 2).sum()))
    on_bound = abs(abs(lag) - max_lag_s) < 2 * resolution_s
    return TemporalResult(
        tracker_lag_s=lag,
        tracker_lag_std_s=std,
        method=method,
        calibration_error=cal_error,
        max_calibration_error=max_error,
        polarity=sign,
        video_frames_used=int(len(tv)),
        tracker_frames_used=int(len(tt)),
        lag_on_bound=bool(on_bound),
        details={"max_lag_s": max_lag_s, "jackknife_lags_s": [float(x) for x in blocks],
                 "lag_other_polarity_s": results[-sign][0]},
    )


def probe_to_reference(sweep, probe: str = "ProbeToTracker", reference: str = "ReferenceToTracker"):
    """(N, 4, 4) ProbeToReference and its validity, from a sweep with both tracker transforms
    (or a ProbeToReference transform)."""
    if "ProbeToReference" in sweep.transforms:
        return sweep.transforms["ProbeToReference"], sweep.valid["ProbeToReference"].copy()
    if probe not in sweep.transforms:
        raise InputError(f"has no {probe} (or ProbeToReference) transform; it has "
                         f"{', '.join(sweep.transforms) or 'none'}", sweep.source)
    mats = sweep.transforms[probe]
    ok = sweep.valid[probe].copy()
    if reference in sweep.transforms:
        ref = sweep.transforms[reference]
        ok &= sweep.valid[reference]
        out = np.full_like(mats, np.nan)
        out[ok] = np.linalg.inv(ref[ok]) @ mats[ok]
        return out, ok
    return mats, ok


def _unique_sorted(times: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Indices of frames with ``keep`` and a finite timestamp, sorted by time, duplicates dropped
    (PLUS requires unique timestamps)."""
    idx = np.nonzero(keep & np.isfinite(times))[0]
    idx = idx[np.argsort(times[idx], kind="stable")]
    if len(idx) > 1:
        dup = np.diff(times[idx]) <= 1e-4
        idx = idx[np.concatenate([[True], ~dup])]
    return idx


def temporal_calibrate_line(
    video_sweep,
    tracker_sweep,
    clip: tuple[int, int, int, int] | None = None,
    max_lag_s: float = 0.5,
    resolution_s: float = 0.001,
    polarity: str = "best",
) -> tuple[TemporalResult, LineDetection]:
    """Water-tank temporal calibration from a video recording and a tracker recording (the same
    sweep may hold both). Returns the result and the per-frame line detections."""
    v_idx = _unique_sorted(video_sweep.timestamps, np.ones(len(video_sweep), bool))
    if len(v_idx) < 4:
        raise InputError("has fewer than 4 frames with timestamps", video_sweep.source)
    if video_sweep.frame_shape[0] * video_sweep.frame_shape[1] == 0:
        raise InputError("holds no images (tracker-only); give the video recording first", video_sweep.source)
    # cheap checks before the line search
    mats, ok = probe_to_reference(tracker_sweep)
    t_idx = _unique_sorted(tracker_sweep.timestamps, ok)
    if len(t_idx) < 4:
        raise InputError("has fewer than 4 valid tracked frames", tracker_sweep.source)
    tv_all = video_sweep.timestamps[v_idx]
    tt_all = tracker_sweep.timestamps[t_idx]
    overlap = min(tv_all[-1], tt_all[-1]) - max(tv_all[0], tt_all[0])
    if overlap <= 2 * max_lag_s:
        raise InputError(
            f"its time range ({tt_all[0]:.3f}..{tt_all[-1]:.3f} s) and the video's ({tv_all[0]:.3f}.."
            f"{tv_all[-1]:.3f} s) overlap by {max(overlap, 0):.3f} s, less than the +-{max_lag_s:g} s lag "
            "search needs: were they recorded together?", tracker_sweep.source)
    lines = bottom_line_positions(video_sweep.frames, clip)
    good = v_idx[lines.ok[v_idx]]
    if len(good) < 4:
        raise InputError(f"a bottom line was found in only {len(good)} frames", video_sweep.source)
    pv = lines.position[good]
    if np.ptp(pv) < MIN_VIDEO_SWING_PX:
        raise InputError(f"the bottom line moves only {np.ptp(pv):.1f} px (need >= {MIN_VIDEO_SWING_PX:g}): "
                         "move the probe up and down more", video_sweep.source)
    tt = tracker_sweep.timestamps[t_idx]
    pos = mats[t_idx, :3, 3]
    # the principal axis over the frames PLUS uses (common range shrunk by the search range)
    lo = max(video_sweep.timestamps[good][0], tt[0])
    hi = min(video_sweep.timestamps[good][-1], tt[-1])
    inner = (tt >= lo + max_lag_s) & (tt <= hi - max_lag_s)
    if inner.sum() < 4:
        raise InputError("the video and tracker recordings overlap too little in time "
                         f"for a +-{max_lag_s:g} s lag search", tracker_sweep.source)
    centred = pos[inner] - pos[inner].mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    signal = pos @ axis
    try:
        result = align_signals(video_sweep.timestamps[good], pv, tt, signal, max_lag_s, resolution_s,
                               polarity, method="water-tank-line")
    except ValueError as exc:
        raise InputError(str(exc), tracker_sweep.source) from None
    result.details["line_frames"] = int(lines.ok.sum())
    result.details["video_frames_total"] = int(len(video_sweep))
    return result, lines


def temporal_calibrate_nwire(
    sweep,
    phantom,
    *,
    params=None,
    phantom_to_reference: np.ndarray | None = None,
    max_lag_s: float = 1.0,
    n_blocks: int = 5,
    detection: str = "hessian",
    seed: int = 0,
    progress=None,
) -> TemporalResult:
    """Tracker lag from an N-wire calibration recording alone: the constant time offset that
    :func:`~freehand3d.calibration.pipeline.calibrate` estimates jointly with ImageToProbe (poses
    interpolated at ``timestamp + lag``), same sign as PLUS's ``TrackerLagSec``.

    The uncertainty is a delete-a-block jackknife: the recording is cut into ``n_blocks``
    contiguous time blocks, the calibration is redone without each, and
    ``std = sqrt((m-1)/m * sum (lag_i - mean)^2)``.
    """
    from freehand3d.calibration.pipeline import calibrate

    def run(sw):
        res = calibrate(sw, phantom, solver="ransac-lm", seed=seed, params=params, detection=detection,
                        phantom_to_reference=phantom_to_reference, time_offset=True,
                        max_time_offset_s=max_lag_s, progress=progress)
        return res

    full = run(sweep)
    if full.time_offset_s is None:
        raise InputError("the frames' timestamps do not increase strictly, so no lag can be estimated "
                         "(sort the recording by time first)", sweep.source)
    lags = []
    if n_blocks and n_blocks >= 3:
        t = np.asarray(sweep.timestamps, float)
        order = np.argsort(t)
        blocks = np.array_split(order, n_blocks)
        for block in blocks:
            keep = np.ones(len(sweep), bool)
            keep[block] = False
            try:
                part = run(sweep.subset(np.flatnonzero(keep)))
            except Exception:  # a block whose removal leaves too few frames: skip it
                continue
            if part.time_offset_s is not None:
                lags.append(float(part.time_offset_s))
    std = float("nan")
    if len(lags) >= 3:
        arr = np.array(lags)
        m = len(arr)
        std = float(np.sqrt((m - 1) / m * ((arr - arr.mean()) ** 2).sum()))
    lag = float(full.time_offset_s)
    return TemporalResult(
        tracker_lag_s=lag,
        tracker_lag_std_s=std,
        method="nwire",
        calibration_error=float(full.pre3d_calibration_mean_mm),
        max_calibration_error=float("nan"),
        polarity=1,
        video_frames_used=int(full.calibration.usable.sum()),
        tracker_frames_used=int(full.calibration.usable.sum()),
        lag_on_bound=bool(abs(abs(lag) - max_lag_s) < 0.01 * max_lag_s),
        details={"max_lag_s": max_lag_s, "jackknife_lags_s": lags,
                 "pre3d_calibration_mean_mm": float(full.pre3d_calibration_mean_mm),
                 "frames_segmented": int(full.frames_segmented), "frames_total": int(full.frames_total),
                 "image_to_probe": np.asarray(full.image_to_probe).tolist()},
    )


def clip_from_device_set(path) -> tuple[int, int, int, int] | None:
    """The line-search rectangle (x, y, width, height) of a PLUS device set's
    ``vtkPlusTemporalCalibrationAlgo`` (or older ``vtkTemporalCalibrationAlgo``) element, or None."""
    import xml.etree.ElementTree as ET

    from freehand3d.errors import ConfigError

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot be read as XML ({exc})", path) from None
    for name in ("vtkPlusTemporalCalibrationAlgo", "vtkTemporalCalibrationAlgo"):
        el = root.find(f".//{name}")
        if el is None:
            continue
        origin, size = el.get("ClipRectangleOrigin"), el.get("ClipRectangleSize")
        if origin is None or size is None:
            return None
        try:
            o = [int(float(v)) for v in origin.split()]
            z = [int(float(v)) for v in size.split()]
        except ValueError:
            raise ConfigError(f"{name}: ClipRectangleOrigin/Size are not numbers ({origin!r}, {size!r})", path) from None
        if len(o) != 2 or len(z) != 2 or min(o) < 0 or min(z) <= 0:
            raise ConfigError(f"{name}: ClipRectangleOrigin/Size must be two non-negative / positive "
                              f"numbers each ({origin!r}, {size!r})", path)
        return o[0], o[1], z[0], z[1]
    return None


def temporal_calibrate_files(
    video_path,
    output,
    *,
    tracker_path=None,
    config=None,
    phantom=None,
    clip: tuple[int, int, int, int] | None = None,
    max_lag_s: float | None = None,
    polarity: str = "best",
    resolution_s: float = 0.001,
    n_blocks: int = 5,
    progress=None,
) -> TemporalResult:
    """What ``freehand3d temporal-calibrate`` runs: read, calibrate, write ``output`` (JSON) atomically.

    Without ``phantom``: the water-tank method on ``video_path`` (its images) and ``tracker_path``
    (or the video recording's own ProbeToTracker). With ``phantom`` (a phantom name, YAML or PLUS
    device set; ``config`` gives segmentation settings and PhantomToReference): the N-wire method on
    ``video_path`` alone.
    """
    import json
    import warnings
    from pathlib import Path

    from freehand3d._atomic import write_text_atomic
    from freehand3d.errors import ConfigError
    from freehand3d.io import read_sweep

    if polarity not in ("best", "plus"):
        raise ConfigError(f"--polarity must be best or plus, not {polarity!r}")
    if max_lag_s is not None and not (np.isfinite(max_lag_s) and 0 < max_lag_s <= 10):
        raise ConfigError(f"--max-lag must be between 0 and 10 s, got {max_lag_s!r}")
    if not (np.isfinite(resolution_s) and 1e-5 <= resolution_s <= 0.1):
        raise ConfigError(f"--resolution must be between 1e-5 and 0.1 s, got {resolution_s!r}")
    if clip is not None and (len(clip) != 4 or min(clip[2:]) <= 0 or min(clip[:2]) < 0):
        raise ConfigError(f"--clip needs X Y WIDTH HEIGHT with a positive size, got {clip!r}")
    for p in (video_path, tracker_path, config):
        if p is not None and not Path(p).exists():
            raise (ConfigError if p is config else InputError)("file not found", p)
    if Path(output).is_dir():
        raise ConfigError("is a folder; give a .json file name", output)
    if phantom is not None:
        if tracker_path is not None:
            raise ConfigError("--tracker is for the water-tank method; the N-wire method (--phantom) "
                              "takes the lag from the tracked N-wire recording alone")
        from freehand3d.io.plus_segmentation import SegmentationParams
        from freehand3d.phantoms import load_phantom

        model = load_phantom(phantom)
        params = SegmentationParams()
        ptr = None
        for candidate in (phantom, config):
            if candidate is not None and str(candidate).lower().endswith(".xml") and Path(candidate).exists():
                from freehand3d.io.plus_config import read_device_set

                ds = read_device_set(candidate)
                if isinstance(ds.segmentation, SegmentationParams):
                    params = ds.segmentation
                if "PhantomToReference" in ds.coordinate_definitions:
                    ptr = ds.coordinate_definitions["PhantomToReference"].matrix
        sweep = read_sweep(video_path)
        if sweep.frame_shape[0] * sweep.frame_shape[1] == 0:
            raise InputError("holds no images (tracker-only); the N-wire method needs the tracked "
                             "N-wire recording", video_path)
        result = temporal_calibrate_nwire(sweep, model, params=params, phantom_to_reference=ptr,
                                          max_lag_s=1.0 if max_lag_s is None else max_lag_s,
                                          n_blocks=n_blocks, progress=progress)
        result.details["video_file"] = str(video_path)
    else:
        if clip is None and config is not None:
            clip = clip_from_device_set(config)
        video = read_sweep(video_path)
        if video.frame_shape[0] * video.frame_shape[1] == 0:
            raise InputError("holds no images (a tracker-only recording); give the video recording "
                             "first and the tracker recording with --tracker", video_path)
        tracker = read_sweep(tracker_path) if tracker_path is not None else video
        result, lines = temporal_calibrate_line(video, tracker, clip, 0.5 if max_lag_s is None else max_lag_s,
                                                resolution_s, polarity)
        result.details.update({
            "video_file": str(video_path),
            "tracker_file": None if tracker_path is None else str(tracker_path),
            "clip_rectangle": None if clip is None else list(clip),
            "line_position_px": [None if not ok else float(p) for ok, p in zip(lines.ok, lines.position)],
        })
    if result.lag_on_bound:
        warnings.warn(f"the lag estimate {result.tracker_lag_s:+.3f} s sits on the search bound "
                      f"(+-{result.details['max_lag_s']:g} s): the true lag may be larger; widen --max-lag",
                      stacklevel=2)
    write_text_atomic(output, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def apply_tracker_lag(sweep, lag_s: float):
    """A copy of ``sweep`` whose every tracker transform is read at ``timestamp + lag_s`` (SLERP and
    linear interpolation between the valid poses, PLUS's TrackerLagSec sign), so the images and
    poses agree in time; frames whose shifted time falls outside a transform's valid poses are marked
    invalid for it. Feed the result to ``reconstruct`` or ``calibrate``."""
    from freehand3d.calibration.solve import poses_at_times
    from freehand3d.sweep import Sweep

    if not np.isfinite(lag_s):
        raise ValueError(f"lag must be a finite number of seconds, got {lag_s!r}")
    t = np.asarray(sweep.timestamps, float)
    if len(t) < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise InputError("the frames' timestamps are missing or do not increase strictly, so a lag cannot "
                         "be applied (sort the recording by time first)", sweep.source)
    transforms, valid = {}, {}
    for name, mats in sweep.transforms.items():
        ok = np.asarray(sweep.valid[name], bool)
        query = t + lag_s
        out = np.full_like(mats, np.nan)
        good = np.zeros(len(t), bool)
        if ok.sum() >= 2:
            inside = (query >= t[ok][0]) & (query <= t[ok][-1])
            out[inside] = poses_at_times(t[ok], mats[ok], query[inside])
            good = inside
        transforms[name], valid[name] = out, good
    metadata = dict(sweep.metadata)
    metadata["TrackerLagSecApplied"] = repr(float(lag_s))
    return Sweep(frames=sweep.frames, spacing=sweep.spacing, timestamps=t.copy(), transforms=transforms,
                 valid=valid, image_to_probe=sweep.image_to_probe, metadata=metadata,
                 frame_fields={k: list(v) for k, v in sweep.frame_fields.items()}, source=sweep.source)


__all__ = [
    "LineDetection", "TemporalResult", "bottom_line_positions", "principal_motion_signal",
    "align_signals", "temporal_calibrate_line", "temporal_calibrate_nwire", "temporal_calibrate_files",
    "clip_from_device_set", "probe_to_reference", "apply_tracker_lag",
]
