"""PLUS device-set XML (``PlusDeviceSet_*.xml``) and PLUS calibration result XML.

A PLUS device set is one XML file that configures a whole PLUS session. freehand3d reads the parts a
freehand pipeline needs into plain dataclasses:

- ``<CoordinateDefinitions>``: fixed transforms (``<Transform From="Phantom" To="Reference"
  Matrix="16 numbers row-major" Error=".." Date=".."/>``), e.g. ``ImageToProbe`` after calibration.
- ``<PhantomDefinition>``: the N-wire patterns (``<Pattern Type="NWire">`` with three ``<Wire>``
  elements each) and the landmarks, as a :class:`freehand3d.phantoms.NWirePhantom`.
- ``<Segmentation>`` and ``<VolumeReconstruction>``: handed to the parsers of the calibration and
  compounding stages (``freehand3d.io.plus_segmentation`` and ``freehand3d.io.plus_volrec``).

:func:`write_device_set` writes a copy of a device set with calibration results put into
``<CoordinateDefinitions>``, which is how PLUS (and 3D Slicer through PlusServer) pick them up.
:func:`read_plus_calibration_results` reads the ``*.results.xml`` report PLUS's probe calibration
writes (the calibration, error statistics and every frame's segmented wire points).

Every problem with a file raises :class:`freehand3d.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import copy
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freehand3d import geometry
from freehand3d._atomic import atomic_path
from freehand3d.errors import ConfigError, Freehand3DError
from freehand3d.phantoms import NWire, NWirePhantom, Wire

__all__ = [
    "CoordinateDefinition",
    "DeviceSet",
    "SegmentedFrames",
    "PlusCalibrationResults",
    "read_device_set",
    "write_device_set",
    "read_plus_calibration_results",
    "parse_matrix",
    "format_matrix",
]


# ---------------------------------------------------------------------------- data classes


@dataclass
class CoordinateDefinition:
    """One fixed transform of ``<CoordinateDefinitions>``.

    Attributes
    ----------
    from_frame, to_frame : PLUS frame names (``"Image"``, ``"Probe"``, ...).
    matrix : (4, 4) float64, maps ``from_frame`` coordinates to ``to_frame`` coordinates.
    error : the ``Error`` attribute (PLUS writes the calibration error, mm), or None.
    date : the ``Date`` attribute as written, or None.
    """

    from_frame: str
    to_frame: str
    matrix: np.ndarray
    error: float | None = None
    date: str | None = None

    @property
    def name(self) -> str:
        """``"<From>To<To>"``, e.g. ``"PhantomToReference"``."""
        return f"{self.from_frame}To{self.to_frame}"


@dataclass
class DeviceSet:
    """The parts of a PLUS device set that freehand3d uses.

    Attributes
    ----------
    device_set_name, device_set_description : from ``<DataCollection><DeviceSet Name Description>``.
    coordinate_definitions : name (``"ImageToProbe"``) -> :class:`CoordinateDefinition`, in file order.
    phantom : the N-wire phantom of ``<PhantomDefinition>`` (None when it has no NWire pattern). Its
        ``phantom_to_reference`` comes from the ``PhantomToReference`` coordinate definition.
    phantom_description : attributes of ``<PhantomDefinition><Description>`` (Name, Type, Version, ...).
    segmentation : the ``<Segmentation>`` element parsed by
        ``freehand3d.io.plus_segmentation.parse_segmentation`` (its attribute dict when that module is
        not available), or None when the element is absent.
    volume_reconstruction : the ``<VolumeReconstruction>`` element parsed by
        ``freehand3d.io.plus_volrec.parse_volume_reconstruction`` (attribute dict fallback), or None.
    root : the parsed XML root, kept so :func:`write_device_set` can write the file back.
    source : the path the device set was read from.
    """

    device_set_name: str | None
    device_set_description: str | None
    coordinate_definitions: dict[str, CoordinateDefinition]
    phantom: NWirePhantom | None
    phantom_description: dict[str, str] = field(default_factory=dict)
    segmentation: Any = None
    volume_reconstruction: Any = None
    root: ET.Element | None = field(default=None, repr=False)
    source: str | None = None

    def transform(self, name: str) -> np.ndarray:
        """A fixed transform by name, composed/inverted from the coordinate definitions as needed
        (e.g. ``"ReferenceToPhantom"`` from ``PhantomToReference``). Raises ConfigError if unlinked."""
        graph = geometry.FrameGraph({k: v.matrix for k, v in self.coordinate_definitions.items()})
        try:
            return graph.get(name)
        except (KeyError, ValueError) as exc:
            raise ConfigError(str(exc.args[0]), self.source) from None


@dataclass
class SegmentedFrames:
    """Per-frame content of one data section (validation or calibration) of a PLUS results XML.

    F frames, W wires (in the order of the phantom definition / ``wire_names``).

    Attributes
    ----------
    index : (F,) int, the ``Index`` attribute (position in the recording).
    status : (F,) str, ``SegmentationStatus``.
    wire_names : the W wire names.
    points : (F, W, 2) float64, segmented wire positions in pixels (x = column, y = row); NaN where a
        wire was not segmented.
    timestamps : (F,) seconds (``TrackedFrame Timestamp`` field).
    transforms : name (``"ProbeToTracker"``) -> (F, 4, 4) from the tracked-frame fields.
    valid : name -> (F,) bool, the matching ``...TransformStatus == OK``.
    errors_3d_mm : (F, W) reprojection error in mm (PLUS reports it for the middle wires only; NaN
        elsewhere).
    errors_2d_px : (F, W, 2) signed 2D reprojection error (pixels); NaN where not reported.
    middle_wires_image, middle_wires_probe : (F, 3, 3) middle-wire intersection points in the image
        (pixels) and probe (mm) frames as PLUS computed them (calibration section only; NaN elsewhere).
    """

    index: np.ndarray
    status: list[str]
    wire_names: list[str]
    points: np.ndarray
    timestamps: np.ndarray
    transforms: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    errors_3d_mm: np.ndarray
    errors_2d_px: np.ndarray
    middle_wires_image: np.ndarray
    middle_wires_probe: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class PlusCalibrationResults:
    """A PLUS probe calibration report (``*.results.xml``).

    Attributes
    ----------
    image_to_probe : (4, 4) the calibration result (pixels -> mm).
    reprojection_3d : ``{"validation_mean_mm", "validation_std_mm", "calibration_mean_mm",
        "calibration_std_mm"}`` from ``ReprojectionError3DStatistics``.
    reprojection_2d : wire name -> ``{"validation_mean_px", "validation_std_px", "calibration_mean_px",
        "calibration_std_px"}`` each a (2,) array.
    validation, calibration : the per-frame data of each section (:class:`SegmentedFrames`).
    source : path of the report.
    """

    image_to_probe: np.ndarray
    reprojection_3d: dict[str, float]
    reprojection_2d: dict[str, dict[str, np.ndarray]]
    validation: SegmentedFrames | None
    calibration: SegmentedFrames | None
    source: str | None = None


# ---------------------------------------------------------------------------- low-level helpers


def _parse_xml(path: str | os.PathLike) -> ET.Element:
    """Parse an XML file keeping comments; every failure becomes a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("XML file not found", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the XML file ({exc.strerror or exc})", path) from None
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        parser.feed(data)
        return parser.close()
    except ET.ParseError as exc:
        line, column = getattr(exc, "position", (None, None))
        where = f" at line {line}, column {column}" if line is not None else ""
        reason = str(getattr(exc, "msg", exc)).split(": line")[0]  # expat repeats the position
        raise ConfigError(f"malformed XML{where} ({reason})", path) from None
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise ConfigError(f"malformed XML ({exc.__class__.__name__}: {exc})", path) from None


def parse_matrix(text: str | None, what: str, source=None) -> np.ndarray:
    """Parse PLUS's matrix text (16 numbers, row-major, any whitespace) into a (4, 4) float64 array.

    Raises ConfigError naming ``what`` when the text does not hold exactly 16 finite numbers.
    """
    if text is None:
        raise ConfigError(f"{what} has no Matrix attribute", source)
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"{what}: Matrix holds a value that is not a number", source) from None
    if values.size != 16:
        raise ConfigError(f"{what}: Matrix needs 16 numbers, got {values.size}", source)
    if not np.isfinite(values).all():
        raise ConfigError(f"{what}: Matrix holds non-finite values", source)
    return values.reshape(4, 4)


