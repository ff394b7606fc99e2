"""Density maps of localizations (ULM images) and their PNG rendering."""

from __future__ import annotations

import os

import numpy as np

from freehand3d._atomic import atomic_path

__all__ = ["density_map", "ground_truth_points", "save_density_png"]


def ground_truth_points(list_pos: np.ndarray) -> np.ndarray:
    """PALA ListPos (n_bubbles, 3, n_frames) -> (N, 3) rows (frame, x, z) of present bubbles."""
    list_pos = np.asarray(list_pos, float)
    b, f = np.nonzero(np.isfinite(list_pos[:, 0, :]) & np.isfinite(list_pos[:, 1, :]))
    return np.column_stack([f, list_pos[b, 0, f], list_pos[b, 1, f]])


def density_map(
    positions: np.ndarray,
    extent: tuple[float, float, float, float],
    pixel: float,
    *,
    sigma: float = 0.0,
) -> np.ndarray:
    """Count localizations per pixel.

    Parameters
    ----------
    positions : array (N, 2)
        (x, z) in mm.
    extent : (x_min, x_max, z_min, z_max)
        Field of view in mm.
    pixel : float
        Pixel size in mm (e.g. lambda / 10).
    sigma : float
        Gaussian smoothing in pixels (0 = raw counts).

    Returns
    -------
    numpy.ndarray (n_z, n_x) float64, row 0 = shallowest.
    """
    positions = np.asarray(positions, float).reshape(-1, 2)
    x0, x1, z0, z1 = extent
    nx = max(1, int(np.ceil((x1 - x0) / pixel)))
    nz = max(1, int(np.ceil((z1 - z0) / pixel)))
    counts, _, _ = np.histogram2d(positions[:, 1], positions[:, 0], bins=(nz, nx), range=((z0, z0 + nz * pixel), (x0, x0 + nx * pixel)))
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        counts = gaussian_filter(counts, sigma)
    return counts


def save_density_png(
    path: str | os.PathLike,
    positions: np.ndarray,
    pixel: float,
    *,
    extent: tuple[float, float, float, float] | None = None,
    gamma: float = 0.5,
    title: str | None = None,
    annotate: bool = True,
) -> np.ndarray:
    """Render a density map of (x, z) positions to a PNG (atomic write); returns the map.

    ``gamma`` < 1 compresses the count range so that single tracks stay visible next to busy vessels.
    With ``annotate`` (default) the PNG is a figure: axes in mm (x lateral, z depth), a colorbar of
    the localization counts, and a title with ``title``, the pixel size and the number of
    localizations; ``annotate=False`` writes the bare 8-bit map (one pixel per map pixel).
    """
    import cv2

    positions = np.asarray(positions, float).reshape(-1, 2)
    if extent is None:
        if len(positions):
            lo, hi = positions.min(axis=0) - pixel, positions.max(axis=0) + pixel
        else:
            lo, hi = np.zeros(2), np.ones(2) * pixel
        extent = (lo[0], hi[0], lo[1], hi[1])
    density = density_map(positions, extent, pixel)
    peak = density.max()
    image = (255 * (density / peak) ** gamma).astype(np.uint8) if peak > 0 else np.zeros(density.shape, np.uint8)
    if annotate:
        _save_annotated(path, density, extent, pixel, gamma, title, len(positions))
        return density
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"cannot write {path}")
    return density


def _save_annotated(path, density, extent, pixel, gamma, title, n_points) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    x0, _, z0, _ = extent
    nz, nx = density.shape
    shown = (x0, x0 + nx * pixel, z0 + nz * pixel, z0)  # depth grows downwards
    width = 7.0
    height = min(max(width * nz / max(nx, 1), 2.5), 12.0) + 1.2
    fig, ax = plt.subplots(figsize=(width + 1.5, height))
    peak = max(float(density.max()), 1.0)
    im = ax.imshow(density, cmap="inferno", extent=shown, interpolation="nearest", aspect="equal",
                   norm=PowerNorm(gamma=gamma, vmin=0, vmax=peak))
    ax.set_xlabel("x, lateral (mm)")
    ax.set_ylabel("z, depth (mm)")
    bar = fig.colorbar(im, ax=ax, shrink=0.85)
    bar.set_label(f"localizations per pixel (display gamma {gamma:g})")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}ULM density: {n_points} localizations, pixel {pixel * 1000:.1f} µm", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
