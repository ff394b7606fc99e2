"""Stage 1 of N-wire calibration: find the bright wire cross-sections ("dots") in a B-mode frame.

Two methods, each a chain of small functions that can be run and tested alone:

``method="hessian"`` (Liu et al., Sensors 2025, 25, 5104)
    :func:`line_top_hat` (image minus the largest grey opening by line structuring elements at 0,
    45, 90 and 135 degrees: removes elongated echoes of phantom walls and membranes) ->
    :func:`hessian_blob_response` (scale-normalised Hessian determinant, max over scales chosen from
    the expected blob size) -> :func:`local_maxima` (threshold at a fraction of the maximum,
    8-connected non-maximum suppression) -> a contrast test against the top-hat background ->
    sub-pixel centre: by default PLUS's intensity-weighted centroid of the dot's connected blob
    (top-hat opened by a disc, PLUS's threshold, raised above the background in speckle), or the
    quadratic peak fit / the paper's 8-neighbourhood pixel on the B-mode image.

``method="plus"`` (PLUS ``PlusFidSegmentation``)
    :func:`plus_morphology` (bar top-hats at 0/45/90/135 degrees applied one after the other, then
    an opening by a disc) -> threshold at ``ThresholdImagePercent`` of the range -> 8-connected
    clusters -> intensity-weighted centroids, best ``NumberOfMaximumFiducialPointCandidates`` kept.

Pixel coordinates are (x = column, y = row) with the origin at the centre of the top-left pixel,
as PLUS writes its segmented points.
"""

from __future__ import annotations

import math

import numpy as np

from freehand3d.io.plus_segmentation import SegmentationParams

#: detection methods accepted by :func:`detect_points`
METHODS = ("hessian", "plus")
#: the centroid level stays above this multiple of the 99.5th percentile of the background (the
#: search region without the candidate blobs); 1.5 measured best on simulated speckle
BACKGROUND_MARGIN = 1.5
#: sub-pixel refinements accepted by :func:`refine_subpixel`
SUBPIXEL_MODES = ("centroid", "quadratic", "neighbourhood", "none")
#: Gaussian smoothing (mm) of the B-mode image before the quadratic peak fit
QUADRATIC_SMOOTHING_MM = 0.1


def _cv2():
    import cv2

    return cv2


def line_kernels(half_length_px: int) -> list[np.ndarray]:
    """Line structuring elements (uint8) at 0, 45, 90 and 135 degrees, ``2 * half + 1`` pixels
    long; 45 degrees rises to the right (image rows grow downwards)."""
    n = 2 * int(half_length_px) + 1
    horizontal = np.ones((1, n), np.uint8)
    vertical = np.ones((n, 1), np.uint8)
    rising = np.fliplr(np.eye(n, dtype=np.uint8)).copy()
    falling = np.eye(n, dtype=np.uint8)
    return [horizontal, rising, vertical, falling]


def disc_kernel(radius_px: int) -> np.ndarray:
    """Disc structuring element: pixels within ``radius_px`` of the centre (PLUS's circle)."""
    r = int(radius_px)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (np.hypot(x, y) <= r).astype(np.uint8)


def line_top_hat(image: np.ndarray, half_length_px: int) -> np.ndarray:
    """White top-hat by line elements: ``image - max_k opening_k(image)`` over four orientations.

    A structure longer than the line in any orientation survives one of the openings and is removed;
    a compact dot shorter than the line in every direction is kept.

    Parameters
    ----------
    image : (H, W) uint8.
    half_length_px : half length of the line elements in pixels.

    Returns
    -------
    (H, W) uint8.
    """
    cv2 = _cv2()
    img = np.ascontiguousarray(image, dtype=np.uint8)
    opened = None
    for kernel in line_kernels(half_length_px):
        o = cv2.morphologyEx(img, cv2.MORPH_OPEN, kernel)
        opened = o if opened is None else np.maximum(opened, o, out=opened)
    return cv2.subtract(img, opened)


