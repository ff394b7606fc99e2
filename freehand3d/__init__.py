"""freehand3d: freehand 3D ultrasound from raw frames to volumes.

Stages (each importable on its own): :mod:`freehand3d.io`, :mod:`freehand3d.simulate`,
:mod:`freehand3d.calibration`, :mod:`freehand3d.tracking`, :mod:`freehand3d.compound`,
:mod:`freehand3d.stream`, :mod:`freehand3d.ulm`. They exchange :class:`freehand3d.sweep.Sweep`
objects, numpy arrays and the 4x4 helpers of :mod:`freehand3d.geometry`.
"""

__version__ = "0.1.0"

from freehand3d.errors import ConfigError, Freehand3DError, InputError  # noqa: E402


def __getattr__(name):
    # Sweep pulls in numpy/scipy; importing it lazily keeps `freehand3d --help` fast
    if name == "Sweep":
        from freehand3d.sweep import Sweep

        return Sweep
    raise AttributeError(f"module 'freehand3d' has no attribute {name!r}")


__all__ = ["Sweep", "Freehand3DError", "InputError", "ConfigError", "__version__"]