def format_matrix(matrix) -> str:
    """PLUS's matrix text on one line: 16 numbers row-major, rows separated by two spaces (the shortest
    repr that round-trips float64 exactly). One line because XML escapes newlines inside attributes."""
    m = geometry.as_matrix_stack(matrix)
    if m.shape != (4, 4):
        raise ValueError(f"expected one 4x4 matrix, got {m.shape}")
    return "  ".join(" ".join(_num(v) for v in row) for row in m)


def _num(value: float) -> str:
    value = float(value)
    if value == 0:
        return "0"  # also turns -0.0 into 0
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _vec(text: str | None, n: int, what: str, source) -> np.ndarray:
    if text is None:
        raise ConfigError(f"{what} is missing", source)
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"{what} holds a value that is not a number: {text!r}", source) from None
    if values.size != n or not np.isfinite(values).all():
        raise ConfigError(f"{what} needs {n} finite numbers, got {text!r}", source)
    return values


def _optional_float(text: str | None, what: str, source) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} is not a number: {text!r}", source) from None


# ---------------------------------------------------------------------------- device set


def _coordinate_definitions(root: ET.Element, source) -> dict[str, CoordinateDefinition]:
    out: dict[str, CoordinateDefinition] = {}
    for block in root.iter("CoordinateDefinitions"):
        for elem in block.findall("Transform"):
            src, dst = elem.get("From"), elem.get("To")
            if not src or not dst:
                raise ConfigError("a CoordinateDefinitions <Transform> lacks From or To", source)
            what = f"transform {src}To{dst}"
            try:
                geometry.split_transform_name(f"{src}To{dst}")
            except ValueError:
                raise ConfigError(f"{what}: frame names must be letters and digits", source) from None
            matrix = parse_matrix(elem.get("Matrix"), what, source)
            error = _optional_float(elem.get("Error"), f"{what} Error", source)
            out[f"{src}To{dst}"] = CoordinateDefinition(src, dst, matrix, error, elem.get("Date"))
    return out


