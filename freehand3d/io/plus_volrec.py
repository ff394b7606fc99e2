"""PLUS ``<VolumeReconstruction>`` element: every attribute PLUS's volume reconstructor reads.

PLUS (``vtkIGSIOVolumeReconstructor::ReadConfiguration``) reads these attributes from the
``<VolumeReconstruction>`` element of a device-set XML; :func:`parse_volume_reconstruction` reads
the same ones, with the same defaults, into a plain :class:`VolumeReconstructionConfig`, so a PLUS
user gets the same volume from the same file. Deprecated spellings PLUS still accepts
(``FanAngles``, ``FanOrigin``, ``FanDepth``, ``Compounding``, ``Calculation``) are mapped onto the
current ones the way PLUS maps them.

Pixel quantities (clip rectangle, fan origin, fan radii) are in pixels of the frame; PLUS treats
frames as having unit spacing, the calibration (``ImageToProbe``) carries the mm scale.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freehand3d.errors import ConfigError, InputError

INTERPOLATIONS = ("NEAREST_NEIGHBOR", "LINEAR")
OPTIMIZATIONS = ("FULL", "PARTIAL", "NONE", "OPENCL")
COMPOUNDING_MODES = ("LATEST", "MEAN", "MAXIMUM", "IMPORTANCE_MASK")
HOLE_FILLING_TYPES = ("GAUSSIAN", "GAUSSIAN_ACCUMULATION", "STICK", "NEAREST_NEIGHBOR", "DISTANCE_WEIGHT_INVERSE")


@dataclass
class HoleFillingElement:
    """One ``<HoleFillingElement>`` kernel; PLUS tries the kernels in order until one succeeds.

    ``size`` (voxels, odd) and ``minimum_known_voxels_ratio`` apply to GAUSSIAN,
    GAUSSIAN_ACCUMULATION, NEAREST_NEIGHBOR and DISTANCE_WEIGHT_INVERSE; ``stdev`` (voxels) to the
    two Gaussian kernels; ``stick_length_limit`` and ``number_of_sticks_to_use`` to STICK.
    """

    type: str
    size: int = 0
    stdev: float = 0.0
    minimum_known_voxels_ratio: float = 0.0
    stick_length_limit: int = 0
    number_of_sticks_to_use: int = 1


@dataclass
class VolumeReconstructionConfig:
    """Settings of PLUS's volume reconstructor (attribute names in the docstring of each field).

    ``None`` means "not given" where PLUS then computes the value (output origin and extent: from
    the frames; clip rectangle: the whole frame).
    """

    output_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  #: OutputSpacing (mm)
    output_origin: tuple[float, float, float] | None = None  #: OutputOrigin (mm)
    output_extent: tuple[int, int, int, int, int, int] | None = None  #: OutputExtent (voxel index ranges)
    clip_rectangle_origin: tuple[int, int] | None = None  #: ClipRectangleOrigin (pixels)
    clip_rectangle_size: tuple[int, int] | None = None  #: ClipRectangleSize (pixels)
    fan_angles_deg: tuple[float, float] = (0.0, 0.0)  #: FanAnglesDeg (or deprecated FanAngles)
    fan_origin_pixel: tuple[float, float] = (0.0, 0.0)  #: FanOriginPixel (or deprecated FanOrigin)
    fan_radius_start_pixel: float = 0.0  #: FanRadiusStartPixel
    fan_radius_stop_pixel: float = 500.0  #: FanRadiusStopPixel (or deprecated FanDepth)
    enable_fan_angles_auto_detect: bool = False  #: EnableFanAnglesAutoDetect
    fan_angles_auto_detect_brightness_threshold: float | None = None
    fan_angles_auto_detect_filter_radius_pixel: int | None = None
    pixel_rejection_threshold: float | None = None  #: PixelRejectionThreshold (None: disabled)
    skip_interval: int = 1  #: SkipInterval (use every n-th frame)
    interpolation: str = "NEAREST_NEIGHBOR"  #: Interpolation
    optimization: str = "FULL"  #: Optimization (FULL = PLUS's fixed-point arithmetic)
    compounding_mode: str = "MEAN"  #: CompoundingMode (PLUS's fallback when unset is MEAN)
    number_of_threads: int | None = None  #: NumberOfThreads (no effect on the result)
    fill_holes: bool = False  #: FillHoles ON/OFF
    hole_filling: list[HoleFillingElement] = field(default_factory=list)  #: <HoleFilling> kernels
    recompute_output_spacing: bool = False  #: RecomputeOutputSpacing
    importance_mask_filename: str | None = None  #: ImportanceMaskFilename
    reference_coordinate_frame: str = "Reference"  #: ReferenceCoordinateFrame
    image_coordinate_frame: str = "Image"  #: ImageCoordinateFrame
    source: str | None = None  #: file the element came from (for messages and relative paths)

    @property
    def method(self) -> str:
        """``"nearest"`` or ``"linear"`` (freehand3d's name for :attr:`interpolation`)."""
        return "linear" if self.interpolation == "LINEAR" else "nearest"

    @property
    def compounding(self) -> str:
        """``"latest"``, ``"mean"``, ``"max"`` or ``"importance"``."""
        return {"LATEST": "latest", "MEAN": "mean", "MAXIMUM": "max", "IMPORTANCE_MASK": "importance"}[
            self.compounding_mode
        ]

    @property
    def fan_enabled(self) -> bool:
        """PLUS clips to the fan only when at least one fan angle is non-zero."""
        return self.fan_angles_deg[0] != 0.0 or self.fan_angles_deg[1] != 0.0


def _numbers(element: ET.Element, name: str, count: int, kind, source) -> tuple | None:
    text = element.get(name)
    if text is None:
        return None
    parts = text.replace(",", " ").split()
    try:
        values = tuple(kind(float(p)) if kind is int else kind(p) for p in parts)
    except ValueError:
        raise ConfigError(f"VolumeReconstruction attribute {name}={text!r} is not a list of numbers", source) from None
    if len(values) != count:
        raise ConfigError(f"VolumeReconstruction attribute {name} needs {count} numbers, got {len(values)}", source)
    return values


def _scalar(element: ET.Element, name: str, kind, source):
    values = _numbers(element, name, 1, kind, source)
    return None if values is None else values[0]


def _choice(element: ET.Element, name: str, options, source) -> str | None:
    text = element.get(name)
    if text is None:
        return None
    value = text.strip().upper()
    if value not in options:
        raise ConfigError(f"VolumeReconstruction attribute {name}={text!r}; expected one of {', '.join(options)}", source)
    return value


def _bool(element: ET.Element, name: str, source) -> bool | None:
    text = element.get(name)
    if text is None:
        return None
    value = text.strip().upper()
    if value in ("TRUE", "ON", "1", "YES"):
        return True
    if value in ("FALSE", "OFF", "0", "NO"):
        return False
    raise ConfigError(f"VolumeReconstruction attribute {name}={text!r} is not TRUE/FALSE", source)


def _hole_filling(element: ET.Element | None, source) -> list[HoleFillingElement]:
    if element is None:
        raise ConfigError("FillHoles is ON but the <HoleFilling> element is missing", source)
    kernels = []
    for index, child in enumerate(e for e in element if e.tag.upper() == "HOLEFILLINGELEMENT"):
        kind = (child.get("Type") or "").strip().upper()
        if kind not in HOLE_FILLING_TYPES:
            raise ConfigError(
                f"HoleFillingElement {index} has Type={child.get('Type')!r}; expected one of {', '.join(HOLE_FILLING_TYPES)}",
                source,
            )
        kernel = HoleFillingElement(type=kind)

        def need(name, kind_):
            value = _scalar(child, name, kind_, source)
            if value is None:
                raise ConfigError(f"HoleFillingElement {index} ({kind}) needs the attribute {name}", source)
            return value

        if kind == "STICK":
            kernel.stick_length_limit = need("StickLengthLimit", int)
            kernel.number_of_sticks_to_use = need("NumberOfSticksToUse", int)
        else:
            if kind in ("GAUSSIAN", "GAUSSIAN_ACCUMULATION"):
                kernel.stdev = need("Stdev", float)
            kernel.size = need("Size", int)
            kernel.minimum_known_voxels_ratio = need("MinimumKnownVoxelsRatio", float)
            if kernel.size < 1:
                raise ConfigError(f"HoleFillingElement {index} ({kind}) Size must be >= 1", source)
        kernels.append(kernel)
    return kernels


def parse_volume_reconstruction(element: ET.Element, source: str | os.PathLike | None = None) -> VolumeReconstructionConfig:
    """Read a ``<VolumeReconstruction>`` element (or a root that contains one) the way PLUS does.

    Parameters
    ----------
    element : xml.etree.ElementTree.Element
        The ``<VolumeReconstruction>`` element itself or any ancestor (e.g. ``<PlusConfiguration>``).
    source : path, optional
        File the element came from, named in error messages.

    Returns
    -------
    VolumeReconstructionConfig

    Raises
    ------
    ConfigError
        When the element is missing, OutputSpacing (required by PLUS) is missing, or a value is invalid.
    """
    source = None if source is None else os.fspath(source)
    if element.tag != "VolumeReconstruction":
        found = element.find(".//VolumeReconstruction")
        if found is None:
            raise ConfigError("no <VolumeReconstruction> element", source)
        element = found
    cfg = VolumeReconstructionConfig(source=source)
    spacing = _numbers(element, "OutputSpacing", 3, float, source)
    if spacing is None:
        raise ConfigError("VolumeReconstruction needs OutputSpacing (PLUS requires it)", source)
    if min(spacing) <= 0:
        raise ConfigError(f"OutputSpacing must be positive, got {spacing}", source)
    cfg.output_spacing = spacing
    cfg.output_origin = _numbers(element, "OutputOrigin", 3, float, source)
    cfg.output_extent = _numbers(element, "OutputExtent", 6, int, source)
    cfg.clip_rectangle_origin = _numbers(element, "ClipRectangleOrigin", 2, int, source)
    cfg.clip_rectangle_size = _numbers(element, "ClipRectangleSize", 2, int, source)
    # the deprecated spellings are read first so that the current ones win when both are present
    for name in ("FanAngles", "FanAnglesDeg"):
        value = _numbers(element, name, 2, float, source)
        if value is not None:
            cfg.fan_angles_deg = value
    for name in ("FanOrigin", "FanOriginPixel"):
        value = _numbers(element, name, 2, float, source)
        if value is not None:
            cfg.fan_origin_pixel = value
    for name in ("FanDepth", "FanRadiusStopPixel"):
        value = _scalar(element, name, float, source)
        if value is not None:
            cfg.fan_radius_stop_pixel = value
    value = _scalar(element, "FanRadiusStartPixel", float, source)
    if value is not None:
        cfg.fan_radius_start_pixel = value
    cfg.fan_angles_auto_detect_brightness_threshold = _scalar(
        element, "FanAnglesAutoDetectBrightnessThreshold", float, source
    )
    cfg.fan_angles_auto_detect_filter_radius_pixel = _scalar(element, "FanAnglesAutoDetectFilterRadiusPixel", int, source)
    cfg.pixel_rejection_threshold = _scalar(element, "PixelRejectionThreshold", float, source)
    skip = _scalar(element, "SkipInterval", int, source)
    cfg.skip_interval = 1 if skip is None or skip < 1 else skip  # PLUS resets < 1 to 1
    cfg.interpolation = _choice(element, "Interpolation", INTERPOLATIONS, source) or "NEAREST_NEIGHBOR"
    cfg.optimization = _choice(element, "Optimization", OPTIMIZATIONS, source) or "FULL"
    cfg.number_of_threads = _scalar(element, "NumberOfThreads", int, source)
    cfg.fill_holes = bool(_bool(element, "FillHoles", source))
    cfg.enable_fan_angles_auto_detect = bool(_bool(element, "EnableFanAnglesAutoDetect", source))
    cfg.recompute_output_spacing = bool(_bool(element, "RecomputeOutputSpacing", source))
    if cfg.fill_holes:
        cfg.hole_filling = _hole_filling(element.find("HoleFilling"), source)
    mode = _choice(element, "CompoundingMode", COMPOUNDING_MODES, source)
    if mode is None:
        # PLUS's fallback for configs older than CompoundingMode (2014): Calculation=MAXIMUM ->
        # MAXIMUM, Compounding=OFF -> LATEST, anything else -> MEAN
        calculation = _choice(element, "Calculation", ("WEIGHTED_AVERAGE", "MAXIMUM"), source)
        compounding = _bool(element, "Compounding", source)
        if calculation == "MAXIMUM":
            mode = "MAXIMUM"
        elif compounding is False:
            mode = "LATEST"
        else:
            mode = "MEAN"
    cfg.compounding_mode = mode
    cfg.importance_mask_filename = element.get("ImportanceMaskFilename")
    if mode == "IMPORTANCE_MASK" and not cfg.importance_mask_filename:
        raise ConfigError("CompoundingMode IMPORTANCE_MASK needs ImportanceMaskFilename", source)
    cfg.reference_coordinate_frame = element.get("ReferenceCoordinateFrame") or "Reference"
    cfg.image_coordinate_frame = element.get("ImageCoordinateFrame") or "Image"
    return cfg


def _parse_matrix(text: str, source) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"transform matrix {text!r} is not 16 numbers", source) from None
    if values.size != 16:
        raise ConfigError(f"transform matrix has {values.size} numbers, expected 16", source)
    return values.reshape(4, 4)


