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

#: Pixel types a sweep's frames may have (the scalar types PLUS and OpenIGTLink carry).
PIXEL_TYPES = tuple(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
)

#: Ultrasound image orientations PLUS writes: first letter = columns (M: marked side at column 0,
#: U: unmarked), second = rows (F: far from transducer at the last row, N: near), optional third
#: letter for the frame axis (A: ascending).
ORIENTATIONS = ("MF", "MN", "UF", "UN", "MFA", "MNA", "UFA", "UNA", "MFD", "UFD", "MND", "UND")
#: PLUS's RF-data orientations: first letter = columns (F: samples run from near to far, N: from
#: far to near), second = rows (M / U: scan lines from the marked / unmarked side).
RF_ORIENTATIONS = ("FM", "NM", "FU", "NU")


@dataclass
class Sweep:
    """A tracked ultrasound sweep.

    Attributes
    ----------
    frames : (N, H, W) or (N, H, W, C) array of any numeric pixel type in :data:`PIXEL_TYPES`
        (uint8 B-mode is the common case; int16 RF, uint16 / float32 envelope data, C = 3 RGB or 4
        RGBA colour frames), kept exactly as the source had them: nothing rescales or converts
        pixels. A stage that needs a particular range converts explicitly (:func:`to_uint8`) and says
        so. A trailing component axis of size 1 is dropped. B-mode frames are in MF orientation (row
        0 = transducer side, column 0 = marked side); readers convert other orientations to MF (RF
        frames, PLUS orientations ``FM``/``NM``/``FU``/``NU``, to ``FM``: see
        :mod:`freehand3d.io.plus_sequence`).
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
        if frames.ndim == 4 and frames.shape[3] == 1:
            frames = frames[..., 0]
        if frames.ndim not in (3, 4):
            raise InputError(
                f"frames must be (N, H, W) or (N, H, W, components), got shape {frames.shape}", self.source
            )
        if frames.dtype.newbyteorder("=") not in PIXEL_TYPES:
            raise InputError(
                f"frames have pixel type {frames.dtype}; sweeps hold "
                f"{', '.join(np.dtype(t).name for t in PIXEL_TYPES)}",
                self.source,
            )
        if not frames.dtype.isnative:
            frames = frames.astype(frames.dtype.newbyteorder("="))
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
    def pixel_type(self) -> np.dtype:
        """The frames' numpy pixel type (one of :data:`PIXEL_TYPES`)."""
        return self.frames.dtype

    @property
    def n_components(self) -> int:
        """Values per pixel: 1 for scalar frames, C for (N, H, W, C) frames (3 = RGB, 4 = RGBA)."""
        return 1 if self.frames.ndim == 3 else int(self.frames.shape[3])

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
        pixel = self.frames.dtype.name + ("" if self.n_components == 1 else f"x{self.n_components}")
        return (
            f"Sweep({len(self)} frames {w}x{h} {pixel}, spacing={self.spacing}, "
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

    def as_uint8(self, method: str = "dtype", window: tuple[float, float] | None = None) -> "Sweep":
        """This sweep with (N, H, W) uint8 frames from :func:`to_uint8` (one explicit map for the
        whole sweep), for stages that need an 8-bit range; ``self`` when the frames are uint8
        already (and no window is asked for). Everything else is shared, not copied;
        ``metadata["Uint8Conversion"]`` says what was done."""
        if self.frames.dtype == np.uint8 and self.frames.ndim == 3 and method != "window":
            return self
        out = copy.copy(self)
        out.frames = to_uint8(self.frames, method, window, source=self.source)
        out.metadata = dict(self.metadata)
        how = method if method != "window" else f"window {window[0]:g}..{window[1]:g}"
        out.metadata["Uint8Conversion"] = f"{self.frames.dtype.name}x{self.n_components} -> uint8 ({how})"
        return out


# ---------------------------------------------------------------------- explicit range conversion


def checked_conversion(method: str, window: str | None) -> tuple[str, tuple[float, float] | None]:
    """The CLI's ``--to-uint8 METHOD`` and ``--window LOW,HIGH``, checked before any work starts
    (:class:`~freehand3d.errors.ConfigError` naming the option)."""
    from freehand3d.errors import ConfigError

    if method not in TO_UINT8_METHODS:
        raise ConfigError(f"{method!r} is not a conversion; choose {', '.join(TO_UINT8_METHODS)}", "--to-uint8")
    if window is None:
        if method == "window":
            raise ConfigError("--to-uint8 window needs --window LOW,HIGH", "--window")
        return method, None
    if method != "window":
        raise ConfigError(f"--window is only used with --to-uint8 window (not {method})", "--window")
    try:
        low, high = (float(p) for p in window.split(","))
    except ValueError:
        raise ConfigError(f"must be LOW,HIGH (two numbers), got {window!r}", "--window") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ConfigError(f"must be two finite numbers LOW < HIGH, got {window!r}", "--window")
    return method, (low, high)

#: Methods :func:`to_uint8` knows (the CLI's ``--to-uint8`` choices).
TO_UINT8_METHODS = ("dtype", "window", "minmax")
# ITU-R BT.601 luma weights, the grey PLUS / VTK / OpenCV compute from RGB
_LUMA = np.array([0.299, 0.587, 0.114])


def to_uint8(frames, method: str = "dtype", window: tuple[float, float] | None = None, source=None) -> np.ndarray:
    """Convert frames of any pixel type to (N, H, W) uint8 for a stage that needs an 8-bit range
    (N-wire detection in calibration, DualTrack preprocessing), one explicit linear map for the
    whole sweep: never a per-frame rescaling.

    uint8 scalar frames are returned unchanged (no copy) by every method except ``window``.

    Parameters
    ----------
    frames : (N, H, W) or (N, H, W, C) array (or a :class:`Sweep`, whose frames are used).
        Colour frames (C = 3 RGB or 4 RGBA; alpha is ignored) become grey first with the ITU-R
        BT.601 luma weights 0.299 R + 0.587 G + 0.114 B, as PLUS / VTK / OpenCV do.
    method : str
        - ``"dtype"`` (default): the pixel type's full range maps to 0..255: uint16 0..65535,
          int16 -32768..32767 and so on (for uint16 that is ``round(v * 255 / 65535)``, so a uint8
          image stored as ``v * 257`` comes back exactly). Floating-point frames have no type range:
          they need ``window`` (or ``minmax``), and raise otherwise.
        - ``"window"``: ``window = (low, high)`` maps to 0..255, values outside are clipped (a
          display window, as in Slicer / ITK ``IntensityWindowing``).
        - ``"minmax"``: the window is the minimum and maximum over the whole sweep (every frame
          together, so relative brightness between frames is kept).
    window : (low, high), only for ``method="window"``.

    Returns
    -------
    (N, H, W) uint8, values ``round((v - low) * 255 / (high - low))`` clipped to 0..255.

    Examples
    --------
    >>> import numpy as np
    >>> to_uint8(np.array([[[0, 257, 65535]]], np.uint16)).tolist()
    [[[0, 1, 255]]]
    >>> to_uint8(np.array([[[1000.0, 1002.0, 1004.0]]], np.float32), "window", (1000, 1004)).tolist()
    [[[0, 128, 255]]]
    """
    if isinstance(frames, Sweep):
        source = frames.source if source is None else source
        frames = frames.frames
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if method not in TO_UINT8_METHODS:
        raise ValueError(f"unknown conversion {method!r}; choose one of {', '.join(TO_UINT8_METHODS)}")
    if method == "window":
        if window is None:
            raise ValueError("method 'window' needs window=(low, high)")
        low, high = (float(v) for v in window)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise ValueError(f"window must be two finite numbers low < high, got {window}")
    elif window is not None:
        raise ValueError(f"window is only used with method 'window', not {method!r}")
    if arr.ndim == 4:
        c = arr.shape[3]
        if c == 1:
            arr = arr[..., 0]
        elif c in (3, 4):
            if arr.dtype == np.uint8 and method != "window":
                return np.rint(arr[..., :3] @ _LUMA).astype(np.uint8)
            arr = (arr[..., :3] @ _LUMA).astype(np.float64 if arr.dtype.itemsize > 2 else np.float32)
        else:
            raise InputError(f"frames have {c} components per pixel; only 1, 3 (RGB) or 4 (RGBA) convert to grey", source)
    if arr.ndim != 3:
        raise InputError(f"frames must be (N, H, W) or (N, H, W, C), got shape {arr.shape}", source)
    if arr.dtype == np.uint8 and method != "window":
        return arr
    if method == "dtype":
        if arr.dtype.kind == "f":
            raise InputError(
                f"{arr.dtype} frames have no fixed range: give a window (low, high) or use the whole-sweep "
                "minimum..maximum (minmax) to convert them to 8 bits", source
            )
        info = np.iinfo(arr.dtype)
        low, high = float(info.min), float(info.max)
    elif method == "minmax":
        if arr.size == 0:
            return np.zeros(arr.shape, np.uint8)
        finite = arr if arr.dtype.kind != "f" else arr[np.isfinite(arr)]
        if finite.size == 0:
            raise InputError("frames hold no finite value to take a minimum..maximum window from", source)
        low, high = float(finite.min()), float(finite.max())
        if high <= low:
            high = low + 1.0
    out = np.empty(arr.shape, np.uint8)
    scale = 255.0 / (high - low)
    # frame by frame: the float64 temporary stays one frame, not a sweep
    for i in range(len(arr)):
        x = (arr[i].astype(np.float64) - low) * scale
        x = np.nan_to_num(x, nan=0.0)
        np.clip(np.rint(x), 0, 255, out=x)
        out[i] = x
    return out
