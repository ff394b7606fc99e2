"""Training data for DualTrack: windows of DualTrack-format h5 sweeps listed in a CSV.

The CSV has one row per sweep with the columns ``sweep_id``, ``path`` and ``split`` (``train``,
``val`` or ``test``); a relative ``path`` is relative to the CSV file. Each h5 file holds the
DualTrack layout:

``images``
    (N, H, W) uint8 B-mode frames (480 x 640 for TUS-REC-like data).
``tracking``
    (N, 4, 4) image -> world poses in the DualTrack image frame (mm, origin at the image centre;
    for TUS-REC data ``tforms @ R_T @ D``, SPEC section 10.5).

A training sample is a window of ``window`` consecutive frames. Its target is the (window-1, 6)
array of relative poses ``[tx, ty, tz, rx, ry, rz]`` (mm, degrees, extrinsic ``xyz``) of frame i+1
in frame i, i.e. ``M_i = tracking[i]^-1 @ tracking[i+1]`` -- exactly what the model head predicts
(SPEC section 9).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d.errors import InputError

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("sweep_id", "path", "split")

__all__ = [
    "SweepEntry",
    "read_sweep_csv",
    "relative_pose_params",
    "WindowDataset",
    "window_starts",
]


@dataclass(frozen=True)
class SweepEntry:
    """One CSV row: a sweep id, its absolute h5 path and its split."""

    sweep_id: str
    path: Path
    split: str


def read_sweep_csv(csv_path: str | os.PathLike) -> list[SweepEntry]:
    """Read and check a sweep list CSV (columns ``sweep_id, path, split``).

    Raises
    ------
    InputError
        when the file is missing, lacks a column, names a missing h5 file, repeats a sweep id or
        uses an unknown split.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError("sweep list CSV not found", csv_path)
    try:
        return _read_sweep_csv(csv_path)
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start}); save the CSV as UTF-8", csv_path) from None
    except csv.Error as exc:
        raise InputError(f"not a readable CSV ({exc})", csv_path) from None


def _read_sweep_csv(csv_path: Path) -> list[SweepEntry]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(f"the CSV needs the columns {', '.join(REQUIRED_COLUMNS)}; missing {', '.join(missing)}", csv_path)
        entries, seen = [], set()
        for line_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            sweep_id, path, split = row["sweep_id"], row["path"], row["split"].lower()
            if not sweep_id and not path:
                continue  # blank line
            if split not in SPLITS:
                raise InputError(f"line {line_no}: split {row['split']!r} is not one of {', '.join(SPLITS)}", csv_path)
            if sweep_id in seen:
                raise InputError(f"line {line_no}: sweep_id {sweep_id!r} appears twice", csv_path)
            seen.add(sweep_id)
            full = Path(path) if os.path.isabs(path) else (csv_path.parent / path)
            if not full.is_file():
                raise InputError(f"line {line_no}: sweep file {full} does not exist", csv_path)
            entries.append(SweepEntry(sweep_id, full.resolve(), split))
    if not entries:
        raise InputError("the CSV lists no sweeps", csv_path)
    return entries


