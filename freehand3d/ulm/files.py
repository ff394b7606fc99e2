"""File-level ULM operations behind the ``freehand3d ulm`` commands (one library call per command).

* RF data: :func:`save_rf` / :func:`load_rf` (``rf.npz``, strict metadata, see :func:`check_acquisition`);
  real recordings through :mod:`freehand3d.ulm.readers` (PALA ``.mat``, Verasonics ``RcvData``).
* Ground truth: :func:`save_ground_truth` / :func:`load_ground_truth` (``gt.npz``: our ListPos in mm,
  (x, z, amplitude)); :func:`read_pala_listpos` / :func:`write_pala_listpos` for PALA's own ListPos
  layout (x, y, z in wavelengths).
* Points CSV: an optional first comment line ``# wavelength_mm=<value>`` followed by a header
  ``frame,x_mm,z_mm`` and one row per localization (frame index, lateral and axial position in mm).
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
import math
import os
import warnings
from pathlib import Path

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.errors import ConfigError, InputError, ResourceError
from freehand3d.ulm.probe import LinearProbe

__all__ = [
    "ULMWarning",
    "write_points_csv",
    "read_points_csv",
    "save_rf",
    "load_rf",
    "check_acquisition",
    "save_ground_truth",
    "load_ground_truth",
    "read_pala_listpos",
    "write_pala_listpos",
    "localize_file",
    "evaluate_files",
    "render_file",
]

METHODS = ("gulm", "das-wa")

#: largest density map ``ulm render`` will allocate (pixels)
MAX_RENDER_PIXELS = 50_000_000


#: what a damaged .npz can raise from np.load / reading its members
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


class ULMWarning(UserWarning):
    """A documented default was taken or data were masked (e.g. the pulse estimated from the data)."""


def write_points_csv(path: str | os.PathLike, points: np.ndarray, wavelength: float | None = None) -> None:
    """Write (N, 3) (frame, x, z) localizations to CSV (atomically)."""
    points = np.asarray(points, float).reshape(-1, 3)
    buf = io.StringIO()
    if wavelength is not None:
        buf.write(f"# wavelength_mm={wavelength:.9g}\n")
    buf.write("frame,x_mm,z_mm\n")
    for frame, x, z in points:
        buf.write(f"{int(frame)},{x:.6f},{z:.6f}\n")
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a points CSV: ((N, 3) array, wavelength in mm or None)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text at byte {exc.start}: not a points CSV", path) from exc
    except OSError as exc:
        raise InputError(f"cannot read points ({exc.strerror or exc})", path) from exc
    wavelength = None
    rows = []
    header_seen = False
    for number, line in enumerate(lines, 1):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        if line.startswith("#"):
            if "wavelength_mm=" in line:
                try:
                    wavelength = float(line.split("wavelength_mm=")[1].split()[0])
                except (ValueError, IndexError) as exc:
                    raise InputError(f"line {number}: bad wavelength comment", path) from exc
                if not (math.isfinite(wavelength) and 0.005 <= wavelength <= 5.0):
                    raise InputError(f"line {number}: wavelength_mm={wavelength:g} is not a wavelength in mm (0.005..5)", path)
            continue
        if not header_seen:
            if line.replace(" ", "") != "frame,x_mm,z_mm":
                raise InputError("expected the header 'frame,x_mm,z_mm'", path)
            header_seen = True
            continue
        parts = line.split(",")
        if len(parts) != 3:
            raise InputError(f"line {number}: expected 3 columns, got {len(parts)}", path)
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise InputError(f"line {number}: not three numbers", path) from exc
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"line {number}: NaN or infinite value", path)
        rows.append(values)
    if not header_seen:
        raise InputError("empty file: expected the header 'frame,x_mm,z_mm'", path)
    return np.asarray(rows, float).reshape(-1, 3), wavelength


# --------------------------------------------------------------------------------------------
# RF data


#: what every RF file must state (no silent defaults): key -> (meaning, unit)
REQUIRED_RF_KEYS = {
    "probe_center_frequency": "transmit centre frequency in Hz",
    "probe_sampling_frequency": "RF sampling frequency in Hz",
    "probe_speed_of_sound": "speed of sound in mm/s (1540 m/s = 1.54e6)",
    "probe_pitch": "element pitch in mm",
    "tx_angle": "plane-wave steering angle in radians",
    "t0": "time of the first sample in s (0 = first element fires)",
}


def check_acquisition(probe: LinearProbe, tx_angle: float, t0: float, where: str | os.PathLike | None = None) -> None:
    """Refuse metadata whose values are in the wrong unit or impossible (one-line InputError).

    Accepted ranges: centre frequency 0.5-100 MHz (given in Hz), sampling rate at least twice the
    centre frequency (RF, not IQ), speed of sound 1.3e6-1.8e6 mm/s, pitch 0.01-2 mm, steering angle
    within +-0.5 rad (28.6 degrees), |t0| < 1 ms. Values that look like another unit (MHz, m/s, m,
    degrees, microseconds) are named as such.
    """

    def bad(problem):
        raise InputError(problem, where)

    fc, fs, c, pitch = probe.center_frequency, probe.sampling_frequency, probe.speed_of_sound, probe.pitch
    for name, value in (("centre frequency", fc), ("sampling frequency", fs), ("speed of sound", c), ("pitch", pitch), ("tx_angle", tx_angle), ("t0", t0)):
        if not math.isfinite(value):
            bad(f"{name} is {value}")
    for name, value in (("centre frequency", fc), ("sampling frequency", fs)):
        if 0 < value < 1e3:
            bad(f"{name} {value:g} looks like MHz: give it in Hz ({value:g}e6)")
        if not 0.5e6 <= value <= 500e6:
            bad(f"{name} {value:g} Hz is outside 0.5 MHz .. 500 MHz")
    if fc > 100e6:
        bad(f"centre frequency {fc:g} Hz is above 100 MHz")
    if fs < 2 * fc:
        bad(f"sampling frequency {fs:g} Hz is below twice the centre frequency {fc:g} Hz (RF data needed, not IQ; or the two are swapped)")
    if 1.3e3 <= c <= 1.8e3:
        bad(f"speed of sound {c:g} looks like m/s: the file stores mm/s ({c:g}e3)")
    if 1.3 <= c <= 1.8:
        bad(f"speed of sound {c:g} looks like mm/us or km/s: the file stores mm/s ({c:g}e6)")
    if not 1.3e6 <= c <= 1.8e6:
        bad(f"speed of sound {c:g} mm/s is outside 1.3e6 .. 1.8e6 mm/s")
    if 1e-5 <= pitch < 2e-3:
        bad(f"pitch {pitch:g} looks like metres: give it in mm ({pitch * 1e3:g})")
    if not 0.01 <= pitch <= 2.0:
        bad(f"pitch {pitch:g} mm is outside 0.01 .. 2 mm")
    if abs(tx_angle) > 0.5:
        hint = " (looks like degrees: give radians)" if abs(tx_angle) <= 45 else ""
        bad(f"tx_angle {tx_angle:g} rad is beyond +-0.5 rad{hint}")
    if abs(t0) >= 1e-3:
        bad(f"t0 {t0:g} s is beyond 1 ms (looks like microseconds or samples: give seconds)")


def save_rf(path: str | os.PathLike, rf: np.ndarray, probe: LinearProbe, *, tx_angle: float = 0.0, t0: float = 0.0, **extra) -> None:
    """Write RF data and acquisition parameters to an ``.npz`` file (atomically).

    Keys: ``rf`` (n_frames, n_samples, n_elements) float32, ``tx_angle`` (radians), ``t0`` (s), one
    key per :class:`LinearProbe` field prefixed ``probe_``, plus ``extra`` arrays (e.g. ``pulse_t``,
    ``pulse``: the two-way pulse, envelope maximum at t = 0).
    """
    fields = {f"probe_{k}": np.asarray(v) for k, v in probe.to_dict().items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, rf=np.asarray(rf, dtype=np.float32), tx_angle=np.asarray(tx_angle), t0=np.asarray(t0), **fields, **{k: np.asarray(v) for k, v in extra.items()})


def load_rf(path: str | os.PathLike) -> tuple[np.ndarray, LinearProbe, dict]:
    """Read an RF ``.npz`` (layout of :func:`save_rf`): (rf, probe, {"tx_angle", "t0", ...}).

    Strict: every key of :data:`REQUIRED_RF_KEYS` must be present (no defaults), units are checked
    by :func:`check_acquisition`, ``probe_n_elements`` (if given) must match the channels, and a
    sampled pulse needs both ``pulse_t`` and ``pulse``. ``probe_element_width`` (simulation only) and
    ``probe_fractional_bandwidth`` (the analytic pulse model only) default to 0.8 pitch and 0.67.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        from freehand3d.ulm.readers import read_mat_rf

        return read_mat_rf(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {k: data[k] for k in data.files}
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except _NPZ_ERRORS as exc:
        raise InputError(f"cannot read RF data ({exc})", path) from exc
    if "rf" not in content:
        raise InputError("no 'rf' array: not a freehand3d ULM RF file", path)
    missing = [k for k in REQUIRED_RF_KEYS if k not in content]
    if missing:
        raise InputError("missing " + ", ".join(f"'{k}' ({REQUIRED_RF_KEYS[k]})" for k in missing), path)
    rf = content.pop("rf")
    if np.iscomplexobj(rf):
        raise InputError("'rf' is complex (IQ data): G-ULM needs real RF samples", path)
    if not np.issubdtype(rf.dtype, np.number) or rf.dtype == bool:
        raise InputError(f"'rf' has dtype {rf.dtype}, expected numbers", path)
    if rf.ndim == 2:
        rf = rf[None]
    if rf.ndim != 3:
        raise InputError(f"'rf' must be (n_frames, n_samples, n_elements), got shape {rf.shape}", path)
    if rf.shape[1] < 16 or rf.shape[2] < 2 or rf.shape[0] < 1:
        raise InputError(f"'rf' shape {rf.shape} holds too little data (need >= 16 samples, >= 2 channels)", path)
    scalars = {}
    for key, value in content.items():
        if key.startswith("probe_") or key in ("tx_angle", "t0"):
            if value.size != 1 or not np.issubdtype(value.dtype, np.number):
                raise InputError(f"'{key}' must be one number, got {value.dtype} of shape {value.shape}", path)
            scalars[key] = float(value)
    n_elements = rf.shape[2]
    if "probe_n_elements" in scalars and int(scalars["probe_n_elements"]) != n_elements:
        raise InputError(f"'rf' has {n_elements} channels but probe_n_elements is {int(scalars['probe_n_elements'])}", path)
    pitch = scalars["probe_pitch"]
    probe = LinearProbe(
        n_elements=n_elements,
        pitch=pitch,
        element_width=scalars.get("probe_element_width", 0.8 * pitch),
        center_frequency=scalars["probe_center_frequency"],
        sampling_frequency=scalars["probe_sampling_frequency"],
        speed_of_sound=scalars["probe_speed_of_sound"],
        fractional_bandwidth=scalars.get("probe_fractional_bandwidth", 0.67),
    )
    check_acquisition(probe, scalars["tx_angle"], scalars["t0"], path)
    acq = {k: v.item() if v.ndim == 0 else v for k, v in content.items() if not k.startswith("probe_")}
    acq["tx_angle"], acq["t0"] = scalars["tx_angle"], scalars["t0"]
    if ("pulse" in acq) != ("pulse_t" in acq):
        raise InputError("a sampled pulse needs both 'pulse_t' (s) and 'pulse'", path)
    if "pulse" in acq:
        pt, pv = np.asarray(acq["pulse_t"], float), np.asarray(acq["pulse"], float)
        if pt.ndim != 1 or pt.shape != pv.shape or len(pt) < 8 or not (np.isfinite(pt).all() and np.isfinite(pv).all()) or np.any(np.diff(pt) <= 0):
            raise InputError("'pulse_t'/'pulse' must be two finite 1-D arrays of equal length (>= 8), times increasing", path)
        if not pt[0] < 0 < pt[-1]:
            raise InputError("'pulse_t' must span t = 0 (the pulse's envelope maximum)", path)
    if not np.isfinite(rf).any():
        raise InputError("every RF sample is NaN or infinite", path)
    return rf, probe, acq


# --------------------------------------------------------------------------------------------
# ground truth


def save_ground_truth(path: str | os.PathLike, list_pos: np.ndarray, probe: LinearProbe | None = None) -> None:
    """Write our ListPos (n_bubbles, 3, n_frames; x mm, z mm, amplitude) to ``.npz`` (atomically).

    Not PALA's layout (PALA's ListPos is x, y, z in wavelengths): see :func:`write_pala_listpos`.
    """
    probe = probe or LinearProbe()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, ListPos=np.asarray(list_pos, dtype=np.float64), units=np.asarray("mm"), columns=np.asarray("x,z,amplitude"), wavelength=np.asarray(probe.wavelength))


