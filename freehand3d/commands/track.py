"""CLI: ``track`` (DualTrack inference), ``evaluate`` (tracking metrics), ``train`` (DualTrack training).

Only typer and the standard library are imported here; the library is imported inside each command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

STAGES = ("local", "global", "fusion", "finetune")

#: metric key -> (label, unit) in the order the table shows them
_METRIC_ROWS = (
    ("GPE", "global pixel error (all pixels)", "mm"),
    ("LPE", "local pixel error (all pixels)", "mm"),
    ("GLE", "global landmark error", "mm"),
    ("LLE", "local landmark error", "mm"),
    ("GPE_5pt", "global error, 5-point proxy", "mm"),
    ("LPE_5pt", "local error, 5-point proxy", "mm"),
    ("FDR_pct", "final drift rate", "%"),
    ("max_drift_mm", "maximum drift", "mm"),
    ("avg_drift_rate_pct", "average drift rate", "%"),
    ("final_drift_mm", "final drift", "mm"),
)


def _metrics_table(metrics: dict, title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("meaning")
    for key, label, unit in _METRIC_ROWS:
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.3f}", unit, label)
    return table


def _check_track_outputs(sweep: Path, output: Path, plot: Optional[Path]) -> None:
    """The tracked sweep and the plot can be written: checked before the model runs."""
    from freehand3d._atomic import check_output_path
    from freehand3d.errors import ConfigError
    from freehand3d.io import H5_SUFFIXES, SEQUENCE_SUFFIXES

    if not output.name.lower().endswith(SEQUENCE_SUFFIXES + H5_SUFFIXES):
        raise ConfigError(f"unknown sweep format; use one of {', '.join(SEQUENCE_SUFFIXES + H5_SUFFIXES)}", output)
    check_output_path(output, "tracked sweep")
    if sweep.exists() and output.resolve() == sweep.resolve():
        raise ConfigError("the tracked sweep would overwrite the input sweep; give another name", output)
    if plot is not None:
        if not plot.name.lower().endswith(".png"):
            raise ConfigError("the plot is a PNG; give a name ending in .png", plot)
        check_output_path(plot, "plot")


def register(app: typer.Typer) -> None:
    @app.command("track")
    def track_command(
        sweep: Path = typer.Argument(..., help="Input sweep (.igs.mha, .seq.nrrd, TUS-REC or DualTrack .h5)."),
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="DualTrack checkpoint (.pt, ours or official)."),
        output: Path = typer.Option(..., "--output", "-o", help="Tracked sweep to write (e.g. tracked.igs.mha)."),
        preset: Optional[str] = typer.Option(
            None, "--preset", help="dualtrack-2024 | dualtrack-tusrec2025 | tiny (default: from the checkpoint)."
        ),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
        plot: Optional[Path] = typer.Option(
            None, "--plot", help="PNG of the predicted trajectory (and the ground truth when the sweep has poses)."
        ),
        to_uint8: str = typer.Option(
            "dtype", "--to-uint8",
            help="How non-8-bit frames become the model's 8-bit input: dtype (full type range), window "
                 "(--window LOW,HIGH) or minmax (whole sweep). One map for all frames; uint8 is used as is."),
        window: Optional[str] = typer.Option(None, "--window", help="LOW,HIGH grey window for --to-uint8 window."),
        precision: str = typer.Option(
            "fp32", "--precision",
            help="fp32 | bf16 (bf16 convolutions, fp32 head, fp64 poses; fast only with native bf16) | fp64.",
        ),
        kernel: str = typer.Option(
            "auto", "--kernel",
            help="auto (per layer the fastest of direct, Winograd F(2x2) and F(4x4), measured once on this machine "
                 "and cached) | direct | winograd (F(2x2), >= 128 channels) | winograd4 (F(4x4), every layer).",
        ),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's default)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    ) -> None:
        """Estimate the probe trajectory of a sweep from its frames alone (DualTrack)."""
        from rich.console import Console

        from freehand3d.commands._progress import Phases
        from freehand3d.sweep import checked_conversion
        from freehand3d.tracking.workflows import check_track_options, track_file

        check_track_options(precision, kernel, threads, device, preset)  # before reading anything
        method, win = checked_conversion(to_uint8, window)
        _check_track_outputs(sweep, output, plot)
        with Phases(quiet) as phases:
            def phase(description, total=None):
                then = "global context and poses" if total is not None else None
                phases.start(description, total, then=then)

            result = track_file(sweep, checkpoint, output, preset=preset, device=device, plot_path=plot,
                                to_uint8=method, window=win, precision=precision, kernel=kernel, threads=threads,
                                phase=phase, progress=phases.update)
        console = Console()
        console.print(f"tracked {result['n_frames']} frames -> {output} "
                      f"(precision {result['precision']}, device {result['device']})")
        if result.get("kernels"):
            console.print(f"local-CNN kernels: {result['kernels']}")
        if "metrics" in result:
            console.print(_metrics_table(result["metrics"], "against the poses stored in the input"))

    @app.command("evaluate")
    def evaluate_command(
        pred: Path = typer.Argument(..., help="Tracked sweep (prediction)."),
        gt: Path = typer.Argument(..., help="Ground-truth sweep with the same frames."),
        landmarks: Optional[Path] = typer.Option(
            None, "--landmarks", help="Landmarks (.npy or CSV rows frame,x,y; 1-based pixels) for GLE/LLE."
        ),
        world: Optional[str] = typer.Option(None, "--world", help="World frame name (default: Reference, then Tracker)."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON instead of a table."),
    ) -> None:
        """Tracking errors of a predicted trajectory: TUS-REC GPE/LPE, 5-point proxy, drift."""
        from freehand3d.tracking.workflows import evaluate_sweeps

        metrics = evaluate_sweeps(pred, gt, world=world, landmarks_path=landmarks)
        if as_json:
            typer.echo(json.dumps(metrics, indent=1))
            return
        from rich.console import Console

        Console().print(_metrics_table(metrics, f"{pred.name} vs {gt.name} ({metrics['n_frames']} frames)"))

    @app.command("train")
    def train_command(
        csv: Path = typer.Option(..., "--csv", help="CSV of DualTrack h5 sweeps: sweep_id,path,split."),
        out: Path = typer.Option(..., "--out", help="Output folder (best.pt, last.pt, history.json)."),
        stage: str = typer.Option("fusion", "--stage", help="local | global | fusion | finetune."),
        preset: str = typer.Option("tiny", "--preset", help="Architecture of a fresh model."),
        init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint (previous stage / finetune)."),
        epochs: int = typer.Option(10, "--epochs", min=1),
        batch_size: int = typer.Option(2, "--batch-size", min=1, help="Global batch (all processes)."),
        window: int = typer.Option(32, "--window", min=2, help="Frames per training window."),
        window_stride: Optional[int] = typer.Option(None, "--window-stride", min=1, help="Frames between window starts (default window/2)."),
        global_window: Optional[int] = typer.Option(
            None, "--global-window", min=2, help="Window of the global stage (default: the shortest training sweep)."
        ),
        lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default depends on the stage)."),
        warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear warm-up steps before the cosine decay."),
        batchnorm: str = typer.Option(
            "auto", "--batchnorm", help="auto (trainable BatchNorms use batch statistics) | frozen (running statistics)."
        ),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap on steps per epoch."),
        seed: int = typer.Option(0, "--seed"),
        device: Optional[str] = typer.Option(None, "--device"),
        no_amp: bool = typer.Option(False, "--no-amp", help="Disable mixed precision on CUDA."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    ) -> None:
        """Train DualTrack (one stage) on h5 sweeps; multi-GPU with torchrun."""
        if stage not in STAGES:
            from freehand3d.errors import ConfigError

            raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}", "--stage")
        from freehand3d.tracking.train import TrainOptions, train

        options = TrainOptions(
            stage=stage,
            preset=preset,
            init=None if init is None else str(init),
            epochs=epochs,
            batch_size=batch_size,
            window=window,
            window_stride=window_stride,
            global_window=global_window,
            lr=lr,
            warmup_steps=warmup_steps,
            batchnorm=batchnorm,
            max_steps_per_epoch=max_steps,
            seed=seed,
            device=device,
            amp=not no_amp,
        )
        result = train(csv, out, options, resume=resume)
        last = result.history[-1] if result.history else {}
        typer.echo(
            f"best epoch {result.best_epoch + 1} (loss {result.best_loss:.4g}) -> {result.best}; "
            f"last train loss {last.get('train_loss', float('nan')):.4g} -> {result.last}"
        )