def blob_sigmas(blob_diameter_mm: float, spacing_mm: float, n_scales: int = 3) -> np.ndarray:
    """Gaussian scales (pixels) for blobs of about ``blob_diameter_mm``: the scale of a disc of
    radius r is r / sqrt(2); the set spans half to twice that diameter geometrically."""
    radius_px = 0.5 * blob_diameter_mm / spacing_mm
    centre = max(radius_px / math.sqrt(2.0), 0.7)
    if n_scales <= 1:
        return np.array([centre])
    return centre * np.geomspace(0.5, 2.0, n_scales)


def hessian_blob_response(image: np.ndarray, sigmas) -> np.ndarray:
    """Scale-normalised Hessian determinant ``(Ixx Iyy - Ixy^2) sigma^4`` of bright blobs, max over
    ``sigmas``; zero where the Hessian is not negative definite (not a bright blob).

    Parameters
    ----------
    image : (H, W) array.
    sigmas : Gaussian scales in pixels.

    Returns
    -------
    (H, W) float32 response.
    """
    cv2 = _cv2()
    img = np.asarray(image, np.float32)
    best = np.zeros(img.shape, np.float32)
    for sigma in np.atleast_1d(sigmas):
        sigma = float(sigma)
        smooth = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        ixx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
        iyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
        ixy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3) * 0.25  # the 3x3 kernel of d2/dxdy sums to 4x
        det = (ixx * iyy - ixy * ixy) * np.float32(sigma**4)
        det[ixx >= 0] = 0  # keep maxima of intensity (bright blobs) only
        np.maximum(best, det, out=best)
    return best


def local_maxima(response: np.ndarray, threshold_fraction: float = 0.04, radius_px: int = 1,
                 max_count: int | None = None) -> np.ndarray:
    """Peaks of ``response``: above ``threshold_fraction * max`` and the largest value in their
    (2 r + 1)^2 neighbourhood (r = 1: 8-connected non-maximum suppression).

    Returns
    -------
    (K, 2) int array of (x, y), strongest first.
    """
    cv2 = _cv2()
    resp = np.asarray(response, np.float32)
    top = float(resp.max()) if resp.size else 0.0
    if top <= 0:
        return np.zeros((0, 2), int)
    size = 2 * int(radius_px) + 1
    dilated = cv2.dilate(resp, np.ones((size, size), np.uint8))
    peak = (resp >= dilated) & (resp > threshold_fraction * top)
    ys, xs = np.nonzero(peak)
    order = np.argsort(-resp[ys, xs], kind="stable")
    xs, ys = xs[order], ys[order]
    # plateaus give several equal maxima: keep the first of any pair closer than the radius
    keep = []
    for i in range(len(xs)):
        if all(abs(xs[i] - xs[j]) > radius_px or abs(ys[i] - ys[j]) > radius_px for j in keep):
            keep.append(i)
            if max_count is not None and len(keep) >= max_count:
                break
    return np.stack([xs[keep], ys[keep]], axis=1).astype(int) if keep else np.zeros((0, 2), int)


