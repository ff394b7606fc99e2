"""What a file holds, as plain Python values: the library side of ``freehand3d info``.

:func:`summarize_file` recognises tracked sweeps (anything :func:`freehand3d.io.read_sweep` reads),
3D volumes (.nrrd/.mha/.mhd with three spatial axes, .nii, .nii.gz) and PLUS device-set XML files.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

_VOLUME_ONLY = (".nii", ".nii.gz")
_HEADER_SUFFIXES = (".mha", ".mhd", ".nrrd")


def summarize_sweep(sweep: Sweep) -> dict:
    """Frame count and size, spacing, orientation, transforms with valid/invalid counts, time span
    and mean frame rate, image-status counts and calibration of a sweep.

    Returns
    -------
    dict
        ``kind="sweep"`` plus ``n_frames``, ``width``, ``height``, ``pixel_type`` (numpy name, e.g.
        ``"int16"``), ``components`` (values per pixel), ``value_range`` (min, max of the finite
        pixel values, or None), ``image_type`` (PLUS ``UltrasoundImageType``, e.g. ``BRIGHTNESS``,
        ``RF_I_LINE_Q_LINE``, or None), ``spacing`` (or None),
        ``calibration_pixel_size`` (mm per pixel along x and y from ImageToProbe, or None),
        ``orientation``, ``transforms`` (name -> {valid, invalid, non_finite}), ``time`` (start, end,
        span, mean_rate, missing, non_increasing), ``image_status`` (word -> count or None),
        ``image_to_probe`` (4x4 list or None), ``frame_fields`` (other per-frame field names) and
        ``metadata`` (header fields).
    """
    n = len(sweep)
    h, w = sweep.frame_shape
    transforms = {}
    for name, mats in sweep.transforms.items():
        ok = sweep.valid.get(name, np.ones(n, bool))
        finite = np.isfinite(mats).all(axis=(1, 2))
        transforms[name] = {"valid": int(ok.sum()), "invalid": int(n - ok.sum()), "non_finite": int((~finite).sum())}

    stamps = np.asarray(sweep.timestamps, dtype=np.float64)
    finite_stamps = stamps[np.isfinite(stamps)]
    time = {"start": None, "end": None, "span": None, "mean_rate": None,
            "missing": int(n - len(finite_stamps)), "non_increasing": 0}
    if len(finite_stamps):
        start, end = float(finite_stamps.min()), float(finite_stamps.max())
        span = end - start
        time.update(start=start, end=end, span=span,
                    # frames per second over the recording: (count - 1) intervals in the span
                    mean_rate=(len(finite_stamps) - 1) / span if span > 0 else None,
                    non_increasing=int((np.diff(finite_stamps) <= 0).sum()))

    status = sweep.frame_fields.get("ImageStatus")
    image_status = dict(Counter(s.strip() or "(missing)" for s in status)) if status is not None else None

    itp = sweep.image_to_probe
    if itp is None and "ImageToProbe" in sweep.transforms:
        ok = sweep.valid["ImageToProbe"]
        itp = sweep.transforms["ImageToProbe"][int(np.argmax(ok))] if ok.any() else None
    pixel_size = None
    if itp is not None:
        # columns 0 and 1 of ImageToProbe are the probe-frame vectors of one pixel step in x and y
        pixel_size = (float(np.linalg.norm(itp[:3, 0])), float(np.linalg.norm(itp[:3, 1])))

    frames = sweep.frames
    value_range = None
    if frames.size:
        finite = frames if frames.dtype.kind != "f" else frames[np.isfinite(frames)]
        if finite.size:
            value_range = (finite.min().item(), finite.max().item())

    known = {"ImageStatus"}
    return {
        "kind": "sweep",
        "n_frames": n,
        "width": w,
        "height": h,
        "pixel_type": frames.dtype.name,
        "components": sweep.n_components,
        "value_range": value_range,
        "image_type": sweep.metadata.get("UltrasoundImageType"),
        "spacing": sweep.spacing,
        "calibration_pixel_size": pixel_size,
        "orientation": sweep.metadata.get("UltrasoundImageOrientation"),
        "transforms": transforms,
        "time": time,
        "image_status": image_status,
        "image_to_probe": None if itp is None else np.asarray(itp).tolist(),
        "frame_fields": [k for k in sweep.frame_fields if k not in known],
        "metadata": {k: str(v) for k, v in sweep.metadata.items()},
    }


def _container(path: Path) -> str | None:
    """'MetaImage, zlib' style description of a PLUS sequence container, from its header."""
    from freehand3d.io.plus_sequence import read_plus_header

    header = read_plus_header(path)
    if header.container == "metaimage":
        compressed = (header.get("CompressedData") or "").strip().lower() == "true"
        return "MetaImage, " + ("zlib" if compressed else "raw")
    encoding = (header.get("encoding") or "raw").strip().lower()
    return "NRRD, " + ("gzip" if encoding in ("gz", "gzip") else encoding)


def summarize_file(path: str | os.PathLike) -> dict:
    """Summarize any file freehand3d reads: a sweep, a volume, a PLUS device set or calibration report.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        ``path`` and ``kind`` (``"sweep"``, ``"volume"``, ``"device_set"`` or ``"calibration_report"``)
        plus the facts of that kind: :func:`summarize_sweep` for sweeps (with ``format``),
        size/spacing/origin/direction/pixel type/value range for volumes, name, transforms, phantom and
        sections for device sets, ImageToProbe and reprojection errors for calibration reports.

    Raises
    ------
    InputError
        The file is missing, of an unknown type or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not a file", path)
    name = path.name.lower()

    if name.endswith(".xml"):
        return _summarize_device_set(path)

    if name.endswith(_VOLUME_ONLY):
        return _summarize_volume(path)

    if name.endswith(_HEADER_SUFFIXES):
        from freehand3d.io.plus_sequence import header_is_volume, read_plus_header

        if header_is_volume(read_plus_header(path)):
            return _summarize_volume(path)

    from freehand3d.io import read_sweep

    sweep = read_sweep(path)
    summary = summarize_sweep(sweep)
    summary["path"] = str(path)
    summary["format"] = _container(path) if name.endswith(_HEADER_SUFFIXES) else _h5_kind(path)
    return summary