def _phantom(root: ET.Element, coords: dict[str, CoordinateDefinition], source):
    # PLUS's old phantom-definition files have <PhantomDefinition> as their root element
    definition = root if root.tag == "PhantomDefinition" else root.find("PhantomDefinition")
    if definition is None:
        return None, {}
    description = dict(definition.find("Description").attrib) if definition.find("Description") is not None else {}
    geometry_elem = definition.find("Geometry")
    if geometry_elem is None:
        return None, description
    nwires = []
    for pattern in geometry_elem:
        # current format: <Pattern Type="NWire">; PLUS's old format (before 2.0): <NWire> elements
        # directly under <Geometry>, wires with an Id attribute
        if pattern.tag == "NWire":
            pass
        elif pattern.tag != "Pattern" or pattern.get("Type") != "NWire":
            continue  # other pattern kinds (e.g. CIRS) are not N-wires
        wires = []
        for wire in pattern.findall("Wire"):
            name = wire.get("Name") or wire.get("Id") or f"{len(nwires) * 3 + len(wires) + 1}"
            front = _vec(wire.get("EndPointFront"), 3, f"wire {name} EndPointFront", source)
            back = _vec(wire.get("EndPointBack"), 3, f"wire {name} EndPointBack", source)
            if np.allclose(front, back):
                raise ConfigError(f"wire {name} has identical end points", source)
            wires.append(Wire(name, front, back))
        if len(wires) != 3:
            raise ConfigError(f"an NWire pattern needs exactly 3 wires, got {len(wires)}", source)
        nwires.append(NWire(tuple(wires)))
    if not nwires:
        return None, description
    landmarks = {}
    for landmark in geometry_elem.iter("Landmark"):
        name = landmark.get("Name") or f"#{len(landmarks) + 1}"
        landmarks[name] = _vec(landmark.get("Position"), 3, f"landmark {name} Position", source)
    phantom_to_reference = None
    if "PhantomToReference" in coords:
        phantom_to_reference = coords["PhantomToReference"].matrix.copy()
    elif "ReferenceToPhantom" in coords:
        phantom_to_reference = geometry.invert(coords["ReferenceToPhantom"].matrix)
    name = " ".join(v for v in (description.get("Name"), description.get("Version")) if v) or "phantom"
    return NWirePhantom(name, nwires, landmarks, phantom_to_reference), description