def refine_subpixel(image: np.ndarray, peaks: np.ndarray, radius_px: int, mode: str = "centroid",
                    background_fraction: float = 0.1, background_level: float | None = None) -> np.ndarray:
    """Sub-pixel centres of the blobs at integer ``peaks``.

    Parameters
    ----------
    image : (H, W) intensity the centres are measured on (e.g. the top-hat image).
    peaks : (K, 2) integer (x, y).
    radius_px : half size of the square window around each peak.
    mode : ``"centroid"`` intensity-weighted centroid of the pixels above ``background_fraction``
        of the window maximum (or above ``background_level`` when given); ``"quadratic"`` peak of a 2D quadratic fitted to the 3x3
        neighbourhood of the smoothed image; ``"neighbourhood"`` the paper's choice: the pixel whose
        8-neighbourhood mean is largest in the window; ``"none"`` the peaks themselves.

    Returns
    -------
    (K, 2) float (x, y).
    """
    if mode not in SUBPIXEL_MODES:
        raise ValueError(f"unknown sub-pixel mode {mode!r}; use one of {', '.join(SUBPIXEL_MODES)}")
    peaks = np.asarray(peaks, int).reshape(-1, 2)
    out = peaks.astype(float)
    if mode == "none" or len(peaks) == 0:
        return out
    img = np.asarray(image, np.float64)
    h, w = img.shape
    r = max(int(radius_px), 1)
    if mode == "neighbourhood":
        cv2 = _cv2()
        mean3 = cv2.blur(img.astype(np.float32), (3, 3))
    for k, (x, y) in enumerate(peaks):
        x0, x1, y0, y1 = max(x - r, 0), min(x + r + 1, w), max(y - r, 0), min(y + r + 1, h)
        if mode == "centroid":
            win = img[y0:y1, x0:x1]
            level = background_fraction * win.max() if background_level is None else background_level
            # PLUS weights each pixel above the threshold by its full value
            wts = np.where(win >= level, win, 0.0)
            # only the blob the peak belongs to: a neighbouring dot or echo in the window must not
            # pull the centre towards it
            _, labels = _cv2().connectedComponents((wts > 0).astype(np.uint8), connectivity=8)
            own = labels[y - y0, x - x0]
            if own > 0:
                wts[labels != own] = 0
            total = wts.sum()
            if total > 0:
                gy, gx = np.mgrid[y0:y1, x0:x1]
                out[k] = (gx * wts).sum() / total, (gy * wts).sum() / total
        elif mode == "neighbourhood":
            win = mean3[y0:y1, x0:x1]
            iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
            out[k] = x0 + ix, y0 + iy
        else:  # quadratic
            if 1 <= x < w - 1 and 1 <= y < h - 1:
                p = img[y - 1 : y + 2, x - 1 : x + 2]
                dx = 0.5 * (p[1, 2] - p[1, 0])
                dy = 0.5 * (p[2, 1] - p[0, 1])
                dxx = p[1, 2] - 2 * p[1, 1] + p[1, 0]
                dyy = p[2, 1] - 2 * p[1, 1] + p[0, 1]
                dxy = 0.25 * (p[2, 2] - p[2, 0] - p[0, 2] + p[0, 0])
                hess = np.array([[dxx, dxy], [dxy, dyy]])
                det = dxx * dyy - dxy * dxy
                if det > 0 and dxx < 0:
                    step = -np.linalg.solve(hess, [dx, dy])
                    if np.all(np.abs(step) <= 1.0):
                        out[k] = x + step[0], y + step[1]
    return out


def plus_morphology(image: np.ndarray, params: SegmentationParams, spacing_mm: float | None = None) -> np.ndarray:
    """PLUS's morphological pre-processing: subtract the bar openings at 0, 45, 90 and 135 degrees
    one after the other, then open with a disc. Returns (H, W) uint8."""
    cv2 = _cv2()
    spacing = params.approximate_spacing_mm_per_pixel if spacing_mm is None else spacing_mm
    bar = int(math.floor(params.morphological_opening_bar_size_mm / spacing + 0.5))
    radius = int(math.floor(params.morphological_opening_circle_radius_mm / spacing + 0.5))
    work = np.ascontiguousarray(image, dtype=np.uint8).copy()
    for kernel in line_kernels(bar):
        work = cv2.subtract(work, cv2.morphologyEx(work, cv2.MORPH_OPEN, kernel))
    return cv2.morphologyEx(work, cv2.MORPH_OPEN, disc_kernel(radius))