def read_coordinate_definitions(root: ET.Element, source=None) -> dict[str, np.ndarray]:
    """``<CoordinateDefinitions>`` transforms as ``{"ImageToProbe": 4x4, ...}``.

    A small reader for what volume reconstruction needs; :mod:`freehand3d.io.plus_config` reads
    the whole device set.
    """
    out = {}
    for t in root.findall(".//CoordinateDefinitions/Transform"):
        start, end, matrix = t.get("From"), t.get("To"), t.get("Matrix")
        if not start or not end or matrix is None:
            raise ConfigError("a CoordinateDefinitions Transform needs From, To and Matrix", source)
        out[f"{start}To{end}"] = _parse_matrix(matrix, source)
    return out


def read_volume_reconstruction(xml_path: str | os.PathLike) -> tuple[VolumeReconstructionConfig, dict[str, np.ndarray]]:
    """Read a PLUS device-set XML file: its ``<VolumeReconstruction>`` settings and its
    ``<CoordinateDefinitions>`` transforms (e.g. ``ImageToProbe``).

    Returns
    -------
    config : VolumeReconstructionConfig
    transforms : dict name -> (4, 4) float64
    """
    path = Path(xml_path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"not well-formed XML ({exc})", path) from None
    return parse_volume_reconstruction(root, path), read_coordinate_definitions(root, path)


__all__ = [
    "HoleFillingElement",
    "VolumeReconstructionConfig",
    "parse_volume_reconstruction",
    "read_volume_reconstruction",
    "read_coordinate_definitions",
]
