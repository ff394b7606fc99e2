"""N-wire probe calibration: ``detect`` (dots) -> ``nwire`` (lines, labels, similar triangles) ->
``solve`` (RANSAC+LM, PLUS LSQR) -> ``metrics`` (PRE3D, 2D, CRE); ``pipeline.calibrate`` runs them all.

>>> from freehand3d.calibration import calibrate, detect_points, find_nwires   # doctest: +SKIP
"""

from freehand3d.calibration.detect import detect_points
from freehand3d.calibration.nwire import find_nwires, middle_wire_points
from freehand3d.calibration.pipeline import CalibrationResult, calibrate, calibrate_files

__all__ = ["detect_points", "find_nwires", "middle_wire_points", "calibrate", "calibrate_files", "CalibrationResult"]
