"""The ``<Segmentation>`` element of a PLUS device set: parameters of N-wire fiducial segmentation.

PLUS (``PlusFidSegmentation``, ``PlusFidLineFinder``, ``PlusFidLabeling``) reads these attributes;
freehand3d reads the same ones so that a device set tuned for fCal works unchanged with
``freehand3d calibrate --config DeviceSet.xml``. Missing attributes take PLUS's defaults.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from freehand3d.errors import ConfigError


@dataclass
class SegmentationParams:
    """Every attribute PLUS reads from ``<Segmentation>`` (PLUS defaults where absent).

    Attributes
    ----------
    approximate_spacing_mm_per_pixel : pixel size used to convert the mm parameters to pixels.
    morphological_opening_circle_radius_mm : radius of the disc used to open (remove specks).
    morphological_opening_bar_size_mm : half length of the bar used to remove elongated echoes.
    clip_rectangle_origin, clip_rectangle_size : (x, y) pixels of the search region, or None for
        the whole frame.
    max_line_pair_distance_error_percent : allowed relative error of the distance between the
        lines of two N-wire layers.
    angle_tolerance_degrees : allowed deviation of a line from the expected direction.
    max_angle_difference_degrees : allowed angle between the lines of one phantom.
    min_theta_degrees, max_theta_degrees : range of accepted line angles.
    max_line_shift_mm : allowed shift of a line from its expected position.
    threshold_image_percent : threshold after the morphology, percent of the intensity range.
    collinear_points_max_distance_from_line_mm : distance of the middle point of an N from the
        line through the two side points.
    use_original_image_intensity_for_dot_intensity_score : score dots by original intensity.
    number_of_maximum_fiducial_point_candidates : keep at most this many candidate dots.
    compute_segmentation_parameters_from_phantom_definition : PLUS's automatic tolerances flag.
    image_scaling_tolerance_percent, image_normal_vector_in_phantom_frame_estimation : inputs of
        PLUS's automatic tolerances (kept for round trip, None when absent).
    """

    approximate_spacing_mm_per_pixel: float = 0.078
    morphological_opening_circle_radius_mm: float = 0.27
    morphological_opening_bar_size_mm: float = 2.0
    clip_rectangle_origin: tuple[int, int] | None = None
    clip_rectangle_size: tuple[int, int] | None = None
    max_line_pair_distance_error_percent: float = 10.0
    angle_tolerance_degrees: float = 10.0
    max_angle_difference_degrees: float = 10.0
    min_theta_degrees: float = -70.0
    max_theta_degrees: float = 70.0
    max_line_shift_mm: float = 10.0
    threshold_image_percent: float = 10.0
    collinear_points_max_distance_from_line_mm: float = 0.6
    use_original_image_intensity_for_dot_intensity_score: bool = False
    number_of_maximum_fiducial_point_candidates: int = 20
    compute_segmentation_parameters_from_phantom_definition: bool = False
    image_scaling_tolerance_percent: tuple[float, ...] | None = None
    image_normal_vector_in_phantom_frame_estimation: tuple[float, ...] | None = None

    def clip_rectangle(self, frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) search region in pixels (x1, y1 exclusive), clamped to the frame."""
        h, w = frame_shape
        if self.clip_rectangle_origin is None or self.clip_rectangle_size is None:
            return 0, 0, w, h
        x0, y0 = self.clip_rectangle_origin
        sx, sy = self.clip_rectangle_size
        if sx <= 0 or sy <= 0:  # PLUS treats an empty rectangle as "whole frame"
            return 0, 0, w, h
        return max(0, x0), max(0, y0), min(w, x0 + sx), min(h, y0 + sy)

    def to_attributes(self) -> dict[str, str]:
        """PLUS attribute name -> string, for writing a ``<Segmentation>`` element."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "TRUE" if value else "FALSE"
            elif isinstance(value, tuple):
                text = " ".join(_fmt(v) for v in value)
            else:
                text = _fmt(value)
            out[_ATTRIBUTE_OF[f.name]] = text
        if not self.compute_segmentation_parameters_from_phantom_definition:
            out.pop("ComputeSegmentationParametersFromPhantomDefinition", None)
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt(value) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))


# field -> PLUS attribute (PLUS capitalises each word; "Mm", "Px" and "Degrees" as written there)
_ATTRIBUTE_OF = {
    "approximate_spacing_mm_per_pixel": "ApproximateSpacingMmPerPixel",
    "morphological_opening_circle_radius_mm": "MorphologicalOpeningCircleRadiusMm",
    "morphological_opening_bar_size_mm": "MorphologicalOpeningBarSizeMm",
    "clip_rectangle_origin": "ClipRectangleOrigin",
    "clip_rectangle_size": "ClipRectangleSize",
    "max_line_pair_distance_error_percent": "MaxLinePairDistanceErrorPercent",
    "angle_tolerance_degrees": "AngleToleranceDegrees",
    "max_angle_difference_degrees": "MaxAngleDifferenceDegrees",
    "min_theta_degrees": "MinThetaDegrees",
    "max_theta_degrees": "MaxThetaDegrees",
    "max_line_shift_mm": "MaxLineShiftMm",
    "threshold_image_percent": "ThresholdImagePercent",
    "collinear_points_max_distance_from_line_mm": "CollinearPointsMaxDistanceFromLineMm",
    "use_original_image_intensity_for_dot_intensity_score": "UseOriginalImageIntensityForDotIntensityScore",
    "number_of_maximum_fiducial_point_candidates": "NumberOfMaximumFiducialPointCandidates",
    "compute_segmentation_parameters_from_phantom_definition": "ComputeSegmentationParametersFromPhantomDefinition",
    "image_scaling_tolerance_percent": "ImageScalingTolerancePercent",
    "image_normal_vector_in_phantom_frame_estimation": "ImageNormalVectorInPhantomFrameEstimation",
}

_SCALAR_FLOATS = (
    "approximate_spacing_mm_per_pixel",
    "morphological_opening_circle_radius_mm",
    "morphological_opening_bar_size_mm",
    "max_line_pair_distance_error_percent",
    "angle_tolerance_degrees",
    "max_angle_difference_degrees",
    "min_theta_degrees",
    "max_theta_degrees",
    "max_line_shift_mm",
    "threshold_image_percent",
    "collinear_points_max_distance_from_line_mm",
)
_POSITIVE = (
    "approximate_spacing_mm_per_pixel",
    "morphological_opening_circle_radius_mm",
    "morphological_opening_bar_size_mm",
    "collinear_points_max_distance_from_line_mm",
)


def _numbers(text: str, attribute: str, source, count: int | None, kind=float) -> tuple:
    parts = text.replace(",", " ").split()
    try:
        values = tuple(kind(float(p)) if kind is int else kind(p) for p in parts)
    except ValueError:
        raise ConfigError(f"<Segmentation {attribute}=\"{text}\"> is not numeric", source) from None
    if count is not None and len(values) != count:
        raise ConfigError(f"<Segmentation {attribute}> needs {count} numbers, got {len(values)}", source)
    return values


def _bool(text: str, attribute: str, source) -> bool:
    t = text.strip().upper()
    if t in ("TRUE", "1", "YES", "ON"):
        return True
    if t in ("FALSE", "0", "NO", "OFF"):
        return False
    raise ConfigError(f"<Segmentation {attribute}=\"{text}\"> must be TRUE or FALSE", source)


def parse_segmentation(element: ET.Element | None, source: str | os.PathLike | None = None) -> SegmentationParams:
    """Read a ``<Segmentation>`` element into :class:`SegmentationParams`.

    Parameters
    ----------
    element : the ``<Segmentation>`` element (``xml.etree``), or None for PLUS's defaults.
    source : file the element came from, for error messages.

    Returns
    -------
    SegmentationParams

    Raises
    ------
    ConfigError
        An attribute is not a number, has the wrong count, or is out of range.
    """
    params = SegmentationParams()
    if element is None:
        return params
    src = None if source is None else os.fspath(source)
    attrs = {k.strip(): v for k, v in element.attrib.items()}
    for name in _SCALAR_FLOATS:
        attr = _ATTRIBUTE_OF[name]
        if attr in attrs:
            setattr(params, name, _numbers(attrs[attr], attr, src, 1)[0])
    for name in ("clip_rectangle_origin", "clip_rectangle_size"):
        attr = _ATTRIBUTE_OF[name]
        if attr in attrs:
            setattr(params, name, _numbers(attrs[attr], attr, src, 2, int))
    attr = "NumberOfMaximumFiducialPointCandidates"
    if attr in attrs:
        params.number_of_maximum_fiducial_point_candidates = _numbers(attrs[attr], attr, src, 1, int)[0]
    for name in ("use_original_image_intensity_for_dot_intensity_score",
                 "compute_segmentation_parameters_from_phantom_definition"):
        attr = _ATTRIBUTE_OF[name]
        if attr in attrs:
            setattr(params, name, _bool(attrs[attr], attr, src))
    attr = "ImageScalingTolerancePercent"
    if attr in attrs:
        params.image_scaling_tolerance_percent = _numbers(attrs[attr], attr, src, 4)
    attr = "ImageNormalVectorInPhantomFrameEstimation"
    if attr in attrs:
        params.image_normal_vector_in_phantom_frame_estimation = _numbers(attrs[attr], attr, src, 3)

    for name in _POSITIVE:
        if not getattr(params, name) > 0:
            raise ConfigError(f"<Segmentation {_ATTRIBUTE_OF[name]}> must be positive", src)
    if not 0 <= params.threshold_image_percent <= 100:
        raise ConfigError("<Segmentation ThresholdImagePercent> must be between 0 and 100", src)
    if params.min_theta_degrees >= params.max_theta_degrees:
        raise ConfigError("<Segmentation MinThetaDegrees> must be below MaxThetaDegrees", src)
    if params.number_of_maximum_fiducial_point_candidates < 3:
        raise ConfigError("<Segmentation NumberOfMaximumFiducialPointCandidates> must be at least 3", src)
    return params


def read_segmentation(xml_path: str | os.PathLike) -> SegmentationParams:
    """The segmentation parameters of a PLUS device-set XML (PLUS defaults if it has none).

    Raises
    ------
    ConfigError
        The file is missing or is not XML.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ConfigError("device-set file not found", path) from None
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"not a readable XML file ({exc})", path) from None
    element = root if root.tag == "Segmentation" else root.find(".//Segmentation")
    return parse_segmentation(element, path)


__all__ = ["SegmentationParams", "parse_segmentation", "read_segmentation"]
