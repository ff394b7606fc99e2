"""PLUS sequence I/O: freehand3d's own parser vs SimpleITK, side by side in one run.

Reads and writes the bundled 188-frame 820x616 fCal recording (zlib-compressed MetaImage, 1.5 MB on
disk, 95 MB of pixels) and the same data as uncompressed MetaImage and gzip NRRD. The SimpleITK
column does the same job: ReadImage + the pixel array + every per-frame transform, status and
timestamp parsed from the metadata dictionary (write: the same fields set as metadata).
Then it prints what SimpleITK keeps and loses of a PLUS header (the reason for our own parser).

    python benchmarks/bench_plus_sequence.py [--repeat 5]
    PYTHONPATH=<folder with zlib-ng> python benchmarks/bench_plus_sequence.py   # optional fast inflate
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import freehand3d
from freehand3d.io.plus_sequence import read_plus_header, read_plus_sequence, write_plus_sequence

RECORDING = Path(freehand3d.__file__).parent / "data" / "plus" / "fCal_Test_Calibration_3NWires.igs.mha"


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sitk_read_sweep(path: Path):
    """What a SimpleITK-based reader would do: pixels + per-frame fields into arrays."""
    image = sitk.ReadImage(str(path))
    frames = sitk.GetArrayFromImage(image)
    keys = image.GetMetaDataKeys()
    n = frames.shape[0] if image.GetNumberOfComponentsPerPixel() == 1 else frames.shape[-1]
    out = {}
    for key in keys:
        if key.startswith("Seq_Frame") and key.endswith("Transform"):
            out.setdefault(key[14:], np.empty((n, 16)))[int(key[9:13])] = np.array(image.GetMetaData(key).split(), float)
        elif key.endswith("TransformStatus"):
            out.setdefault(key[14:], np.empty(n, bool))[int(key[9:13])] = image.GetMetaData(key) == "OK"
        elif key.endswith("_Timestamp"):
            out.setdefault("Timestamp", np.empty(n))[int(key[9:13])] = float(image.GetMetaData(key))
    return frames, out


def _sitk_write(image: sitk.Image, path: Path, compress: bool) -> None:
    sitk.WriteImage(image, str(path), compress)


def timing_table(repeat: int) -> list[tuple[str, float, float]]:
    sweep = read_plus_sequence(RECORDING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_mha, gz_nrrd = tmp / "raw.igs.mha", tmp / "gz.igs.nrrd"
        write_plus_sequence(sweep, raw_mha, compress=False)
        write_plus_sequence(sweep, gz_nrrd, compress=True)
        for label, path in [("read .igs.mha zlib (PLUS file)", RECORDING), ("read .igs.mha uncompressed", raw_mha),
                            ("read .igs.nrrd gzip", gz_nrrd)]:
            ours = _timed(lambda: read_plus_sequence(path), repeat)
            theirs = _timed(lambda: _sitk_read_sweep(path), repeat)
            rows.append((label, ours, theirs))
        image = sitk.ReadImage(str(RECORDING))  # carries every per-frame field as metadata
        for label, name, compress in [("write .igs.mha zlib level 6", "w.igs.mha", True),
                                      ("write .igs.mha uncompressed", "u.igs.mha", False),
                                      ("write .igs.nrrd gzip level 6", "w.igs.nrrd", True)]:
            ours = _timed(lambda: write_plus_sequence(sweep, tmp / name, compress=compress), repeat)
            theirs = _timed(lambda: _sitk_write(image, tmp / ("s" + name), compress), repeat)
            rows.append((label, ours, theirs))
    return rows


def capability_table() -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plus_fields = read_plus_header(RECORDING)
        n_custom = sum(len(v) for v in plus_fields.frame_fields.values())
        image = sitk.ReadImage(str(RECORDING))
        kept = [k for k in image.GetMetaDataKeys() if k.startswith("Seq_Frame")]
        rows.append(("MetaImage read: per-frame Seq_Frame fields kept", f"{len(kept)} of {n_custom}"))
        rows.append(("MetaImage read: UltrasoundImageOrientation kept", str(image.HasMetaDataKey("UltrasoundImageOrientation"))))
        header_order = [k for k in plus_fields.fields] + [f"Seq_Frame{i:04d}_{f}" for i in range(2) for f in plus_fields.frame_fields]
        rows.append(("MetaImage read: header order kept", str(list(image.GetMetaDataKeys())[:5] == header_order[:5])
                     + f" (keys come back sorted: {', '.join(image.GetMetaDataKeys()[:3])}, ...)"))
        sitk.WriteImage(image, str(tmp / "s.mha"), True)
        written = read_plus_header(tmp / "s.mha")
        added = [k for k in written.fields if k not in plus_fields.fields]
        lost = [k for k in plus_fields.fields if k not in written.fields]
        rows.append(("MetaImage write: fields added", ", ".join(added) or "none"))
        rows.append(("MetaImage write: fields lost", ", ".join(lost) or "none"))
        rows.append(("MetaImage write: per-frame fields written back",
                     str(sum(len(v) for v in written.frame_fields.values()) == n_custom)))
        sitk.WriteImage(image, str(tmp / "s.nrrd"), True)
        nrrd = read_plus_header(tmp / "s.nrrd")
        rows.append(("NRRD write: kinds of a 2D+t sequence", f"{nrrd.get('kinds')!r} (PLUS writes 'domain domain list')"))
        write_plus_sequence(read_plus_sequence(RECORDING).subset(slice(0, 5)), tmp / "ours.nrrd")
        back = sitk.ReadImage(str(tmp / "ours.nrrd"))
        rows.append(("NRRD read of PLUS layout ('list' frame axis)",
                     f"size {back.GetSize()}, {back.GetNumberOfComponentsPerPixel()} components per pixel (frames become channels)"))
        blob = RECORDING.read_bytes()
        (tmp / "cut.mha").write_bytes(blob[: len(blob) // 2])
        try:
            sitk.ReadImage(str(tmp / "cut.mha"))
            rows.append(("truncated MetaImage", "read without error"))
        except RuntimeError as exc:
            last = [ln for ln in str(exc).splitlines() if ln.strip()][-1].strip()
            rows.append(("truncated MetaImage", f"RuntimeError: {last[:90]}"))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(RECORDING))
        start = time.perf_counter()
        reader.ReadImageInformation()
        rows.append(("header only (ReadImageInformation)", f"{1000 * (time.perf_counter() - start):.1f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from freehand3d.io import plus_sequence

    print(f"PLUS sequence I/O, {RECORDING.name} (188 frames 820x616), median of {args.repeat}; "
          f"freehand3d inflates with {plus_sequence._inflate_lib.__name__}, {sitk.Version.VersionString()} "
          f"with {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads")
    print(f"{'operation':34s} {'freehand3d s':>13s} {'SimpleITK s':>12s} {'ours/SimpleITK':>15s}")
    for label, ours, theirs in timing_table(args.repeat):
        print(f"{label:34s} {ours:13.3f} {theirs:12.3f} {ours / theirs:15.2f}")
    print()
    print("What SimpleITK does with a PLUS sequence header")
    for what, result in capability_table():
        print(f"  {what:50s} {result}")


if __name__ == "__main__":
    main()