def relative_pose_params(tracking) -> np.ndarray:
    """(N, 4, 4) image -> world poses -> (N-1, 6) relative parameters of frame i+1 in frame i.

    Parameters are ``[tx, ty, tz, rx, ry, rz]`` in mm and degrees, extrinsic ``xyz``
    (``R = Rz @ Ry @ Rx``), the DualTrack head convention.
    """
    poses = geometry.as_matrix_stack(tracking, "tracking")
    rel = geometry.invert(poses[:-1]) @ poses[1:]
    return geometry.matrix_to_params(rel, "xyz", degrees=True)


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of the windows of one sweep: every ``stride`` frames, plus one window ending
    at the last frame so that the end of every sweep is seen. A sweep shorter than ``window``
    gives no window."""
    if n_frames < window:
        return []
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


def sampled_pose_params(tracking, stride: int) -> np.ndarray:
    """Relative parameters between the frames the global encoder sees (0, s, 2s, ...): row j is
    the pose of frame (j+1) s in frame j s, same convention as :func:`relative_pose_params`."""
    poses = geometry.as_matrix_stack(tracking, "tracking")
    return relative_pose_params(poses[::stride])


class WindowDataset:
    """Map-style (torch ``Dataset`` compatible) windows of h5 sweeps.

    Parameters
    ----------
    entries : the sweeps (from :func:`read_sweep_csv`, already filtered by split).
    window : frames per sample (>= 2).
    stride : frames between consecutive window starts.
    config : the model's :class:`~freehand3d.tracking.model.presets.DualTrackConfig` (crop sizes,
        global stride, global preprocessing).
    need_local : build the local-branch crops (False for the global-encoder stage, which never
        reads them).

    Each item is a dict with float32 tensors ``local`` (window, 1, S_l, S_l) (empty (0,) when not
    needed), ``global`` (M, 1, S_g, S_g) -- only the M = ceil(window / global_stride) frames the
    global encoder reads (window frames 0, s, 2s, ...), which the model accepts directly --
    ``target`` (window-1, 6) relative poses of consecutive frames and ``target_global`` (M-1, 6)
    relative poses of consecutive sampled frames; plus ``sweep_id`` and ``start``.
    """

    def __init__(self, entries, window: int, stride: int, config, need_local: bool = True):
        if window < 2:
            raise ValueError(f"a window needs at least 2 frames, got {window}")
        if stride < 1:
            raise ValueError(f"window stride must be >= 1, got {stride}")
        self.entries = list(entries)
        self.window = int(window)
        self.stride = int(stride)
        self.config = config
        self.need_local = bool(need_local)
        self._files: dict[Path, object] = {}
        self._tracking: dict[Path, np.ndarray] = {}
        self._targets: dict[Path, np.ndarray] = {}
        self.index: list[tuple[int, int]] = []
        for k, entry in enumerate(self.entries):
            n = self._check(entry)
            self.index.extend((k, s) for s in window_starts(n, self.window, self.stride))

    # h5 handles are opened lazily (and dropped when pickled) so the dataset can go to workers
    def _file(self, path: Path):
        handle = self._files.get(path)
        if handle is None:
            import h5py

            handle = h5py.File(path, "r")
            self._files[path] = handle
        return handle

    def _check(self, entry: SweepEntry) -> int:
        import h5py

        try:
            with h5py.File(entry.path, "r") as fh:
                if "images" not in fh or "tracking" not in fh:
                    raise InputError(
                        f"not a DualTrack sweep: needs datasets 'images' and 'tracking', has {sorted(fh.keys())}",
                        entry.path,
                    )
                images, tracking = fh["images"], fh["tracking"]
                if images.ndim != 3 or images.dtype != np.uint8:
                    raise InputError(f"'images' must be (N, H, W) uint8, got {images.shape} {images.dtype}", entry.path)
                if tracking.shape != (images.shape[0], 4, 4):
                    raise InputError(f"'tracking' has shape {tracking.shape} for {images.shape[0]} frames", entry.path)
                h, w = images.shape[1:]
                need = self.config.local_size
                if h < need or w < need:
                    raise InputError(
                        f"frames are {h}x{w} pixels but the {self.config.name} model crops {need}x{need} (local branch)",
                        entry.path,
                    )
                poses = np.asarray(tracking[()], dtype=np.float64)
                n = images.shape[0]
        except OSError as exc:
            raise InputError(f"cannot read the sweep ({exc})", entry.path) from None
        if not np.isfinite(poses).all() or np.any(np.abs(np.linalg.det(poses[:, :3, :3])) < 1e-9):
            raise InputError("'tracking' has non-finite or singular poses", entry.path)
        self._tracking[entry.path] = poses
        self._targets[entry.path] = relative_pose_params(poses).astype(np.float32)
        return n

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        import torch

        k, start = self.index[i]
        entry = self.entries[k]
        stop = start + self.window
        g_stride = self.config.global_stride
        images = self._file(entry.path)["images"]
        sampled = np.arange(start, stop, g_stride)
        if self.need_local:
            frames = np.asarray(images[start:stop])
            local = local_crops(frames, self.config.local_size)
            glob = global_frames(frames[sampled - start], self.config)
        else:
            local = torch.zeros(0)
            glob = global_frames(np.stack([np.asarray(images[j]) for j in sampled]), self.config)
        target = torch.from_numpy(self._targets[entry.path][start : stop - 1].copy())
        target_global = torch.from_numpy(
            sampled_pose_params(self._tracking[entry.path][start:stop], g_stride).astype(np.float32)
        )
        return {
            "local": local,
            "global": glob,
            "target": target,
            "target_global": target_global,
            "sweep_id": entry.sweep_id,
            "start": start,
        }

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state


def local_crops(frames: np.ndarray, size: int):
    """Local-branch input (n, 1, size, size) float32: the centred ``size`` x ``size`` crop / 255
    (rows 112:368, cols 192:448 of a 480 x 640 frame for size 256, SPEC section 8)."""
    import torch

    h, w = frames.shape[1:]
    top, left = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(frames[:, top : top + size, left : left + size])
    return torch.from_numpy(crop).to(torch.float32).div_(255.0)[:, None]


def global_frames(frames: np.ndarray, config):
    """Global-branch input (n, 1, S_g, S_g) float32 for the preset's ``global_variant`` and
    ``global_norm`` (SPEC section 8).

    Variants B and C (``/255``, then the full frame resized to S_g x S_g with antialiased bilinear
    interpolation, ``F.interpolate(..., antialias=True, align_corners=False)``) are computed here
    for any frame size, so small training presets work; variant A (crop, skimage resize, uint8
    truncation) is delegated to :func:`freehand3d.tracking.preprocess`.
    """
    import torch

    variant = str(config.global_variant).upper()
    if variant not in ("B", "C"):
        from freehand3d.tracking.preprocess import preprocess

        _, glob = preprocess(frames, global_variant=variant, global_norm=tuple(config.global_norm))
        return glob[0]
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32).div_(255.0)[:, None]
    size = int(config.global_size)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if variant == "B":  # variant C never normalises (SPEC section 8)
        mean, std = (float(v) for v in config.global_norm)
        if (mean, std) != (0.0, 1.0):
            x = (x - mean) / std
    return x