def _segment_plus(frame: np.ndarray, params: SegmentationParams, spacing_mm: float):
    """PLUS segmentation -> (points (K, 2), scores (K,)), strongest first."""
    cv2 = _cv2()
    h, w = frame.shape
    bar = int(math.floor(params.morphological_opening_bar_size_mm / spacing_mm + 0.5))
    x0, y0, x1, y1 = _search_region(params, (h, w), bar)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 2)), np.zeros(0)
    # the morphology of the region needs the pixels one bar around it
    cx0, cy0, cx1, cy1 = x0 - bar, y0 - bar, x1 + bar, y1 + bar
    work = plus_morphology(frame[cy0:cy1, cx0:cx1], params, spacing_mm)
    work = work[bar : bar + (y1 - y0), bar : bar + (x1 - x0)]
    top = int(work.max())
    if top == 0:
        return np.zeros((0, 2)), np.zeros(0)
    bottom = int(work.min())
    thresh = bottom + int(math.floor((top - bottom) * params.threshold_image_percent / 100.0 + 0.5))
    mask = (work >= max(thresh, 1)).astype(np.uint8)
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 1:
        return np.zeros((0, 2)), np.zeros(0)
    lab = labels.ravel()
    wts = np.where(mask.ravel() > 0, work.ravel().astype(np.float64) / 255.0, 0.0)
    gy, gx = np.divmod(np.arange(lab.size), work.shape[1])
    total = np.bincount(lab, wts, n)[1:]
    cx = np.bincount(lab, wts * gx, n)[1:] / total + x0
    cy = np.bincount(lab, wts * gy, n)[1:] / total + y0
    score = total
    if params.use_original_image_intensity_for_dot_intensity_score:
        orig = frame[y0:y1, x0:x1].ravel().astype(np.float64) / 255.0
        near = (gx + x0 - cx[lab - 1]) ** 2 + (gy + y0 - cy[lab - 1]) ** 2 <= 9.0
        near &= lab > 0
        score = np.bincount(lab[near], orig[near], n)[1:]
    # PLUS drops dots within 8 pixels of the search-region border
    margin = 8
    ok = (cy >= y0 + margin) & (cy < y1 - margin) & (cx >= x0 + margin) & (cx < x1 - margin)
    pts = np.stack([cx, cy], axis=1)[ok]
    score = score[ok]
    order = np.argsort(-score, kind="stable")[: params.number_of_maximum_fiducial_point_candidates]
    return pts[order], score[order]


