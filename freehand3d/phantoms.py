"""N-wire phantom definitions: the geometry shared by calibration and the simulator.

A phantom is a list of N-wire patterns ("layers"); each pattern has three wires given by two end
points in phantom coordinates (mm), in PLUS's order: wire 1 and wire 3 are the parallel side wires,
wire 2 the diagonal. Definitions come from the YAML files in the repository's ``phantoms/`` folder
(``load_phantom("fcal-1.2")``) or from any PLUS device-set XML with a ``<PhantomDefinition>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freehand3d.errors import ConfigError

PHANTOM_DIR = Path(__file__).resolve().parent.parent / "phantoms"


@dataclass(frozen=True)
class Wire:
    """One wire: ``name`` as in PLUS (e.g. ``"2:I2_f2"``), end points (3,) in phantom mm."""

    name: str
    front: np.ndarray
    back: np.ndarray

    def point_at(self, fraction: float) -> np.ndarray:
        """Point ``front + fraction * (back - front)``."""
        return self.front + fraction * (self.back - self.front)

    def distance_to(self, points) -> np.ndarray:
        """Distance (mm) of points (..., 3) to the infinite line through the wire."""
        p = np.asarray(points, float)
        d = (self.back - self.front) / np.linalg.norm(self.back - self.front)
        v = p - self.front
        return np.linalg.norm(v - (v @ d)[..., None] * d, axis=-1)


@dataclass(frozen=True)
class NWire:
    """Three wires forming an N: ``wires[1]`` is the diagonal joining ``wires[0]`` and ``wires[2]``."""

    wires: tuple[Wire, Wire, Wire]


@dataclass
class NWirePhantom:
    """An N-wire calibration phantom.

    Attributes
    ----------
    name : e.g. ``"fCal 1.2"``.
    nwires : the patterns, in the order the definition lists them.
    landmarks : name -> (3,) phantom mm (for landmark registration), may be empty.
    phantom_to_reference : (4, 4) when a device set gives it (phantom registration), else None.
    """

    name: str
    nwires: list[NWire]
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    phantom_to_reference: np.ndarray | None = None

    @property
    def wires(self) -> list[Wire]:
        """All wires in definition order (3 per N-wire)."""
        return [w for n in self.nwires for w in n.wires]

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "nwires": [
                [{"name": w.name, "front": w.front.tolist(), "back": w.back.tolist()} for w in n.wires]
                for n in self.nwires
            ],
        }
        if self.landmarks:
            out["landmarks"] = {k: v.tolist() for k, v in self.landmarks.items()}
        if self.phantom_to_reference is not None:
            out["phantom_to_reference"] = self.phantom_to_reference.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "NWirePhantom":
        try:
            nwires = []
            for pattern in data["nwires"]:
                wires = tuple(
                    Wire(str(w["name"]), _vec3(w["front"], source), _vec3(w["back"], source)) for w in pattern
                )
                if len(wires) != 3:
                    raise ConfigError(f"an N-wire pattern needs exactly 3 wires, got {len(wires)}", source)
                nwires.append(NWire(wires))
            landmarks = {str(k): _vec3(v, source) for k, v in (data.get("landmarks") or {}).items()}
            ptr = data.get("phantom_to_reference")
            ptr = None if ptr is None else np.asarray(ptr, float).reshape(4, 4)
            if not nwires:
                raise ConfigError("the phantom defines no N-wire pattern", source)
            return cls(str(data.get("name", "phantom")), nwires, landmarks, ptr)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid phantom definition ({exc})", source) from None


def _vec3(value, source) -> np.ndarray:
    if isinstance(value, str):
        value = value.split()
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ConfigError(f"expected 3 finite coordinates, got {value!r}", source)
    return arr


def available_phantoms() -> list[str]:
    """Names of the phantom YAML files shipped in ``phantoms/``."""
    return sorted(p.name[: -len(".yaml")] for p in PHANTOM_DIR.glob("*.yaml"))


def load_phantom(spec: str | os.PathLike) -> NWirePhantom:
    """Load a phantom from a shipped name (``"fcal-1.2"``), a YAML file or a PLUS device-set XML."""
    import yaml

    path = Path(spec)
    if not path.exists() and (PHANTOM_DIR / f"{spec}.yaml").exists():
        path = PHANTOM_DIR / f"{spec}.yaml"
    if not path.exists():
        raise ConfigError(
            f"no such phantom file or shipped phantom (shipped: {', '.join(available_phantoms())})", str(spec)
        )
    if path.suffix.lower() == ".xml":
        from freehand3d.io.plus_config import read_device_set

        device_set = read_device_set(path)
        if device_set.phantom is None:
            raise ConfigError("the device set has no <PhantomDefinition> with NWire patterns", path)
        return device_set.phantom
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read phantom YAML ({exc.__class__.__name__})", path) from None
    if not isinstance(data, dict):
        raise ConfigError("a phantom YAML must be a mapping with 'name' and 'nwires'", path)
    return NWirePhantom.from_dict(data, str(path))