def load_ground_truth(path: str | os.PathLike) -> np.ndarray:
    """Read our ListPos (n_bubbles, 3, n_frames; x mm, z mm, amplitude) from :func:`save_ground_truth`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "ListPos" not in data.files:
                raise InputError("no 'ListPos' array: not a ULM ground-truth file", path)
            list_pos = data["ListPos"]
            units = str(data["units"]) if "units" in data.files else "mm"
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except _NPZ_ERRORS as exc:
        raise InputError(f"cannot read ground truth ({exc})", path) from exc
    if units != "mm":
        raise InputError(f"ListPos units {units!r}: expected 'mm'", path)
    if list_pos.ndim != 3 or list_pos.shape[1] != 3 or not np.issubdtype(list_pos.dtype, np.number):
        raise InputError(f"ListPos must be (n_bubbles, 3, n_frames) numbers, got {list_pos.dtype} {list_pos.shape}", path)
    return np.asarray(list_pos, float)


def pala_to_listpos(pala: np.ndarray, wavelength: float, n_frames: int | None = None) -> np.ndarray:
    """PALA ListPos -> ours. PALA: (n_bubbles, 3, n_frames) with (x, y, z) in wavelengths, or one
    frame (n_bubbles, 3); ours: (x, z, amplitude) in mm, amplitude 1 (y is dropped: 2-D imaging)."""
    pala = np.asarray(pala, float)
    if pala.ndim == 2:
        pala = pala[:, :, None]
    if pala.ndim != 3 or pala.shape[1] != 3:
        raise ValueError(f"PALA ListPos must be (n_bubbles, 3[, n_frames]), got {pala.shape}")
    out = np.full(pala.shape, np.nan)
    out[:, 0] = pala[:, 0] * wavelength
    out[:, 1] = pala[:, 2] * wavelength
    present = np.isfinite(out[:, 0]) & np.isfinite(out[:, 1])
    out[:, 2] = np.where(present, 1.0, np.nan)
    return out


def listpos_to_pala(list_pos: np.ndarray, wavelength: float) -> np.ndarray:
    """Ours (x, z, amplitude in mm) -> PALA's (x, y, z) in wavelengths, y = 0."""
    list_pos = np.asarray(list_pos, float)
    out = np.full(list_pos.shape, np.nan)
    out[:, 0] = list_pos[:, 0] / wavelength
    out[:, 1] = np.where(np.isfinite(list_pos[:, 0]), 0.0, np.nan)
    out[:, 2] = list_pos[:, 1] / wavelength
    return out


