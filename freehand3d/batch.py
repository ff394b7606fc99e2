"""Run one operation over many sweeps on Dask distributed: reconstruct, track or evaluate.

A CSV lists the sweeps (``sweep_id, path`` and optionally ``split``, ``gt``); :func:`run_batch`
submits one task per sweep to a Dask cluster (a :class:`distributed.LocalCluster` of ``n_workers``
processes with one thread each, or any running scheduler given by its address). Each task reads its
sweep on the worker, calls the one library function of the operation and writes one output file,
atomically, named from the sweep id:

=============  ===============================================  ===========================
operation      library call                                     output
=============  ===============================================  ===========================
reconstruct    :func:`freehand3d.compound.reconstruct`          ``<sweep_id>.nrrd`` (volume)
track          :func:`freehand3d.tracking.track`                ``<sweep_id>.igs.mha`` (sweep)
evaluate       :func:`freehand3d.tracking.workflows.evaluate_sweeps`  ``<sweep_id>.json`` (metrics)
=============  ===============================================  ===========================

Because every write is atomic, an output that exists is complete: a second run skips it (the batch
is resumable). A sweep that fails is reported with a one-line error and the others go on; nothing
is written for it, so the next run tries it again. The report (``batch-<operation>.json`` and
``.csv``) lands in the output folder.

Example
-------
>>> report = run_batch("reconstruct", "sweeps.csv", "volumes", spacing=0.5)  # doctest: +SKIP
>>> report.n_failed, [r.sweep_id for r in report.failed]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import os
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from freehand3d.errors import ConfigError, Freehand3DError, InputError

__all__ = [
    "OPERATIONS",
    "DEFAULT_SUFFIX",
    "SweepEntry",
    "SweepResult",
    "BatchReport",
    "read_sweep_csv",
    "output_path",
    "run_one",
    "run_batch",
]

OPERATIONS = ("reconstruct", "track", "evaluate")
#: output file suffix of each operation
DEFAULT_SUFFIX = {"reconstruct": ".nrrd", "track": ".igs.mha", "evaluate": ".json"}
#: options each operation accepts (anything else is a ConfigError)
OPERATION_OPTIONS = {
    "reconstruct": {"spacing", "config", "method", "compounding", "exact_plus", "fill_holes", "device", "max_memory",
                    "image_to_reference"},
    "track": {"checkpoint", "preset", "device"},
    "evaluate": {"predictions", "world"},
}
#: a sweep id becomes a file name: keep it to a safe character set
_SWEEP_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SweepEntry:
    """One CSV row: ``sweep_id``, absolute ``path``, optional ``split`` and ground truth ``gt``."""

    sweep_id: str
    path: str
    split: str | None = None
    gt: str | None = None


@dataclass
class SweepResult:
    """What happened to one sweep: ``status`` is ``done``, ``skipped`` (output existed) or ``failed``."""

    sweep_id: str
    status: str
    output: str  # file name in the output folder
    seconds: float = 0.0
    error: str | None = None
    metrics: dict | None = None


@dataclass
class BatchReport:
    """Per-sweep results of :func:`run_batch`, in CSV order, with the run's settings and wall time."""

    operation: str
    csv_path: str
    out_dir: str
    scheduler: str
    n_workers: int | None
    seconds: float
    results: list[SweepResult] = field(default_factory=list)
    #: what the outputs depend on: the operation's options, suffix and split (see :func:`run_batch`)
    settings: dict = field(default_factory=dict)
    #: leftover temp files of an earlier, killed run that were removed
    removed_leftovers: list[str] = field(default_factory=list)

    def _with(self, status: str) -> list[SweepResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[SweepResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[SweepResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[SweepResult]:
        return self._with("failed")

    @property
    def n_done(self) -> int:
        return len(self.done)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def metrics_summary(self) -> dict:
        """Evaluate only: mean, median, min and max of each metric over the sweeps that have metrics."""
        import numpy as np

        rows = [r.metrics for r in self.results if r.metrics]
        keys = [k for k in (rows[0] if rows else {}) if k != "n_frames"]
        summary = {}
        for key in keys:
            values = np.array([float(m[key]) for m in rows if key in m and m[key] is not None], float)
            values = values[np.isfinite(values)]
            if len(values):
                summary[key] = {
                    "mean": float(values.mean()),
                    "median": float(np.median(values)),
                    "min": float(values.min()),
                    "max": float(values.max()),
                    "n": int(len(values)),
                }
        return summary

    def to_dict(self) -> dict:
        out = {
            "operation": self.operation,
            "csv": self.csv_path,
            "out_dir": self.out_dir,
            "scheduler": self.scheduler,
            "n_workers": self.n_workers,
            "seconds": self.seconds,
            "settings": self.settings,
            "removed_leftovers": self.removed_leftovers,
            "counts": {"done": self.n_done, "skipped": self.n_skipped, "failed": self.n_failed},
            "sweeps": [asdict(r) for r in self.results],
        }
        if self.operation == "evaluate":
            out["metrics_summary"] = self.metrics_summary()
        return out

    def report_paths(self) -> tuple[Path, Path]:
        """(JSON, CSV) report files in the output folder."""
        return report_paths(self.out_dir, self.operation)

    def write(self) -> tuple[Path, Path]:
        """Write the JSON report and a CSV (one row per sweep; evaluate adds one column per metric)."""
        from freehand3d._atomic import atomic_path, write_text_atomic

        json_path, csv_path = self.report_paths()
        write_text_atomic(json_path, json.dumps(_finite(self.to_dict()), indent=1) + "\n")
        metric_keys: list[str] = []
        for r in self.results:
            for k in r.metrics or {}:
                if k not in metric_keys:
                    metric_keys.append(k)
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sweep_id", "status", "output", "seconds", "error", *metric_keys])
            for r in self.results:
                metrics = r.metrics or {}
                writer.writerow([r.sweep_id, r.status, r.output, f"{r.seconds:.3f}", r.error or "",
                                 *(metrics.get(k, "") for k in metric_keys)])
        return json_path, csv_path


def report_paths(out_dir, operation: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"batch-{operation}.json", out_dir / f"batch-{operation}.csv"


def _finite(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------- CSV


def read_sweep_csv(csv_path, split: str | None = None) -> list[SweepEntry]:
    """Read the sweep list: columns ``sweep_id``, ``path`` (required), ``split``, ``gt`` (optional).

    Relative paths resolve against the CSV's folder. Rows are kept in file order; with ``split``
    only the rows of that split are returned.

    Raises
    ------
    InputError
        The file is missing or unreadable, lacks a required column, or has an empty, unsafe
        (not ``[A-Za-z0-9_][A-Za-z0-9._-]*``) or repeated sweep id or an empty path.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError("file not found", csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]  # extra cells (key None) ignored
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the sweep list ({exc})", csv_path) from None
    missing = [c for c in ("sweep_id", "path") if c not in columns]
    if missing:
        raise InputError(f"the sweep list needs the columns sweep_id and path (missing: {', '.join(missing)})", csv_path)
    base = csv_path.resolve().parent
    entries, seen = [], set()
    for line, row in enumerate(rows, start=2):
        sweep_id, path = row.get("sweep_id", ""), row.get("path", "")
        if not sweep_id and not path:
            continue  # blank line
        if not _SWEEP_ID.match(sweep_id):
            raise InputError(f"line {line}: sweep_id {sweep_id!r} is empty or not a safe file name", csv_path)
        if sweep_id in seen:
            raise InputError(f"line {line}: sweep_id {sweep_id!r} appears twice", csv_path)
        if not path:
            raise InputError(f"line {line}: sweep {sweep_id!r} has no path", csv_path)
        seen.add(sweep_id)
        gt = row.get("gt") or None
        entries.append(
            SweepEntry(
                sweep_id=sweep_id,
                path=os.fspath(base / Path(path).expanduser()),
                split=row.get("split") or None,
                gt=None if gt is None else os.fspath(base / Path(gt).expanduser()),
            )
        )
    if not entries:
        raise InputError("the sweep list has no rows", csv_path)
    if split is not None:
        splits = sorted({e.split for e in entries if e.split})
        entries = [e for e in entries if e.split == split]
        if not entries:
            raise InputError(f"no row has split {split!r} (the list has: {', '.join(splits) or 'no split column'})", csv_path)
    return entries


def output_path(out_dir, operation: str, sweep_id: str, suffix: str | None = None) -> Path:
    """Where the output of ``sweep_id`` goes: ``out_dir / (sweep_id + suffix)``."""
    return Path(out_dir) / f"{sweep_id}{suffix or DEFAULT_SUFFIX[operation]}"


# ----------------------------------------------------------------------------------- the tasks

#: loaded DualTrack models of this process (a Dask worker keeps its own), by checkpoint identity
_MODELS: dict = {}


def _cached_model(checkpoint: str, preset: str | None, device: str | None):
    from freehand3d.tracking import load_dualtrack

    path = Path(checkpoint)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError("checkpoint not found", path) from None
    key = (os.fspath(path.resolve()), stat.st_mtime_ns, stat.st_size, preset, device)
    if key not in _MODELS:
        _MODELS.clear()  # one model per process is enough; drop stale ones
        _MODELS[key] = load_dualtrack(path, preset=preset, device=device)
    return _MODELS[key]


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` torch threads (restored afterwards): float reductions then do not depend on
    how many cores the process happens to have, so outputs are the same bytes everywhere."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reconstruct(entry: SweepEntry, out: Path, options: dict) -> None:
    from freehand3d.compound import reconstruct
    from freehand3d.io import read_sweep
    from freehand3d.io.volumes import write_volume

    kwargs = dict(options)
    fill = kwargs.pop("fill_holes", None)
    if isinstance(fill, str):
        from freehand3d.compound.holes import parse_fill_spec

        fill = [] if fill.strip().lower() in ("none", "off", "") else parse_fill_spec(fill)
    image = reconstruct(read_sweep(entry.path), fill_holes=fill, **kwargs)
    write_volume(image, out)


def _track(entry: SweepEntry, out: Path, options: dict) -> None:
    from freehand3d.io import read_sweep, write_sweep
    from freehand3d.tracking import track

    checkpoint = options.get("checkpoint")
    if not checkpoint:
        raise ConfigError("track needs a checkpoint", "--checkpoint")
    device = options.get("device")
    model = _cached_model(checkpoint, options.get("preset"), device)
    write_sweep(track(read_sweep(entry.path), model, device=device), out)


def prediction_path(entry: SweepEntry, options: dict) -> tuple[str, str]:
    """(prediction, ground truth) files of an evaluate row: with ``predictions`` (a folder of
    ``batch track`` outputs) the prediction is ``<predictions>/<sweep_id>.igs.mha`` and the ground
    truth the row's ``gt`` or else its ``path``; without, the row's ``path`` is the prediction and
    ``gt`` is required."""
    predictions = options.get("predictions")
    if predictions:
        pred = output_path(predictions, "track", entry.sweep_id, options.get("prediction_suffix"))
        return os.fspath(pred), entry.gt or entry.path
    if entry.gt is None:
        raise ConfigError("no ground truth for this sweep: fill its gt column or pass --predictions", entry.path)
    return entry.path, entry.gt


def _evaluate(entry: SweepEntry, out: Path, options: dict) -> dict:
    from freehand3d._atomic import write_text_atomic
    from freehand3d.tracking.workflows import evaluate_sweeps

    pred, gt = prediction_path(entry, options)
    metrics = evaluate_sweeps(pred, gt, world=options.get("world"))
    record = {"sweep_id": entry.sweep_id, "metrics": _finite(metrics)}
    write_text_atomic(out, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return metrics


_TASKS = {"reconstruct": _reconstruct, "track": _track, "evaluate": _evaluate}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, Freehand3DError):
        return str(exc)
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{at}"


def run_one(operation: str, entry: SweepEntry, out_path, options: dict | None = None, threads: int | None = 1) -> SweepResult:
    """Process one sweep (what each Dask task runs): skip it when ``out_path`` exists, else run the
    operation and write ``out_path``. Never raises for a problem of the sweep: the error becomes a
    ``failed`` result with a one-line message."""
    out = Path(out_path)
    options = dict(options or {})
    if out.exists():
        metrics = _read_metrics(out) if operation == "evaluate" else None
        return SweepResult(entry.sweep_id, "skipped", out.name, metrics=metrics)
    start = time.perf_counter()
    try:
        with _torch_threads(threads):
            value = _TASKS[operation](entry, out, options)
    except Exception as exc:  # the batch goes on; the report carries the message
        return SweepResult(entry.sweep_id, "failed", out.name, time.perf_counter() - start, _one_line(exc))
    metrics = value if operation == "evaluate" else None
    return SweepResult(entry.sweep_id, "done", out.name, time.perf_counter() - start, metrics=metrics)


def _read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("metrics")
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------- driver


def _check_options(operation: str, options: dict) -> dict:
    if operation not in OPERATIONS:
        raise ConfigError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}", "operation")
    unknown = sorted(set(options) - OPERATION_OPTIONS[operation] - {"prediction_suffix"})
    if unknown:
        raise ConfigError(f"{operation} does not take the option(s) {', '.join(unknown)}", "options")
    options = {k: v for k, v in options.items() if v is not None}
    # workers may run in another folder: hand them absolute paths
    for key in ("config", "checkpoint", "predictions"):
        if key in options and isinstance(options[key], (str, os.PathLike)):
            options[key] = os.fspath(Path(options[key]).expanduser().resolve())
    for key, allowed in (("method", ("nearest", "linear")), ("compounding", ("latest", "max", "mean", "importance"))):
        if key in options and options[key] not in allowed:
            raise ConfigError(f"unknown {key} {options[key]!r}; choose one of {', '.join(allowed)}", f"--{key}")
    if "image_to_reference" in options:
        from freehand3d.geometry import split_transform_name

        try:
            split_transform_name(options["image_to_reference"])
        except ValueError as exc:
            raise ConfigError(str(exc), "--image-to-reference") from None
    if operation == "track":
        if "checkpoint" not in options:
            raise ConfigError("track needs a DualTrack checkpoint", "--checkpoint")
        if not Path(options["checkpoint"]).is_file():
            raise InputError("checkpoint not found", options["checkpoint"])
    if operation == "evaluate" and "predictions" in options and not Path(options["predictions"]).is_dir():
        raise InputError("the predictions folder does not exist" if not Path(options["predictions"]).exists()
                         else "--predictions names a file; give the folder of 'batch track' outputs", options["predictions"])
    if operation == "reconstruct" and "config" in options and not Path(options["config"]).is_file():
        raise InputError("file not found", options["config"])
    return options


def start_local_cluster(n_workers: int, attempts: int = 3):
    """A LocalCluster of ``n_workers`` single-thread worker processes.

    distributed gives its event-loop thread a fixed 10 s to start; on a loaded machine (or the first
    run after an install) that can be missed, which surfaces as a bare AssertionError. Retry then.
    """
    import logging

    from distributed import LocalCluster

    for attempt in range(attempts):
        try:
            return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                dashboard_address=None, silence_logs=logging.ERROR)
        except (AssertionError, TimeoutError):
            if attempt == attempts - 1:
                raise
            gc.collect()  # finalise the half-started cluster now, not inside the next start (see _client)


@contextlib.contextmanager
def _client(scheduler, n_workers: int):
    """A distributed.Client: a fresh LocalCluster for "local", else a connection to the address
    (or the Client passed in, left open)."""
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        import dask

        # Dask's nannies set MALLOC_TRIM_THRESHOLD_ in their workers; with it glibc serves every large
        # numpy temporary by a fresh mmap (page faults on each use), which made reconstruction about
        # 2x slower per sweep in the workers than in one process. Our own workers go without it.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = start_local_cluster(n_workers)
            with cluster, Client(cluster) as client:
                yield client
        return
    failure = None
    address = str(scheduler)
    if address.startswith("tcp://") and address.count(":") == 2:
        import socket

        host, _, port = address[len("tcp://"):].rpartition(":")
        try:  # nobody listening: say so at once (the Client below waits its whole 20 s timeout)
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler ({exc})", address) from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        failure = f"cannot connect to the Dask scheduler ({exc})"
    if failure is not None:
        # The Client that failed to connect sits in a reference cycle; whenever the cyclic GC reaches
        # it, its __del__ closes it, which takes distributed's loop-runner lock. Collected later, inside
        # a LocalCluster start that holds that lock, it deadlocked the process (seen in CI). Collect it
        # now, while no lock is held.
        gc.collect()
        raise ConfigError(failure, str(scheduler))
    with client:
        yield client


def run_batch(
    operation: str,
    csv_path,
    out_dir,
    scheduler="local",
    n_workers: int = 2,
    *,
    split: str | None = None,
    suffix: str | None = None,
    threads: int | None = 1,
    progress: Callable[[SweepResult, int, int], None] | None = None,
    write_report: bool = True,
    overwrite: bool = False,
    **options,
) -> BatchReport:
    """Run ``operation`` on every sweep of ``csv_path``, one Dask task per sweep.

    Parameters
    ----------
    operation : "reconstruct", "track" or "evaluate".
    csv_path : sweep list (see :func:`read_sweep_csv`).
    out_dir : output folder (created); outputs are ``<sweep_id><suffix>``.
    scheduler : "local" (a LocalCluster of ``n_workers`` processes, 1 thread each), a scheduler
        address ("tcp://host:8786"), a :class:`distributed.Client`, or "none" to run the sweeps one
        after the other in this process (no Dask).
    n_workers : workers of the LocalCluster (ignored otherwise).
    split : only the rows of this split.
    suffix : output suffix (default :data:`DEFAULT_SUFFIX`: .nrrd, .igs.mha, .json); e.g. ".mha"
        or ".h5".
    threads : torch threads per task (1 by default: the same bytes however many cores a worker has;
        None leaves torch's setting alone).
    progress : callable(result, n_finished, n_total) after each sweep.
    write_report : write ``batch-<operation>.json`` / ``.csv`` into ``out_dir``; the JSON holds the
        settings (options, suffix) the outputs were made with.
    overwrite : recompute every sweep even when its output exists. Without it, a rerun into a folder
        whose report records other settings is refused (the finished outputs would silently be of
        the old settings); with it they are recomputed with the new ones.
    **options : the operation's options --
        reconstruct: spacing, config (PLUS device set), method, compounding, exact_plus, fill_holes,
        device, max_memory (see :func:`freehand3d.compound.reconstruct`);
        track: checkpoint (required), preset, device (see :func:`freehand3d.tracking.track`);
        evaluate: predictions (folder of ``batch track`` outputs), world (see
        :func:`freehand3d.tracking.workflows.evaluate_sweeps`).

    Returns
    -------
    BatchReport, results in CSV order. Failed sweeps do not raise.

    Raises
    ------
    InputError, ConfigError
        Problems of the whole batch: the CSV, the options, the scheduler address.
    """
    from freehand3d._atomic import check_output_dir

    options = _check_options(operation, options)
    entries = read_sweep_csv(csv_path, split=split)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "batch output folder")
    if suffix is not None and not suffix.startswith("."):
        suffix = "." + suffix
    if suffix is not None and operation == "evaluate" and suffix != ".json":
        raise ConfigError("evaluate writes .json files", "--suffix")
    if suffix is not None and operation != "evaluate":
        from freehand3d.io import SEQUENCE_SUFFIXES
        from freehand3d.io.volumes import VOLUME_SUFFIXES

        allowed = VOLUME_SUFFIXES if operation == "reconstruct" else SEQUENCE_SUFFIXES + (".h5",)
        if not suffix.lower().endswith(tuple(allowed)):
            raise ConfigError(f"{operation} cannot write {suffix!r} files; use one of {', '.join(allowed)}", "--suffix")
    outputs = {e.sweep_id: output_path(out_dir, operation, e.sweep_id, suffix) for e in entries}
    reserved = set(report_paths(out_dir, operation))
    for sweep_id, out in outputs.items():
        if out in reserved:
            raise InputError(f"sweep_id {sweep_id!r} would overwrite the batch report", csv_path)
    settings = batch_settings(operation, options, suffix)
    _check_same_settings(out_dir, operation, settings, [outputs[e.sweep_id] for e in entries], overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_leftovers(out_dir, outputs.values())
    if overwrite:
        for out in outputs.values():
            with contextlib.suppress(FileNotFoundError):
                out.unlink()

    start = time.perf_counter()
    results: dict[str, SweepResult] = {}
    total = len(entries)

    def finished(result: SweepResult) -> None:
        results[result.sweep_id] = result
        if progress is not None:
            progress(result, len(results), total)

    # finished outputs are skipped here, without a round trip to the cluster
    todo = []
    for e in entries:
        if outputs[e.sweep_id].exists():
            finished(run_one(operation, e, outputs[e.sweep_id], options, threads))
        else:
            todo.append(e)

    scheduler_name = scheduler if isinstance(scheduler, str) else getattr(scheduler, "scheduler", None)
    scheduler_name = str(getattr(scheduler_name, "address", scheduler_name))
    workers = None
    if scheduler == "none" or not todo:
        for e in todo:
            finished(run_one(operation, e, outputs[e.sweep_id], options, threads))
    else:
        with _client(scheduler, n_workers) as client:
            workers = len(client.nthreads())
            _run_on(client, operation, todo, outputs, options, threads, finished)
    report = BatchReport(
        operation=operation,
        csv_path=os.fspath(Path(csv_path).resolve()),
        out_dir=os.fspath(out_dir.resolve()),
        scheduler=scheduler_name,
        n_workers=workers,
        seconds=time.perf_counter() - start,
        results=[results[e.sweep_id] for e in entries],
        settings=settings,
        removed_leftovers=removed,
    )
    if write_report:
        report.write()
    return report


#: options that do not change the outputs (the same volume on any device, within any memory limit)
_SAME_OUTPUT = {"device", "max_memory"}


def batch_settings(operation: str, options: dict, suffix: str | None) -> dict:
    """The settings the outputs of a batch depend on (recorded in the report, compared on a rerun)."""
    return {"operation": operation, "suffix": suffix or DEFAULT_SUFFIX[operation],
            "options": {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in sorted(options.items())}}


def _check_same_settings(out_dir: Path, operation: str, settings: dict, outputs: list[Path], overwrite: bool) -> None:
    """Refuse a rerun whose settings differ from those the existing outputs were made with."""
    if overwrite or not any(p.exists() for p in outputs):
        return
    json_path = report_paths(out_dir, operation)[0]
    try:
        previous = json.loads(json_path.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous is None:
        return  # no report (or one from before settings were recorded): outputs are taken as they are
    current = json.loads(json.dumps(_finite(settings)))
    old, new = previous.get("options", {}) or {}, current.get("options", {})
    changed = sorted(k for k in set(old) | set(new) if k not in _SAME_OUTPUT and old.get(k) != new.get(k))
    if not changed and previous.get("suffix") == current.get("suffix"):
        return
    if previous.get("suffix") != current.get("suffix"):
        changed.append("suffix")
    detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed if k != "suffix") or "suffix"
    raise ConfigError(
        f"the outputs there were made with other settings ({detail}); use --overwrite to recompute them "
        "or another --out folder", out_dir)


def remove_leftovers(out_dir: Path, outputs: Iterable[Path]) -> list[str]:
    """Delete the hidden temp files (``.tmp-XXXXXXXX-<output name>``) a killed worker left while
    writing one of ``outputs``; returns their names."""
    names = {Path(p).name for p in outputs}
    removed = []
    for tmp in sorted(out_dir.glob(".tmp-*")):
        parts = tmp.name.split("-", 2)
        if len(parts) == 3 and len(parts[1]) == 8 and parts[2] in names and tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def _run_on(client, operation, todo: Iterable[SweepEntry], outputs, options, threads, finished) -> None:
    from distributed import as_completed

    futures = {}
    for e in todo:
        future = client.submit(
            run_one, operation, e, os.fspath(outputs[e.sweep_id]), options, threads,
            key=f"freehand3d-{operation}-{e.sweep_id}-{os.urandom(4).hex()}", pure=False, retries=0,
        )
        futures[future] = e
    for future in as_completed(list(futures)):
        entry = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # the worker died (e.g. out of memory) or the task could not run
            result = SweepResult(entry.sweep_id, "failed", outputs[entry.sweep_id].name, error=_one_line(exc))
        finished(result)
        future.release()
