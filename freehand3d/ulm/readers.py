"""Readers for real plane-wave recordings: PALA RF ``.mat`` files and Verasonics ``RcvData`` layouts.

Both produce what :func:`freehand3d.ulm.files.load_rf` returns: ``(rf (n_frames, n_samples,
n_elements), LinearProbe, {"tx_angle", "t0", ...})``, with the same strict unit checks.

Layouts understood (MATLAB v5/v7 through scipy.io, v7.3 (HDF5) through h5py):

* **PALA in-silico / in-vivo RF**: an RF array (``RFdata``/``RF``/``RData``, samples x channels x
  frames or samples x channels), ``P`` (``P.numTx``, ``P.startDepth`` in wavelengths, ``P.angles``
  or ``P.txAngles`` in radians), ``Trans`` (``Trans.frequency`` MHz, ``Trans.spacingMm`` mm or
  ``Trans.ElementPos`` in wavelengths, ``Trans.lensCorrection`` in wavelengths), ``Receive``
  (``Receive.demodFrequency``/``samplesPerWave``, ``Receive.decimSampleRate`` MHz), optional
  ``Resource.Parameters.speedOfSound`` (m/s; default 1540 with a warning), optional ``Media.ListPos``
  (ground truth, x, y, z in wavelengths: :func:`freehand3d.ulm.files.read_pala_listpos`).
* **Verasonics**: ``RcvData`` (a cell whose first buffer is samples x channels x frames, int16),
  ``Receive`` (struct array: ``startSample``/``endSample`` of each acquisition, ``startDepth`` in
  wavelengths, ``decimSampleRate`` MHz or ``samplesPerWave``), ``Trans`` (as above) and ``TX``
  (``Steer`` (azimuth, elevation) radians) -- the first transmit's rows of each frame are read.

Timing: t0 = 2 startDepth / fc (start depth in wavelengths, two-way) minus the lens correction
(2 lensCorrection / fc); the time axis then follows :mod:`freehand3d.ulm.probe` (t = 0 when the
first element fires). Only the first transmit angle is localized (one plane wave per frame).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from freehand3d.errors import InputError
from freehand3d.ulm.probe import LinearProbe

__all__ = ["read_mat_struct", "read_mat_rf", "wavelength_from_mat"]

RF_NAMES = ("RFdata", "RF", "RData", "rf")


def _h5_to_python(obj, h5file):
    import h5py

    if isinstance(obj, h5py.Group):
        return {k: _h5_to_python(obj[k], h5file) for k in obj.keys() if not k.startswith("#")}
    data = obj[()]
    if obj.dtype == object or (isinstance(data, np.ndarray) and data.dtype == h5py.ref_dtype):
        refs = np.asarray(data).ravel()
        items = [_h5_to_python(h5file[r], h5file) for r in refs]
        return items[0] if len(items) == 1 else items
    data = np.asarray(data)
    if data.dtype.names and set(data.dtype.names) >= {"real", "imag"}:
        data = data["real"] + 1j * data["imag"]
    # MATLAB stores column-major: h5py sees the axes reversed
    data = data.T
    if obj.attrs.get("MATLAB_class", b"") in (b"char",):
        return "".join(chr(int(c)) for c in data.ravel())
    return data


def _mat_to_python(value):
    """scipy.io.loadmat (struct_as_record=False, squeeze_me=True) objects -> dicts / arrays."""
    from scipy.io.matlab import mat_struct

    if isinstance(value, mat_struct):
        return {k: _mat_to_python(getattr(value, k)) for k in value._fieldnames}
    if isinstance(value, np.ndarray) and value.dtype == object:
        items = [_mat_to_python(v) for v in value.ravel()]
        return items
    return value


def read_mat_struct(path: str | os.PathLike) -> dict:
    """All variables of a ``.mat`` file as nested dicts / lists / arrays (v5/v7 or v7.3)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from exc
    if head[:8] == b"\x89HDF\r\n\x1a\n" or b"MATLAB 7.3" in head[:116]:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return {k: _h5_to_python(f[k], f) for k in f.keys() if not k.startswith("#")}
        except OSError as exc:
            raise InputError(f"cannot read MATLAB v7.3 file ({exc})", path) from exc
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        raw = loadmat(path, struct_as_record=False, squeeze_me=True)
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise InputError(f"not a readable MATLAB file ({exc})", path) from exc
    return {k: _mat_to_python(v) for k, v in raw.items() if not k.startswith("__")}