def read_pala_listpos(path: str | os.PathLike, wavelength: float | None = None) -> np.ndarray:
    """Read ``ListPos`` (PALA layout: x, y, z in wavelengths) from a ``.mat`` (``Media.ListPos`` or
    ``ListPos``, v5/v7 or v7.3) or ``.npz``; returns our layout (x, z, amplitude in mm).

    ``wavelength`` (mm) converts the units; by default it is read from the file (``wavelength`` key,
    or ``Trans.frequency`` (MHz) with ``Resource.Parameters.speedOfSound`` (m/s) / ``P.c``).
    """
    from freehand3d.ulm.readers import read_mat_struct

    path = Path(path)
    if path.suffix.lower() == ".mat":
        data = read_mat_struct(path)
        media = data.get("Media") or {}
        pala = media.get("ListPos") if isinstance(media, dict) else None
        if pala is None:
            pala = data.get("ListPos")
        if pala is None:
            raise InputError("no 'Media.ListPos' or 'ListPos' in the .mat file", path)
        if wavelength is None:
            from freehand3d.ulm.readers import wavelength_from_mat

            wavelength = wavelength_from_mat(data, path)
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "ListPos" not in data.files:
                    raise InputError("no 'ListPos' array", path)
                pala = data["ListPos"]
                if wavelength is None and "wavelength" in data.files:
                    wavelength = float(data["wavelength"])
        except FileNotFoundError as exc:
            raise InputError("no such file", path) from exc
        except _NPZ_ERRORS as exc:
            raise InputError(f"cannot read ListPos ({exc})", path) from exc
    if wavelength is None:
        raise InputError("no wavelength to convert PALA ListPos (in wavelengths) to mm", path)
    try:
        return pala_to_listpos(pala, wavelength)
    except ValueError as exc:
        raise InputError(str(exc), path) from exc


