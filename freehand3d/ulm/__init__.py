"""Ultrasound localization microscopy from RF channel data.

Geometric ULM (:func:`localize`, after Hahne & Sznitman, MICCAI 2023) and a delay-and-sum +
weighted-average baseline (:func:`localize_das_wa`), PALA-style scores (:func:`evaluate`) and
density maps. Stages: :mod:`.echoes` (MEMGO fits), :mod:`.intersect` (conic intersections),
:mod:`.cluster` (mean shift), :mod:`.pipeline`, :mod:`.baseline`, :mod:`.metrics`, :mod:`.render`;
see docs/ulm.md.
"""

from freehand3d.ulm.baseline import localize_das_wa
from freehand3d.ulm.metrics import evaluate
from freehand3d.ulm.pipeline import localize
from freehand3d.ulm.probe import LinearProbe

__all__ = ["LinearProbe", "localize", "localize_das_wa", "evaluate"]