def detect_points(
    frame: np.ndarray,
    spacing_mm: float | None = None,
    method: str = "hessian",
    *,
    params: SegmentationParams | None = None,
    blob_diameter_mm: float = 1.0,
    n_scales: int = 3,
    threshold_fraction: float = 0.01,
    subpixel: str = "centroid",
    top_hat: bool = True,
    multiscale: bool = True,
    max_candidates: int | None = None,
    min_contrast: float = 1.1,
    return_scores: bool = False,
):
    """Candidate wire cross-sections in one B-mode frame.

    Parameters
    ----------
    frame : (H, W) uint8 B-mode image.
    spacing_mm : pixel size in mm (isotropic); default ``params.approximate_spacing_mm_per_pixel``.
    method : ``"hessian"`` (top-hat + multi-scale Hessian, Liu et al. 2025) or ``"plus"``
        (PLUS's morphology + threshold + clusters).
    params : PLUS segmentation parameters (clip rectangle, bar and disc sizes, threshold, number of
        candidates); PLUS defaults when None. The Hessian method uses the clip rectangle, the bar
        size (for its top-hat) and the number of candidates.
    blob_diameter_mm : expected dot size, sets the Hessian scales and the refinement window.
    n_scales : number of Hessian scales (``multiscale=False`` uses the single central scale).
    threshold_fraction : keep Hessian peaks above this fraction of the strongest (paper: 0.04).
    subpixel : ``"centroid"`` (default; PLUS's dot centre, see above), ``"quadratic"`` (peak of a
        quadratic fitted to the B-mode image smoothed by ``QUADRATIC_SMOOTHING_MM``),
        ``"neighbourhood"`` (the paper's brightest 8-neighbourhood pixel) or ``"none"``.
    top_hat, multiscale : switch stages off (for ablation studies).
    min_contrast : Hessian candidates must reach this multiple of the 99.5th percentile of the
        top-hat image (0 switches the test off).
    max_candidates : keep the strongest this many (default ``NumberOfMaximumFiducialPointCandidates``
        of ``params``; on the top-hat image the wires are the strongest Hessian peaks, measured:
        always among the first 12 on the "high" simulated noise).
    return_scores : also return the (K,) detection strengths.

    Returns
    -------
    points : (K, 2) float (x, y) pixels, strongest first; ``(points, scores)`` if ``return_scores``.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.zeros((200, 200), np.uint8); frame[98:103, 60:65] = 200
    >>> detect_points(frame, 0.1).round(1)
    array([[62., 100.]])
    """
    if method not in METHODS:
        raise ValueError(f"unknown detection method {method!r}; use one of {', '.join(METHODS)}")
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be a 2D image, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        # thresholds are 8-bit grey levels: only a lossless cast is done here, never a silent
        # clip or rescale (issue 14); other data is converted by the caller, explicitly
        lossless = frame.dtype.kind in "iuf" and frame.size and np.isfinite(frame).all() and \
            frame.min() >= 0 and frame.max() <= 255 and (frame == np.round(frame)).all()
        if not lossless:
            from freehand3d.errors import InputError

            raise InputError(f"N-wire detection takes 8-bit grey frames, got {frame.dtype} values outside "
                             "0..255 integers: convert with freehand3d.sweep.to_uint8 (CLI: --to-uint8)")
        frame = frame.astype(np.uint8)
    params = params or SegmentationParams()
    spacing = float(params.approximate_spacing_mm_per_pixel if spacing_mm is None else spacing_mm)
    if not spacing > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    limit = params.number_of_maximum_fiducial_point_candidates if max_candidates is None else max_candidates

    if method == "plus":
        pts, scores = _segment_plus(frame, params, spacing)
        pts, scores = pts[:limit], scores[:limit]
        return (pts, scores) if return_scores else pts

    cv2 = _cv2()
    h, w = frame.shape
    bar = max(int(math.floor(params.morphological_opening_bar_size_mm / spacing + 0.5)), 1)
    x0, y0, x1, y1 = _search_region(params, (h, w), bar)
    if x1 <= x0 or y1 <= y0:
        return _no_points(return_scores)
    # process the search region plus one bar around it, so the top-hat is exact inside
    cx0, cy0, cx1, cy1 = max(x0 - bar, 0), max(y0 - bar, 0), min(x1 + bar, w), min(y1 + bar, h)
    crop = frame[cy0:cy1, cx0:cx1]
    # the Hessian runs on the line top-hat (the paper's enhancement); the centres are measured on
    # PLUS's image, the top-hat opened by a disc, which removes speckle smaller than a wire echo.
    # The disc must not come before the Hessian: in speckle it clips a wire echo (a few pixels
    # high) down to the level of the grains around it and the dot is lost
    tophat = line_top_hat(crop, bar) if top_hat else crop
    radius = int(math.floor(params.morphological_opening_circle_radius_mm / spacing + 0.5))
    enhanced = cv2.morphologyEx(tophat, cv2.MORPH_OPEN, disc_kernel(radius)) if top_hat else crop
    sigmas = blob_sigmas(blob_diameter_mm, spacing, n_scales if multiscale else 1)
    box = (y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0)  # the search region inside the crop
    inner = np.zeros(crop.shape, dtype=bool)
    inner[box[0] : box[1], box[2] : box[3]] = True
    # echoes many pixels wide need no full resolution for the Hessian: halve the image while the
    # smallest scale stays above 1 pixel (4x fewer pixels, half-size kernels)
    factor = 2 if sigmas.min() >= 2.0 else 1
    if factor > 1:
        small_shape = (crop.shape[1] // factor, crop.shape[0] // factor)
        small = cv2.resize(tophat, small_shape, interpolation=cv2.INTER_AREA)
        small_inner = cv2.resize(inner.astype(np.uint8), small_shape, interpolation=cv2.INTER_NEAREST) > 0
    else:
        small, small_inner = tophat, inner
    response = hessian_blob_response(small, sigmas / factor)
    response[~small_inner] = 0
    nms_radius = max(int(round(0.5 * blob_diameter_mm / spacing / factor)), 1)
    peaks = local_maxima(response, threshold_fraction, nms_radius, max_count=limit)
    if len(peaks) == 0:
        return _no_points(return_scores)
    scores = response[peaks[:, 1], peaks[:, 0]].astype(float)
    if factor > 1:
        peaks = _snap_to_full_resolution(tophat, peaks, factor)
    if min_contrast > 0:
        # a relative threshold alone finds "dots" in pure speckle: a wire echo must also stand out
        # from the brightest background (99.5th percentile of the top-hat search region)
        background = _u8_percentile(_histogram(tophat[box[0] : box[1], box[2] : box[3]]), 99.5)
        peak_value = cv2.dilate(tophat, np.ones((5, 5), np.uint8))[peaks[:, 1], peaks[:, 0]]
        strong = peak_value >= min_contrast * max(background, 1.0)
        peaks, scores = peaks[strong], scores[strong]
        if len(peaks) == 0:
            return _no_points(return_scores)
    # the window must hold a whole echo: wire echoes are elongated (about 2x the nominal size)
    window = max(int(round(1.5 * blob_diameter_mm / spacing)), 2)
    if subpixel == "centroid":
        level = plus_threshold(enhanced[box[0] : box[1], box[2] : box[3]], params.threshold_image_percent)
        pts, scores = _component_centroids(enhanced, box, peaks, scores, window, level)
    elif subpixel == "quadratic":
        # peak of the echo itself: the original image, smoothed a little against speckle
        smooth = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), QUADRATIC_SMOOTHING_MM / spacing)
        start = refine_subpixel(smooth, peaks, 2, "neighbourhood").astype(int)
        pts = refine_subpixel(smooth, start, 1, "quadratic")
    else:
        pts = refine_subpixel(crop, peaks, window, subpixel)
    pts = pts + [cx0, cy0]
    return (pts, scores) if return_scores else pts


