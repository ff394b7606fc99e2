"""CLI: ``freehand3d batch reconstruct|track|evaluate --csv sweeps.csv --out DIR`` on Dask distributed.

Only typer and the standard library are imported here; :mod:`freehand3d.batch` (and Dask) inside
each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

#: per-sweep rows shown in the summary table; beyond that only the failed ones
MAX_TABLE_ROWS = 40

_CSV_HELP = "Sweep list: columns sweep_id, path (relative to the CSV's folder), optional split, gt."
_OUT_HELP = "Output folder: one file per sweep named from its sweep_id, plus batch-<operation>.json/.csv."
_SCHEDULER_HELP = "'local' (a LocalCluster on this machine), a running scheduler 'tcp://host:port', or 'none' (in this process, one by one)."


def _common(
    csv: Path, out: Path, scheduler: str, workers: int, split: Optional[str], suffix: Optional[str], threads: int
) -> dict:
    return {
        "csv_path": csv,
        "out_dir": out,
        "scheduler": scheduler,
        "n_workers": workers,
        "split": split,
        "suffix": suffix,
        "threads": threads if threads > 0 else None,
    }


def _run(operation: str, common: dict, options: dict, quiet: bool = False) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from freehand3d.batch import run_batch

    console = Console(stderr=False)
    if quiet:
        report = run_batch(operation, **common, **options)
        _print_report(console, report)
        if report.n_failed:
            raise typer.Exit(1)
        return
    with Progress(
        TextColumn(f"batch {operation}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def tick(result, done, total):
            bar.update(task, completed=done, total=total, description=f"{result.sweep_id}: {result.status}")

        report = run_batch(operation, progress=tick, **common, **options)
    _print_report(console, report)
    if report.n_failed:
        raise typer.Exit(1)


def _print_report(console, report) -> None:
    from rich.table import Table

    rows = report.results
    shown = rows if len(rows) <= MAX_TABLE_ROWS else report.failed
    colour = {"done": "green", "skipped": "cyan", "failed": "red"}
    if shown:
        table = Table(title=f"batch {report.operation}: {report.out_dir}")
        table.add_column("sweep_id")
        table.add_column("status")
        table.add_column("seconds", justify="right")
        table.add_column("output / error", overflow="fold")
        for r in shown:
            table.add_row(r.sweep_id, f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", r.error or r.output)
        console.print(table)
    if report.operation == "evaluate":
        summary = report.metrics_summary()
        if summary:
            table = Table(title=f"metrics over {max(v['n'] for v in summary.values())} sweeps")
            for name in ("metric", "mean", "median", "min", "max"):
                table.add_column(name, justify="left" if name == "metric" else "right")
            for key, stats in summary.items():
                table.add_row(key, *(f"{stats[s]:.3f}" for s in ("mean", "median", "min", "max")))
            console.print(table)
    json_path, csv_path = report.report_paths()
    if report.removed_leftovers:
        console.print(f"removed {len(report.removed_leftovers)} temp file(s) a killed earlier run left behind", soft_wrap=True)
    where = report.scheduler if report.n_workers is None else f"{report.scheduler}, {report.n_workers} workers"
    console.print(
        f"{len(rows)} sweeps: {report.n_done} done, {report.n_skipped} skipped (output existed), "
        f"{report.n_failed} failed in {report.seconds:.1f} s ({where}); report: {json_path}, {csv_path}",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    batch = typer.Typer(
        name="batch",
        help="Run reconstruct / track / evaluate over many sweeps on Dask (resumable, per-sweep failures).",
        no_args_is_help=True,
    )
    app.add_typer(batch, name="batch")

    @batch.command("reconstruct")
    def batch_reconstruct(
        csv: Path = typer.Option(..., "--csv", help=_CSV_HELP),
        out: Path = typer.Option(..., "--out", help=_OUT_HELP),
        scheduler: str = typer.Option("local", "--scheduler", help=_SCHEDULER_HELP),
        workers: int = typer.Option(2, "--workers", min=1, help="LocalCluster worker processes (1 thread each)."),
        split: Optional[str] = typer.Option(None, "--split", help="Only the rows of this split."),
        suffix: Optional[str] = typer.Option(None, "--suffix", help="Volume format: .nrrd (default), .mha, .nii.gz."),
        threads: int = typer.Option(1, "--threads", min=0, help="Torch threads per task (0: torch's default)."),
        spacing: Optional[float] = typer.Option(None, "--spacing", help="Voxel size in mm (default: the config's, else 0.5)."),
        config: Optional[Path] = typer.Option(None, "--config", help="PLUS device set with a <VolumeReconstruction> element."),
        method: Optional[str] = typer.Option(None, "--method", help="nearest | linear (default: the config's, else nearest)."),
        compounding: Optional[str] = typer.Option(None, "--compounding", help="latest | max | mean (default: the config's, else mean)."),
        fill_holes: Optional[str] = typer.Option(None, "--fill-holes", help="Hole-filling kernels as for 'freehand3d reconstruct'."),
        exact_plus: Optional[bool] = typer.Option(None, "--exact-plus/--fast", help="PLUS's arithmetic (default with --config) or the fast path."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
        max_memory: Optional[float] = typer.Option(None, "--max-memory", help="Memory limit in GiB (2**30 bytes) per sweep (default: half the available RAM)."),
        image_to_reference: Optional[str] = typer.Option(
            None, "--image-to-reference",
            help="Pose transform name (default ImageToReference; e.g. ImageToTracker for DualTrack / TUS-REC .h5 sweeps)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute sweeps whose output exists (e.g. after changing settings)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (the report is still printed)."),
    ) -> None:
        """Reconstruct every sweep of the CSV into <out>/<sweep_id>.nrrd."""
        options = {
            "spacing": spacing,
            "config": config,
            "method": method,
            "compounding": compounding,
            "fill_holes": fill_holes,
            "exact_plus": exact_plus,
            "device": device,
            "max_memory": None if max_memory is None else int(max_memory * 1024**3),
            "image_to_reference": image_to_reference,
        }
        common = _common(csv, out, scheduler, workers, split, suffix, threads)
        common["overwrite"] = overwrite
        if spacing is not None and not (spacing > 0 and spacing < float("inf")):
            from freehand3d.errors import ConfigError

            raise ConfigError(f"must be a positive number of mm, got {spacing}", "--spacing")
        _run("reconstruct", common, options, quiet)

    @batch.command("track")
    def batch_track(
        csv: Path = typer.Option(..., "--csv", help=_CSV_HELP),
        out: Path = typer.Option(..., "--out", help=_OUT_HELP),
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="DualTrack checkpoint (.pt, ours or official); loaded once per worker."),
        scheduler: str = typer.Option("local", "--scheduler", help=_SCHEDULER_HELP),
        workers: int = typer.Option(2, "--workers", min=1, help="LocalCluster worker processes (1 thread each)."),
        split: Optional[str] = typer.Option(None, "--split", help="Only the rows of this split."),
        suffix: Optional[str] = typer.Option(None, "--suffix", help="Sweep format: .igs.mha (default), .igs.nrrd, .h5."),
        threads: int = typer.Option(1, "--threads", min=0, help="Torch threads per task (0: torch's default)."),
        preset: Optional[str] = typer.Option(None, "--preset", help="dualtrack-2024 | dualtrack-tusrec2025 | tiny (default: from the checkpoint)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: cuda if available)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute sweeps whose output exists (e.g. after changing settings)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (the report is still printed)."),
    ) -> None:
        """Track every sweep of the CSV with DualTrack into <out>/<sweep_id>.igs.mha."""
        options = {"checkpoint": checkpoint, "preset": preset, "device": device}
        _run("track", {**_common(csv, out, scheduler, workers, split, suffix, threads), "overwrite": overwrite}, options, quiet)

    @batch.command("evaluate")
    def batch_evaluate(
        csv: Path = typer.Option(..., "--csv", help=_CSV_HELP),
        out: Path = typer.Option(..., "--out", help=_OUT_HELP),
        predictions: Optional[Path] = typer.Option(
            None, "--predictions", help="Folder of 'batch track' outputs: prediction = <folder>/<sweep_id>.igs.mha, "
            "ground truth = the gt column, else path. Without it, path is the prediction and gt the ground truth.",
        ),
        scheduler: str = typer.Option("local", "--scheduler", help=_SCHEDULER_HELP),
        workers: int = typer.Option(2, "--workers", min=1, help="LocalCluster worker processes (1 thread each)."),
        split: Optional[str] = typer.Option(None, "--split", help="Only the rows of this split."),
        world: Optional[str] = typer.Option(None, "--world", help="World frame name (default: Reference, then Tracker)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute sweeps whose output exists (e.g. after changing settings)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (the report is still printed)."),
    ) -> None:
        """Tracking errors of every sweep (one <out>/<sweep_id>.json each) and their mean/median table."""
        options = {"predictions": predictions, "world": world}
        _run("evaluate", {**_common(csv, out, scheduler, workers, split, None, 0), "overwrite": overwrite}, options, quiet)
