"""N-wire segmentation of a recording on its own (``freehand3d segment``): the labelled wire points
of every frame, or why a frame failed, and PLUS's segmentation test baselines
(``*_Segmentation_baseline.xml``, ``<TestResults>``) to compare with.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freehand3d.errors import ConfigError, InputError


@dataclass
class FrameSegmentation:
    index: int
    points: np.ndarray | None  # (3 L, 2) pixels in PLUS order, or None
    reason: str | None = None  # why it failed
    candidates: int = 0

    def to_json(self) -> dict:
        return {"index": self.index, "ok": self.points is not None,
                "points": None if self.points is None else np.round(self.points, 4).tolist(),
                "reason": self.reason, "candidates": self.candidates}


@dataclass
class SegmentationRun:
    frames: list[FrameSegmentation]
    detection: str
    phantom: str
    details: dict = field(default_factory=dict)

    @property
    def segmented(self) -> int:
        return sum(f.points is not None for f in self.frames)

    def to_json(self) -> dict:
        return {"frames_total": len(self.frames), "frames_segmented": self.segmented, "detection": self.detection,
                "phantom": self.phantom, **self.details, "frames": [f.to_json() for f in self.frames]}


def segment_frames(sweep, phantom, params, detection: str = "plus", progress=None) -> SegmentationRun:
    """Detect and label the N-wire dots of every frame, keeping the reason of each failure."""
    from freehand3d.calibration.detect import detect_points
    from freehand3d.calibration.nwire import find_nwires
    from freehand3d.calibration.pipeline import _spacing_of

    spacing = _spacing_of(sweep, params)
    need = 3 * len(phantom.nwires)
    image_ok = sweep.image_valid
    out = []
    for i in range(len(sweep)):
        if not image_ok[i]:
            out.append(FrameSegmentation(i, None, "image status is not OK"))
        else:
            pts = detect_points(sweep.frames[i], spacing, detection, params=params)
            if len(pts) < need:
                out.append(FrameSegmentation(i, None, f"only {len(pts)} candidate dots, the phantom needs {need}",
                                             len(pts)))
            else:
                lab = find_nwires(pts, phantom, spacing, params)
                reason = None if lab is not None else (
                    f"no {len(phantom.nwires)} collinear dot triples among the {len(pts)} candidates match the "
                    "phantom's N-wire geometry")
                out.append(FrameSegmentation(i, lab, reason, len(pts)))
        if progress is not None:
            progress(1)
    return SegmentationRun(out, detection, phantom.name)


def read_plus_segmentation_baseline(path: str | os.PathLike) -> dict[int, np.ndarray | None]:
    """PLUS's segmentation test baseline (``<TestResults><TestCase><Input ImageSeqFrameIndex>
    <Output SegmentationSuccess SegmentationPoints>``): frame index -> (K, 2) points or None."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"cannot be read as XML ({exc})", path) from None
    if root.tag != "TestResults":
        raise InputError(f"not a PLUS segmentation baseline (root <{root.tag}>, expected <TestResults>)", path)
    out: dict[int, np.ndarray | None] = {}
    for case in root.findall("TestCase"):
        inp, res = case.find("Input"), case.find("Output")
        if inp is None or res is None:
            continue
        idx = int(inp.get("ImageSeqFrameIndex", "-1"))
        if res.get("SegmentationSuccess") == "1":
            out[idx] = np.array(res.get("SegmentationPoints", "").split(), float).reshape(-1, 2)
        else:
            out[idx] = None
    return out


def compare_with_baseline(run: SegmentationRun, baseline: dict[int, np.ndarray | None]) -> dict:
    """Frames segmented by each, and the largest point distance (px) on frames both segmented."""
    both, worst = 0, []
    for f in run.frames:
        b = baseline.get(f.index)
        if f.points is None or b is None or b.shape != f.points.shape:
            continue
        both += 1
        worst.append(float(np.linalg.norm(f.points - b, axis=1).max()))
    worst_arr = np.array(worst) if worst else np.zeros(0)
    return {
        "frames_segmented": run.segmented,
        "baseline_frames_segmented": sum(v is not None for v in baseline.values()),
        "frames_both": both,
        "max_point_distance_px": float(worst_arr.max()) if both else None,
        "frames_over_1px": int((worst_arr > 1.0).sum()),
        "baseline_frames_missed": sorted(k for k, v in baseline.items() if v is not None
                                         and (k >= len(run.frames) or run.frames[k].points is None)),
    }


def segment_files(recording, config, output, *, phantom=None, detection: str = "plus", baseline=None,
                  progress_factory=None) -> SegmentationRun:
    """What ``freehand3d segment`` runs: read, segment, (compare), write the JSON atomically."""
    import json

    from freehand3d._atomic import write_text_atomic
    from freehand3d.io import read_sweep
    from freehand3d.io.plus_config import read_device_set
    from freehand3d.io.plus_segmentation import SegmentationParams
    from freehand3d.phantoms import load_phantom

    if detection not in ("plus", "hessian"):
        raise ConfigError(f"--detection must be plus or hessian, not {detection!r}")
    if not Path(recording).exists():
        raise InputError("file not found", recording)
    if not Path(config).exists():
        raise ConfigError("device-set file not found", config)
    if baseline is not None and not Path(baseline).exists():
        raise InputError("file not found", baseline)
    if Path(output).is_dir():
        raise ConfigError("is a folder; give a .json file name", output)
    ds = read_device_set(config)
    params = ds.segmentation if isinstance(ds.segmentation, SegmentationParams) else SegmentationParams()
    model = load_phantom(phantom) if phantom is not None else ds.phantom
    if model is None:
        raise ConfigError("has no N-wire <PhantomDefinition>; give --phantom", config)
    base = read_plus_segmentation_baseline(baseline) if baseline is not None else None
    sweep = read_sweep(recording)
    if sweep.frame_shape[0] * sweep.frame_shape[1] == 0:
        raise InputError("holds no images (a tracker-only recording)", recording)
    progress = progress_factory(len(sweep)) if progress_factory is not None else None
    run = segment_frames(sweep, model, params, detection, progress)
    run.details["recording"] = str(recording)
    run.details["config"] = str(config)
    run.details["point_order"] = "PLUS: layer by layer, wires 1, 2, 3 of each N-wire"
    if base is not None:
        run.details["baseline"] = {"file": str(baseline), **compare_with_baseline(run, base)}
    write_text_atomic(output, json.dumps(run.to_json(), indent=1) + "\n")
    return run


__all__ = ["FrameSegmentation", "SegmentationRun", "segment_frames", "segment_files",
           "read_plus_segmentation_baseline", "compare_with_baseline"]