def _h5_kind(path: Path) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        keys = set(f.keys())
    return "TUS-REC h5" if {"frames", "tforms"} <= keys else "DualTrack h5"


def _summarize_volume(path: Path) -> dict:
    from freehand3d.io.volumes import read_volume, volume_summary

    summary = volume_summary(read_volume(path))
    summary.update(kind="volume", path=str(path))
    return summary


def _xml_root_tag(path: Path) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except (ET.ParseError, OSError):
        return None  # the full reader below reports the problem properly
    return None


def _summarize_device_set(path: Path) -> dict:
    try:
        from freehand3d.io import plus_config
    except ImportError:  # the device-set reader is a separate module of the io package
        raise InputError("device-set XML support is not installed", path) from None
    if _xml_root_tag(path) == "ProbeCalibrationResult":
        report = plus_config.read_plus_calibration_results(path)
        return {
            "kind": "calibration_report",
            "path": str(path),
            "image_to_probe": np.asarray(report.image_to_probe).tolist(),
            "reprojection_3d": dict(report.reprojection_3d),
            "validation_frames": None if report.validation is None else len(report.validation.index),
            "calibration_frames": None if report.calibration is None else len(report.calibration.index),
        }
    device_set = plus_config.read_device_set(path)
    transforms = {
        name: {"matrix": np.asarray(c.matrix).tolist(), "error": c.error, "date": c.date}
        for name, c in device_set.coordinate_definitions.items()
    }
    phantom = device_set.phantom
    return {
        "kind": "device_set",
        "path": str(path),
        "name": device_set.device_set_name,
        "description": device_set.device_set_description,
        "transforms": transforms,
        "phantom": None if phantom is None else f"{phantom.name}: {len(phantom.nwires)} N-wires, {len(phantom.wires)} wires",
        "segmentation": device_set.segmentation is not None,
        "volume_reconstruction": device_set.volume_reconstruction is not None,
    }


__all__ = ["summarize_file", "summarize_sweep"]