def _delegate(element: ET.Element | None, module: str, function: str, source):
    """Hand an element to the stage that owns its format; keep its attributes if that stage's parser
    is not installed."""
    if element is None:
        return None
    import importlib

    try:
        parser = getattr(importlib.import_module(f"freehand3d.io.{module}"), function)
    except (ModuleNotFoundError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name != f"freehand3d.io.{module}":
            raise
        return dict(element.attrib)
    try:
        return parser(element, source)
    except Freehand3DError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # a malformed element must read as a configuration problem, not as a crash
        raise ConfigError(f"invalid <{element.tag}> element ({exc})", source) from None


def read_device_set(path: str | os.PathLike) -> DeviceSet:
    """Read a PLUS device-set XML.

    Parameters
    ----------
    path : a ``PlusDeviceSet_*.xml`` file.

    Returns
    -------
    DeviceSet
        Coordinate definitions, N-wire phantom (or None), segmentation and volume-reconstruction
        settings, device-set name and description, and the XML root.

    Raises
    ------
    ConfigError
        The file is missing, not well-formed XML (the message gives the line), not a
        ``<PlusConfiguration>`` (or an old-style ``<PhantomDefinition>`` file), or holds invalid
        matrices / wire coordinates. Both phantom formats are read: ``<Pattern Type="NWire">`` and
        PLUS's old ``<NWire>`` elements directly under ``<Geometry>``.

    Examples
    --------
    >>> ds = read_device_set("PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")  # doctest: +SKIP
    >>> len(ds.phantom.wires), ds.transform("PhantomToReference").shape  # doctest: +SKIP
    (9, (4, 4))
    """
    source = os.fspath(path)
    root = _parse_xml(path)
    if not isinstance(root.tag, str) or root.tag not in ("PlusConfiguration", "PhantomDefinition"):
        raise ConfigError(f"not a PLUS device set: the root element is <{root.tag}>, not <PlusConfiguration>", source)
    device_set = root.find("DataCollection/DeviceSet")
    coords = _coordinate_definitions(root, source)
    phantom, description = _phantom(root, coords, source)
    return DeviceSet(
        device_set_name=None if device_set is None else device_set.get("Name"),
        device_set_description=None if device_set is None else device_set.get("Description"),
        coordinate_definitions=coords,
        phantom=phantom,
        phantom_description=description,
        segmentation=_delegate(root.find("Segmentation"), "plus_segmentation", "parse_segmentation", source),
        volume_reconstruction=_delegate(
            root.find("VolumeReconstruction"), "plus_volrec", "parse_volume_reconstruction", source
        ),
        root=root,
        source=source,
    )


def write_device_set(
    source_xml: str | os.PathLike | DeviceSet,
    out_path: str | os.PathLike,
    transforms: dict[str, np.ndarray] | None = None,
    error: float | dict[str, float] | None = None,
    date: str | None = None,
) -> None:
    """Write a copy of a device set with ``<CoordinateDefinitions>`` transforms replaced or added.

    This is how a calibration result reaches PLUS: ``PlusServer``/fCal read ``ImageToProbe`` from the
    device set's coordinate definitions (and Slicer gets it through PlusServer).

    Parameters
    ----------
    source_xml : the device set to copy (path or a :class:`DeviceSet` read earlier).
    out_path : where to write (atomically); may equal the source path.
    transforms : ``{"ImageToProbe": (4, 4), ...}``; an existing ``<Transform>`` with the same From/To
        is updated in place, others are appended.
    error : ``Error`` attribute (e.g. calibration error in mm), one value for all or a dict per name;
        when None, a stale ``Error`` of a replaced transform is removed.
    date : ``Date`` attribute; default now, in PLUS's ``%m%d%y_%H%M%S`` style.
    """
    if isinstance(source_xml, DeviceSet):
        if source_xml.root is None:
            raise ConfigError("the device set has no XML root to write", source_xml.source)
        root = copy.deepcopy(source_xml.root)
    else:
        root = _parse_xml(source_xml)
        if root.tag != "PlusConfiguration":
            raise ConfigError("not a PLUS device set (root is not <PlusConfiguration>)", source_xml)
    transforms = transforms or {}
    date = date if date is not None else time.strftime("%m%d%y_%H%M%S")
    block = root.find("CoordinateDefinitions")
    if block is None:
        block = ET.Element("CoordinateDefinitions")
        # PLUS does not care about the order, but people expect it after DataCollection
        children = list(root)
        position = next((i + 1 for i, c in enumerate(children) if c.tag == "DataCollection"), 0)
        root.insert(position, block)
    for name, matrix in transforms.items():
        src, dst = geometry.split_transform_name(name)
        m = geometry.as_matrix_stack(matrix, name)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"{name} must be one finite 4x4 matrix, got shape {m.shape}")
        elem = next((e for e in block.findall("Transform") if e.get("From") == src and e.get("To") == dst), None)
        if elem is None:
            elem = ET.SubElement(block, "Transform", {"From": src, "To": dst})
        elem.set("Matrix", format_matrix(m))
        err = error.get(name) if isinstance(error, dict) else error
        if err is None:
            elem.attrib.pop("Error", None)
        else:
            elem.set("Error", _num(err))
        elem.set("Date", date)
    with atomic_path(out_path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


# ---------------------------------------------------------------------------- calibration results


def _frame_fields(tracked: ET.Element | None, source) -> tuple[float, dict[str, np.ndarray], dict[str, bool]]:
    timestamp = np.nan
    mats: dict[str, np.ndarray] = {}
    status: dict[str, bool] = {}
    if tracked is None:
        return timestamp, mats, status
    ts = _optional_float(tracked.get("Timestamp"), "TrackedFrame Timestamp", source)
    timestamp = np.nan if ts is None else ts
    for f in tracked.findall("CustomFrameField"):
        name, value = f.get("Name") or "", f.get("Value")
        if name == "Timestamp":
            ts = _optional_float(value, "Timestamp field", source)
            timestamp = timestamp if ts is None else ts
        elif name.endswith("TransformStatus"):
            status[name[: -len("TransformStatus")]] = (value or "").strip().upper() == "OK"
        elif name.endswith("Transform"):
            mats[name[: -len("Transform")]] = parse_matrix(value, f"frame field {name}", source)
    return timestamp, mats, status


def _section(section: ET.Element | None, wire_names: list[str], source) -> SegmentedFrames | None:
    if section is None:
        return None
    frames = section.findall("Frame")
    f, w = len(frames), len(wire_names)
    col = {name: i for i, name in enumerate(wire_names)}
    index = np.zeros(f, dtype=np.int64)
    status: list[str] = []
    points = np.full((f, w, 2), np.nan)
    err3 = np.full((f, w), np.nan)
    err2 = np.full((f, w, 2), np.nan)
    mid_img = np.full((f, 3, 3), np.nan)
    mid_probe = np.full((f, 3, 3), np.nan)
    timestamps = np.full(f, np.nan)
    per_frame_mats: list[dict[str, np.ndarray]] = []
    per_frame_status: list[dict[str, bool]] = []

    def wire_column(elem, what):
        name = elem.get("WireName")
        if name not in col:
            raise ConfigError(f"{what} names an unknown wire {name!r}", source)
        return col[name]

    for i, frame in enumerate(frames):
        try:
            index[i] = int(frame.get("Index", i))
        except ValueError:
            raise ConfigError(f"frame {i}: Index is not an integer", source) from None
        status.append(frame.get("SegmentationStatus", ""))
        where = f"frame {index[i]}"
        for p in frame.findall("SegmentedPoints/Point"):
            points[i, wire_column(p, f"{where} point")] = _vec(p.get("Position"), 3, f"{where} point Position", source)[:2]
        for e in frame.findall("ReprojectionError3DList/ReprojectionError3D"):
            value = _optional_float(e.get("ErrorMm"), f"{where} ErrorMm", source)
            err3[i, wire_column(e, f"{where} 3D error")] = np.nan if value is None else value
        for e in frame.findall("ReprojectionError2DList/ReprojectionError2D"):
            err2[i, wire_column(e, f"{where} 2D error")] = _vec(e.get("ErrorPx"), 2, f"{where} ErrorPx", source)
        for k, m in enumerate(frame.findall("MiddleWires/MiddleWire")[:3]):
            mid_img[i, k] = _vec(m.get("PositionInImageFrame"), 4, f"{where} middle wire", source)[:3]
            mid_probe[i, k] = _vec(m.get("PositionInProbeFrame"), 4, f"{where} middle wire", source)[:3]
        timestamps[i], mats, ok = _frame_fields(frame.find("TrackedFrame"), source)
        per_frame_mats.append(mats)
        per_frame_status.append(ok)
    names = sorted({n for mats in per_frame_mats for n in mats})
    transforms, valid = {}, {}
    for name in names:
        stack = np.full((f, 4, 4), np.nan)
        ok = np.zeros(f, bool)
        for i, mats in enumerate(per_frame_mats):
            if name in mats:
                stack[i] = mats[name]
                ok[i] = per_frame_status[i].get(name, True)
        transforms[name], valid[name] = stack, ok
    return SegmentedFrames(index, status, list(wire_names), points, timestamps, transforms, valid, err3, err2, mid_img, mid_probe)


def read_plus_calibration_results(path: str | os.PathLike) -> PlusCalibrationResults:
    """Read a PLUS probe-calibration report (``<ProbeCalibrationResult>``, e.g.
    ``FreehandCalibration3NWires.results.xml``).

    Returns
    -------
    PlusCalibrationResults
        ``image_to_probe`` (4, 4), the 3D/2D reprojection error statistics, and for the validation and
        calibration sections the per-frame segmented wire points (F, W, 2), poses, timestamps and
        per-wire errors (see :class:`SegmentedFrames`).

    Raises
    ------
    ConfigError
        Missing or malformed file, no ``Image``-to-``Probe`` transform, bad numbers.
    """
    source = os.fspath(path)
    root = _parse_xml(path)
    if root.tag != "ProbeCalibrationResult":
        raise ConfigError(f"not a PLUS calibration report: root element is <{root.tag}>", source)
    result = None
    for t in root.findall("CalibrationResults/Transform"):
        if t.get("From") == "Image" and t.get("To") == "Probe":
            result = parse_matrix(t.get("Matrix"), "ImageToProbe result", source)
    if result is None:
        raise ConfigError("the report has no <CalibrationResults><Transform From=\"Image\" To=\"Probe\">", source)
    report = root.find("ErrorReport")
    stats3: dict[str, float] = {}
    stats2: dict[str, dict[str, np.ndarray]] = {}
    wire_names: list[str] = []
    if report is not None:
        s3 = report.find("ReprojectionError3DStatistics")
        if s3 is not None:
            for attr, key in (
                ("ValidationMeanMm", "validation_mean_mm"),
                ("ValidationStdDevMm", "validation_std_mm"),
                ("CalibrationMeanMm", "calibration_mean_mm"),
                ("CalibrationStdDevMm", "calibration_std_mm"),
            ):
                value = _optional_float(s3.get(attr), attr, source)
                if value is not None:
                    stats3[key] = value
        for wire in report.findall("ReprojectionError2DStatistics/Wire"):
            name = wire.get("Name")
            if not name:
                raise ConfigError("a ReprojectionError2DStatistics <Wire> has no Name", source)
            wire_names.append(name)
            stats2[name] = {
                key: _vec(wire.get(attr), 2, f"wire {name} {attr}", source)
                for attr, key in (
                    ("ValidationMeanPx", "validation_mean_px"),
                    ("ValidationStdDevPx", "validation_std_px"),
                    ("CalibrationMeanPx", "calibration_mean_px"),
                    ("CalibrationStdDevPx", "calibration_std_px"),
                )
                if wire.get(attr) is not None
            }
    if not wire_names and report is not None:
        # no statistics block: take the wire names in order of first appearance
        for p in report.iter("Point"):
            name = p.get("WireName")
            if name and name not in wire_names:
                wire_names.append(name)
    return PlusCalibrationResults(
        image_to_probe=result,
        reprojection_3d=stats3,
        reprojection_2d=stats2,
        validation=_section(None if report is None else report.find("ValidationData"), wire_names, source),
        calibration=_section(None if report is None else report.find("CalibrationData"), wire_names, source),
        source=source,
    )