def _no_points(return_scores):
    empty = np.zeros((0, 2))
    return (empty, np.zeros(0)) if return_scores else empty


def _search_region(params: SegmentationParams, shape, bar: int):
    """PLUS's search region: the clip rectangle, kept one bar (+1 pixel) away from the frame
    border where the morphology is not defined."""
    h, w = shape
    x0, y0, x1, y1 = params.clip_rectangle((h, w))
    return max(x0, bar + 1), max(y0, bar + 1), min(x1, w - bar - 1), min(y1, h - bar - 1)


def _snap_to_full_resolution(image, peaks, factor):
    """Full-resolution pixel of each downsampled peak: the brightest in its factor-sized cell and
    one pixel around it."""
    h, w = image.shape
    out = np.empty_like(peaks)
    for k, (x, y) in enumerate(peaks):
        x0, y0 = max(x * factor - 1, 0), max(y * factor - 1, 0)
        x1, y1 = min(x * factor + factor + 1, w), min(y * factor + factor + 1, h)
        win = image[y0:y1, x0:x1]
        iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
        out[k] = x0 + ix, y0 + iy
    return out


def plus_threshold(values: np.ndarray, percent: float) -> int:
    """PLUS's binarisation level: ``min + round(percent % of (max - min))`` (integer grey level,
    pixels at or above it belong to dots), at least 1."""
    top, bottom = int(values.max()), int(values.min())
    return max(bottom + int(math.floor((top - bottom) * percent / 100.0 + 0.5)), 1)