def _first(struct, names, path, what):
    if isinstance(struct, list):
        struct = struct[0] if struct else {}
    for name in names:
        if isinstance(struct, dict) and name in struct:
            value = struct[name]
            if isinstance(value, list):
                value = value[0]
            return value
    raise InputError(f"missing {what} ({' or '.join(names)})", path)


def _scalar(value, path, what) -> float:
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size == 0 or not np.isfinite(arr[0]):
        raise InputError(f"{what} is empty or not a number", path)
    return float(arr[0])


def _speed_of_sound(data: dict, path) -> float:
    """m/s from Resource.Parameters.speedOfSound or P.c; 1540 with a warning when absent."""
    for outer, inner in (("Resource", ("Parameters", "speedOfSound")), ("P", ("c",)), ("P", ("speedOfSound",))):
        node = data.get(outer)
        for key in inner:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return _scalar(node, path, f"{outer}.{'.'.join(inner)}")
    from freehand3d.ulm.files import ULMWarning

    warnings.warn(f"{path}: no Resource.Parameters.speedOfSound: assuming 1540 m/s", ULMWarning, stacklevel=3)
    return 1540.0


def wavelength_from_mat(data: dict, path) -> float:
    """Wavelength (mm) = speed of sound / Trans.frequency (MHz)."""
    trans = data.get("Trans")
    fc_mhz = _scalar(_first(trans, ("frequency",), path, "Trans.frequency (MHz)"), path, "Trans.frequency")
    c = _speed_of_sound(data, path)
    return c / (fc_mhz * 1e6) * 1e3


