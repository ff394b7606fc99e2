"""`Sweep`: the one data object every freehand3d stage reads and writes.

A sweep is a sequence of 2D B-mode frames with their timestamps, named per-frame transforms (PLUS
naming, e.g. ``ProbeToTracker``) with a validity mask each, an optional calibration (``ImageToProbe``,
pixels -> mm) and every other header or per-frame field of the file it came from, so that
read -> write is lossless.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freehand3d import geometry
from freehand3d.errors import InputError

#: Ultrasound image orientations PLUS writes: first letter = columns (M: marked side at column 0,
#: U: unmarked), second = rows (F: far from transducer at the last row, N: near), optional third
#: letter for the frame axis (A: ascending).
ORIENTATIONS = ("MF", "MN", "UF", "UN", "MFA", "MNA", "UFA", "UNA", "MFD", "UFD", "MND", "UND")


@dataclass
class Sweep:
    """A tracked ultrasound sweep.

    Attributes
    ----------
    frames : (N, H, W) uint8, B-mode in MF orientation (row 0 = transducer side, column 0 = marked
        side). Readers convert other orientations to MF.
    spacing : (sx, sy) mm per pixel, or None when unknown (PLUS files usually keep the spacing inside
        ``image_to_probe`` instead).
    timestamps : (N,) seconds.
    transforms : name -> (N, 4, 4) float64, e.g. ``ProbeToTracker``, ``ReferenceToTracker``,
        ``ImageToReference``.
    valid : name -> (N,) bool, the per-frame status of each transform (PLUS ``...TransformStatus``
        ``OK`` = True). Missing entries mean "all valid".
    image_to_probe : (4, 4) calibration (pixels -> mm) or None.
    metadata : remaining header fields (str -> str), preserved on round trip.
    frame_fields : per-frame fields that are not transforms, timestamps or image status
        (name -> list of N strings), preserved on round trip. ``ImageStatus`` is kept here too.
    source : path the sweep was read from, for error messages (not written).
    """

    frames: np.ndarray
    spacing: tuple[float, float] | None = None
    timestamps: np.ndarray | None = None
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    image_to_probe: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    frame_fields: dict[str, list[str]] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise InputError(f"frames must be (N, H, W), got shape {frames.shape}", self.source)
        if frames.dtype != np.uint8:
            raise InputError(
                f"frames must be uint8 B-mode images, got {frames.dtype} "
                "(scale to 0..255 and convert first)",
                self.source,
            )
        self.frames = frames
        n = len(frames)
        if self.timestamps is None:
            self.timestamps = np.arange(n, dtype=np.float64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        if len(self.timestamps) != n:
            raise InputError(f"{len(self.timestamps)} timestamps for {n} frames", self.source)
        if self.spacing is not None:
            try:
                values = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                values = np.zeros(0)
            if values.size != 2:
                raise InputError(f"pixel spacing must be two numbers (sx, sy), got {self.spacing!r}", self.source)
            sx, sy = float(values[0]), float(values[1])
            if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
                raise InputError(f"pixel spacing must be positive, got {self.spacing}", self.source)
            self.spacing = (sx, sy)
        fixed = {}
        for name, mats in self.transforms.items():
            try:
                geometry.split_transform_name(name)
            except ValueError as exc:
                raise InputError(str(exc), self.source) from None
            arr = np.asarray(mats, dtype=np.float64)
            if arr.shape == (4, 4):
                arr = np.broadcast_to(arr, (n, 4, 4)).copy()
            if arr.shape != (n, 4, 4):
                raise InputError(f"transform {name} has shape {arr.shape}, expected ({n}, 4, 4)", self.source)
            fixed[name] = arr
        self.transforms = fixed
        valid = {}
        for name, arr in fixed.items():
            mask = np.ones(n, bool) if name not in self.valid else np.asarray(self.valid[name], bool).reshape(-1)
            if len(mask) != n:
                raise InputError(f"status of {name} has {len(mask)} entries for {n} frames", self.source)
            # a non-finite matrix can never be used, whatever its status says
            valid[name] = mask & np.isfinite(arr).all(axis=(1, 2))
        extra = set(self.valid) - set(fixed)
        if extra:
            raise InputError(f"status given for unknown transforms {sorted(extra)}", self.source)
        self.valid = valid
        if self.image_to_probe is not None:
            itp = np.asarray(self.image_to_probe, dtype=np.float64)
            if itp.shape != (4, 4) or not np.isfinite(itp).all():
                raise InputError("image_to_probe must be a finite 4x4 matrix", self.source)
            self.image_to_probe = itp
        for name, values in self.frame_fields.items():
            if len(values) != n:
                raise InputError(f"per-frame field {name} has {len(values)} values for {n} frames", self.source)

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def image_valid(self) -> np.ndarray:
        """(N,) bool from PLUS ``ImageStatus`` (all True when the source had none)."""
        status = self.frame_fields.get("ImageStatus")
        if status is None:
            return np.ones(len(self), bool)
        return np.array([s.strip().upper() == "OK" for s in status], bool)

    def __repr__(self) -> str:
        h, w = self.frame_shape
        names = ", ".join(f"{k} ({int(v.sum())}/{len(v)} valid)" for k, v in self.valid.items())
        return (
            f"Sweep({len(self)} frames {w}x{h}, spacing={self.spacing}, "
            f"transforms=[{names}], calibrated={self.image_to_probe is not None})"
        )

    # ------------------------------------------------------------------ transforms
    def _graph(self) -> geometry.FrameGraph:
        g = geometry.FrameGraph(self.transforms)
        if self.image_to_probe is not None and "ImageToProbe" not in self.transforms:
            g.add("ImageToProbe", np.broadcast_to(self.image_to_probe, (len(self), 4, 4)))
        return g

    def transform(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame ``name`` (e.g. ``"ImageToReference"``) composed from whatever links the sweep
        has, and its validity (the AND of the validity of every link used).

        Returns
        -------
        matrices : (N, 4, 4) float64; valid : (N,) bool.
        """
        if name.endswith("Transform"):
            name = name[: -len("Transform")]
        graph = self._graph()
        try:
            used = graph.path_names(name)
            mats = graph.get(name)
        except KeyError as exc:
            problem = exc.args[0]
            if name.startswith("Image") and self.image_to_probe is None and "ImageToProbe" not in self.transforms:
                problem += "; the sweep has no ImageToProbe calibration (give one, e.g. a calibration result.json or a PLUS device set with ImageToProbe)"
            raise InputError(problem, self.source) from None
        mats = np.broadcast_to(mats, (len(self), 4, 4)).copy()
        ok = np.ones(len(self), bool)
        for link in used:
            if link in self.valid:
                ok &= self.valid[link]
        return mats, ok & np.isfinite(mats).all(axis=(1, 2))

    def image_to(self, frame: str = "Reference") -> np.ndarray:
        """``ImageTo<frame>`` per frame (N, 4, 4) (pixels -> mm), the one matrix most callers want."""
        return self.transform(f"ImageTo{frame}")[0]

    def set_transform(self, name: str, matrices, valid=None) -> None:
        """Add or replace a per-frame transform (a single 4x4 is repeated for every frame)."""
        geometry.split_transform_name(name)
        arr = np.asarray(matrices, dtype=np.float64)
        if arr.shape == (4, 4):
            arr = np.broadcast_to(arr, (len(self), 4, 4)).copy()
        if arr.shape != (len(self), 4, 4):
            raise ValueError(f"{name}: expected ({len(self)}, 4, 4), got {arr.shape}")
        self.transforms[name] = arr
        mask = np.ones(len(self), bool) if valid is None else np.asarray(valid, bool)
        self.valid[name] = mask & np.isfinite(arr).all(axis=(1, 2))

    # ------------------------------------------------------------------ slicing
    def subset(self, indices) -> "Sweep":
        """A new sweep with the frames at ``indices`` (slice, index array or bool mask)."""
        idx = np.arange(len(self))[indices]
        return Sweep(
            frames=self.frames[idx].copy(),
            spacing=self.spacing,
            timestamps=self.timestamps[idx].copy(),
            transforms={k: v[idx].copy() for k, v in self.transforms.items()},
            valid={k: v[idx].copy() for k, v in self.valid.items()},
            image_to_probe=None if self.image_to_probe is None else self.image_to_probe.copy(),
            metadata=copy.deepcopy(self.metadata),
            frame_fields={k: [v[i] for i in idx] for k, v in self.frame_fields.items()},
            source=self.source,
        )

    def copy(self) -> "Sweep":
        return self.subset(slice(None))