def _u8_percentile(hist: np.ndarray, q: float) -> int:
    """Grey level at percentile ``q`` of a 256-bin histogram (the lowest level with at least q % of
    the pixels at or below it)."""
    cum = np.cumsum(hist)
    if cum[-1] <= 0:
        return 0
    return int(np.searchsorted(cum, q / 100.0 * cum[-1]))


def _histogram(image: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 image (a 2D region: OpenCV's, ~10x faster than bincount)."""
    if image.ndim == 2 and image.size > 4096:
        return _cv2().calcHist([image], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(np.ascontiguousarray(image, np.uint8).ravel(), minlength=256).astype(np.int64)


def _component_centroids(image, box, peaks, scores, window, level):
    """Intensity-weighted centroid of the connected blob (pixels >= ``level``, 8-connected) under
    each peak, as PLUS computes its dots; peaks on the same blob (an elongated echo can give two
    Hessian maxima) become one dot.

    In speckle PLUS's level joins a dot to the grains around it, so the level is raised above
    ``BACKGROUND_MARGIN`` x the brightest background (the 99.5th percentile of what lies outside the
    candidate blobs). In a water bath that background is black and PLUS's level stands (same dots
    as PLUS)."""
    cv2 = _cv2()
    y0, y1, x0, x1 = box  # the search region: blobs are labelled inside it only
    region = image[y0:y1, x0:x1]
    px, py = peaks[:, 0] - x0, peaks[:, 1] - y0
    in_box = (px >= 0) & (px < x1 - x0) & (py >= 0) & (py < y1 - y0)

    def label_at(lvl):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((region >= lvl).view(np.uint8), connectivity=8)
        own = np.zeros(len(peaks), dtype=labels.dtype)
        own[in_box] = labels[py[in_box], px[in_box]]
        return labels, stats, own

    labels, stats, own = label_at(level)
    # histogram of the region without the candidate blobs
    rest = _histogram(region)
    for label in np.unique(own[own > 0]):
        bx, by, bw, bh = stats[label, :4]
        rest -= _histogram(region[by : by + bh, bx : bx + bw][labels[by : by + bh, bx : bx + bw] == label])
    background = BACKGROUND_MARGIN * _u8_percentile(rest, 99.5)
    if background >= level:
        level = math.floor(background) + 1
        labels, stats, own = label_at(level)
    out_pts, out_scores, seen = [], [], set()
    for k, label in enumerate(own):
        if label > 0:
            if label in seen:
                continue
            seen.add(label)
            bx, by, bw, bh = stats[label, :4]
            sub = labels[by : by + bh, bx : bx + bw] == label
            bx, by = bx + x0, by + y0  # back to the image's coordinates
            # weighted centroid inside the blob's bounding box only (cheap)
            wts = np.where(sub, image[by : by + bh, bx : bx + bw], 0).astype(np.float64)
            total = wts.sum()
            gy, gx = np.mgrid[by : by + bh, bx : bx + bw]
            out_pts.append(((gx * wts).sum() / total, (gy * wts).sum() / total))
        else:  # a peak on a faint blob below the level: centroid in its own window
            out_pts.append(tuple(refine_subpixel(image, peaks[k : k + 1], window, "centroid")[0]))
        out_scores.append(scores[k])
    return np.asarray(out_pts, float).reshape(-1, 2), np.asarray(out_scores, float)


__all__ = [
    "METHODS",
    "SUBPIXEL_MODES",
    "detect_points",
    "line_kernels",
    "disc_kernel",
    "line_top_hat",
    "blob_sigmas",
    "hessian_blob_response",
    "local_maxima",
    "refine_subpixel",
    "plus_morphology",
]
