"""Simulated ultrasound with exact ground truth: N-wire calibration recordings and freehand sweeps.

- :func:`simulate_nwire` -- tracked frames of an N-wire phantom at a known calibration, with the
  exact pixel where every wire crosses every image.
- :func:`simulate_freehand` -- a speckle volume with a few structures sliced along a smooth
  freehand trajectory, with the true poses and the volume.
- :func:`save_truth` / :func:`load_truth` -- the ground truth as ``.npz`` beside the sweep.
"""

from freehand3d.simulate._truth import load_truth, save_truth
from freehand3d.simulate.freehand import EchoVolume, make_echo_volume, freehand_trajectory, simulate_freehand
from freehand3d.simulate.nwire import (
    NoiseSettings,
    default_image_to_probe,
    nwire_probe_poses,
    simulate_nwire,
    wire_intersections,
)

__all__ = [
    "simulate_nwire",
    "simulate_freehand",
    "nwire_probe_poses",
    "wire_intersections",
    "default_image_to_probe",
    "NoiseSettings",
    "EchoVolume",
    "make_echo_volume",
    "freehand_trajectory",
    "save_truth",
    "load_truth",
]