def write_pala_listpos(path: str | os.PathLike, list_pos: np.ndarray, wavelength: float) -> None:
    """Write our ListPos (mm) as PALA's (x, y, z in wavelengths) to ``.mat`` (v5, ``ListPos`` and
    ``wavelength_mm``) or ``.npz``, atomically."""
    pala = listpos_to_pala(list_pos, wavelength)
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".mat":
            from scipy.io import savemat

            savemat(tmp, {"ListPos": pala, "wavelength_mm": float(wavelength)})
        else:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, ListPos=pala, wavelength=np.asarray(wavelength), units=np.asarray("wavelength"), columns=np.asarray("x,y,z"))


# --------------------------------------------------------------------------------------------
# commands


def localize_file(
    rf_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    method: str = "gulm",
    channels: int = 128,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """Localize every frame of an RF file (``rf.npz`` or a supported ``.mat``) and write the
    points CSV; returns the (N, 3) points. ``options`` go to :func:`~freehand3d.ulm.pipeline.localize`
    or :func:`~freehand3d.ulm.baseline.localize_das_wa`; when the file holds no pulse the pulse is
    estimated from the data (with a :class:`ULMWarning`)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: use one of {', '.join(METHODS)}", "--method")
    rf, probe, acq = load_rf(rf_path)
    if not 2 <= channels <= probe.n_elements:
        raise ConfigError(f"must be between 2 and {probe.n_elements} (the file's channels), got {channels}", "--channels")
    kwargs = dict(tx_angle=float(acq["tx_angle"]), t0=float(acq["t0"]), channels=channels, progress=progress, **options)
    if method == "gulm":
        from freehand3d.ulm.pipeline import localize

        if "pulse_t" in acq and "pulse" in acq and kwargs.get("pulse") is None:
            kwargs["pulse"] = (np.asarray(acq["pulse_t"], float), np.asarray(acq["pulse"], float))
        try:
            points = localize(rf, probe, **kwargs)
        except ValueError as exc:
            raise InputError(str(exc), rf_path) from exc
    else:
        from freehand3d.ulm.baseline import localize_das_wa

        kwargs.pop("pulse", None)
        points = localize_das_wa(rf, probe, **kwargs)
    write_points_csv(out_csv, points, probe.wavelength)
    return points


def evaluate_files(points_csv: str | os.PathLike, gt_path: str | os.PathLike, *, json_path: str | os.PathLike | None = None, convention: str = "both") -> dict:
    """Score a points CSV against ground truth: ``gt.npz`` (ours, mm) or a PALA ListPos file
    (``.mat`` with ``Media.ListPos``, or ``.npz`` with ``units='wavelength'``).

    ``convention``: ``"ours"`` (one-to-one assignment), ``"pala"`` (greedy nearest within lambda/4)
    or ``"both"``; see :func:`freehand3d.ulm.metrics.evaluate`.
    """
    from freehand3d.ulm.metrics import evaluate

    points, wavelength_csv = read_points_csv(points_csv)
    gt_path = Path(gt_path)
    wavelength = None
    if gt_path.suffix.lower() == ".mat":
        list_pos = read_pala_listpos(gt_path, wavelength_csv)
        wavelength = wavelength_csv
    else:
        try:
            with np.load(gt_path, allow_pickle=False) as data:
                units = str(data["units"]) if "units" in data.files else "mm"
                if "wavelength" in data.files:
                    wavelength = float(data["wavelength"])
        except FileNotFoundError as exc:
            raise InputError("no such file", gt_path) from exc
        except _NPZ_ERRORS as exc:
            raise InputError(f"cannot read ground truth ({exc})", gt_path) from exc
        list_pos = read_pala_listpos(gt_path) if units == "wavelength" else load_ground_truth(gt_path)
    wavelength = wavelength if wavelength is not None else wavelength_csv
    if wavelength is None:
        raise InputError("no wavelength in the ground truth or the points file", gt_path)
    if not (math.isfinite(wavelength) and 0.005 <= wavelength <= 5.0):
        raise InputError(f"wavelength {wavelength:g} is not in mm (0.005..5)", gt_path)
    if wavelength_csv is not None and abs(wavelength_csv - wavelength) > 1e-3 * wavelength:
        raise InputError(f"points were localized with wavelength {wavelength_csv:g} mm but the ground truth says {wavelength:g} mm", points_csv)
    if len(points) and (points[:, 0].max() >= list_pos.shape[2] or points[:, 0].min() < 0):
        raise InputError(f"points refer to frame {int(points[:, 0].max())} but the ground truth has {list_pos.shape[2]} frames", points_csv)
    result = evaluate(points, list_pos, wavelength, convention=convention)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def render_file(points_csv: str | os.PathLike, out_png: str | os.PathLike, *, pixel: float | None = None, gamma: float = 0.5,
                title: str | None = None) -> np.ndarray:
    """Render a points CSV to a density PNG; ``pixel`` (mm) defaults to wavelength / 10; ``title`` heads the picture.

    The image size is checked before anything is allocated (at most :data:`MAX_RENDER_PIXELS`).
    """
    from freehand3d.ulm.render import save_density_png

    if pixel is not None and not (math.isfinite(pixel) and pixel > 0):
        raise ConfigError(f"must be a positive number of mm, got {pixel:g}", "--pixel-mm")
    if not math.isfinite(gamma) or gamma <= 0:
        raise ConfigError(f"must be positive, got {gamma:g}", "--gamma")
    points, wavelength = read_points_csv(points_csv)
    if pixel is None:
        if wavelength is None:
            raise InputError("no '# wavelength_mm=' line: give the pixel size explicitly (--pixel-mm)", points_csv)
        pixel = wavelength / 10
    if len(points):
        span = points[:, 1:].max(axis=0) - points[:, 1:].min(axis=0) + 2 * pixel
        n_pixels = float(np.prod(np.ceil(span / pixel)))
        if n_pixels > MAX_RENDER_PIXELS:
            raise ResourceError(f"a {pixel:g} mm pixel over {span[0]:.3g} x {span[1]:.3g} mm needs {n_pixels:.3g} pixels (limit {MAX_RENDER_PIXELS:.0e}): use a larger pixel", "--pixel-mm")
    return save_density_png(out_png, points[:, 1:], pixel, gamma=gamma, title=title)