def read_mat_rf(path: str | os.PathLike) -> tuple[np.ndarray, LinearProbe, dict]:
    """Read a PALA RF ``.mat`` or a Verasonics ``RcvData`` ``.mat`` (see the module docstring)."""
    from freehand3d.ulm.files import check_acquisition

    path = Path(path)
    data = read_mat_struct(path)
    trans = data.get("Trans")
    if trans is None:
        raise InputError("no 'Trans' structure (probe geometry)", path)
    fc_mhz = _scalar(_first(trans, ("frequency",), path, "Trans.frequency (MHz)"), path, "Trans.frequency")
    if fc_mhz > 1e3:
        raise InputError(f"Trans.frequency {fc_mhz:g} looks like Hz: Verasonics stores MHz", path)
    fc = fc_mhz * 1e6
    c_m_s = _speed_of_sound(data, path)
    if c_m_s > 1e5:
        raise InputError(f"speed of sound {c_m_s:g} looks like mm/s: the .mat stores m/s", path)
    wavelength = c_m_s / fc * 1e3  # mm
    receive = data.get("Receive")
    if receive is None:
        raise InputError("no 'Receive' structure (sampling)", path)
    rx = receive[0] if isinstance(receive, list) else receive
    if "decimSampleRate" in rx:
        fs = _scalar(rx["decimSampleRate"], path, "Receive.decimSampleRate") * 1e6
    elif "samplesPerWave" in rx:
        fs = _scalar(rx["samplesPerWave"], path, "Receive.samplesPerWave") * fc
    else:
        raise InputError("missing Receive.decimSampleRate (MHz) or Receive.samplesPerWave", path)
    if "spacingMm" in trans:
        pitch = _scalar(trans["spacingMm"], path, "Trans.spacingMm")
    elif "ElementPos" in trans:
        pos = np.asarray(trans["ElementPos"], float)
        pos = pos if pos.ndim == 2 else pos.reshape(-1, 1)
        pitch = float(np.median(np.diff(pos[:, 0]))) * wavelength
    elif "spacing" in trans:
        pitch = _scalar(trans["spacing"], path, "Trans.spacing") * wavelength  # wavelengths
    else:
        raise InputError("missing Trans.spacingMm (mm) or Trans.ElementPos (wavelengths)", path)
    lens = _scalar(trans["lensCorrection"], path, "Trans.lensCorrection") if "lensCorrection" in trans else 0.0
    p = data.get("P") or {}
    start_depth = _scalar(rx["startDepth"], path, "Receive.startDepth") if "startDepth" in rx else _scalar(p.get("startDepth", 0.0), path, "P.startDepth")
    # the RF array: PALA names or Verasonics RcvData{1}
    rf = None
    for name in RF_NAMES:
        if name in data:
            rf = data[name]
            break
    verasonics = False
    if rf is None and "RcvData" in data:
        rf = data["RcvData"]
        rf = rf[0] if isinstance(rf, list) else rf
        verasonics = True
    if rf is None:
        raise InputError(f"no RF array ({', '.join(RF_NAMES)} or RcvData)", path)
    rf = np.asarray(rf)
    if np.iscomplexobj(rf):
        raise InputError("the RF array is complex (IQ data): G-ULM needs real RF samples", path)
    if not np.issubdtype(rf.dtype, np.number):
        raise InputError(f"the RF array has dtype {rf.dtype}, expected numbers", path)
    if rf.ndim == 2:
        rf = rf[:, :, None]
    if rf.ndim != 3:
        raise InputError(f"the RF array must be samples x channels [x frames], got shape {rf.shape}", path)
    n_tx = 1
    if verasonics:
        # rows of the first acquisition of each frame: Receive(k).startSample:endSample
        rx_list = receive if isinstance(receive, list) else [receive]
        start = int(_scalar(rx_list[0].get("startSample", 1), path, "Receive.startSample")) - 1
        end = int(_scalar(rx_list[0].get("endSample", rf.shape[0]), path, "Receive.endSample"))
        if not 0 <= start < end <= rf.shape[0]:
            raise InputError(f"Receive(1).startSample/endSample {start + 1}..{end} outside the {rf.shape[0]} rows of RcvData", path)
        rf = rf[start:end]
        tx = data.get("TX")
        steer = _first(tx, ("Steer",), path, "TX.Steer") if tx is not None else 0.0
        angle = float(np.asarray(steer, float).ravel()[0]) if np.size(steer) else 0.0
    else:
        n_tx = int(_scalar(p.get("numTx", 1), path, "P.numTx")) if isinstance(p, dict) else 1
        angles = None
        for key in ("angles", "txAngles", "angle"):
            if isinstance(p, dict) and key in p:
                angles = np.asarray(p[key], float).ravel()
                break
        angle = float(angles[0]) if angles is not None and angles.size else 0.0
        if n_tx > 1:  # PALA stacks the transmits of a frame along the samples: keep the first
            if rf.shape[0] % n_tx:
                raise InputError(f"{rf.shape[0]} RF rows are not a multiple of P.numTx = {n_tx}", path)
            rf = rf[: rf.shape[0] // n_tx]
    rf = np.ascontiguousarray(np.transpose(rf, (2, 0, 1)), dtype=np.float32)  # frames, samples, channels
    t0 = 2 * (start_depth - lens) / fc
    probe = LinearProbe(n_elements=rf.shape[2], pitch=pitch, element_width=0.8 * pitch, center_frequency=fc, sampling_frequency=fs, speed_of_sound=c_m_s * 1e3)
    check_acquisition(probe, angle, t0, path)
    acq = {"tx_angle": angle, "t0": t0, "source": "verasonics" if verasonics else "pala", "n_transmits": n_tx}
    return rf, probe, acq
