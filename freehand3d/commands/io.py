"""CLI: ``freehand3d info FILE`` and ``freehand3d convert IN OUT``."""

from __future__ import annotations

from pathlib import Path

import typer


def _fmt_seconds(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_sweep(console, summary: dict) -> None:
    from rich.table import Table

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("format", summary.get("format") or "-")
    facts.add_row("frames", str(summary["n_frames"]))
    facts.add_row("frame size", f"{summary['width']} x {summary['height']} px (W x H)")
    components = summary.get("components", 1)
    pixel = summary.get("pixel_type", "uint8") + ("" if components == 1 else f", {components} components per pixel")
    if summary.get("value_range") is not None:
        low, high = summary["value_range"]
        pixel += f", values {low:.6g} .. {high:.6g}"
    facts.add_row("pixel type", pixel)
    if summary.get("image_type"):
        facts.add_row("image type", summary["image_type"])
    spacing = summary["spacing"]
    facts.add_row("spacing", "unknown (PLUS keeps it in ImageToProbe)" if spacing is None
                  else f"{spacing[0]:.6g} x {spacing[1]:.6g} mm/px")
    if summary["orientation"] is not None:
        rf = summary["orientation"].strip().upper() in ("FM", "NM", "FU", "NU")
        facts.add_row("orientation", f"{summary['orientation']} on disk; frames in memory are "
                      + ("FM (RF: columns along the scan line, near to far)" if rf else "MF"))
    else:
        facts.add_row("orientation", "MF (the format does not record one)")
    t = summary["time"]
    if t["start"] is None:
        facts.add_row("time", "no timestamps")
    else:
        rate = "-" if t["mean_rate"] is None else f"{t['mean_rate']:.2f} frames/s"
        facts.add_row("time span", f"{_fmt_seconds(t['start'])} .. {_fmt_seconds(t['end'])} s "
                      f"({t['span']:.3f} s), mean frame rate {rate}")
        notes = []
        if t["missing"]:
            notes.append(f"{t['missing']} frames without timestamp")
        if t["non_increasing"]:
            notes.append(f"{t['non_increasing']} non-increasing steps")
        if notes:
            facts.add_row("", "[yellow]" + ", ".join(notes) + "[/yellow]")
    status = summary["image_status"]
    facts.add_row("image status", "not recorded" if status is None
                  else ", ".join(f"{word} {count}" for word, count in status.items()))
    if summary["image_to_probe"] is None:
        facts.add_row("calibration", "none (no ImageToProbe)")
    else:
        rows = "\n".join(" ".join(f"{v:10.5g}" for v in row) for row in summary["image_to_probe"])
        px = summary["calibration_pixel_size"]
        facts.add_row("calibration", f"ImageToProbe, pixel size {px[0]:.5g} x {px[1]:.5g} mm\n{rows}")
    if summary["frame_fields"]:
        facts.add_row("other per-frame fields", ", ".join(summary["frame_fields"]))
    console.print(facts)

    if summary["transforms"]:
        table = Table(title="transforms", title_justify="left")
        table.add_column("name")
        table.add_column("valid", justify="right")
        table.add_column("invalid", justify="right")
        table.add_column("non-finite", justify="right")
        for name, counts in summary["transforms"].items():
            table.add_row(name, str(counts["valid"]), str(counts["invalid"]),
                          f"[red]{counts['non_finite']}[/red]" if counts["non_finite"] else "0")
        console.print(table)
    else:
        console.print("transforms: none")


def _print_other(console, summary: dict) -> None:
    from rich.table import Table

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    if summary["kind"] == "volume":
        size = summary["size"]
        facts.add_row("volume", " x ".join(map(str, size)) + " voxels (x, y, z)")
        facts.add_row("pixel type", summary["pixel_type"]
                      + ("" if summary["components"] == 1 else f", {summary['components']} components"))
        facts.add_row("spacing", " x ".join(f"{v:.6g}" for v in summary["spacing"]) + " mm")
        facts.add_row("origin", ", ".join(f"{v:.6g}" for v in summary["origin"]) + " mm")
        facts.add_row("direction", " ".join(f"{v:.4g}" for v in summary["direction"]))
        facts.add_row("values", f"{summary['min']:.6g} .. {summary['max']:.6g}, "
                      f"{100 * summary['nonzero_fraction']:.1f} % non-zero")
    elif summary["kind"] == "device_set":
        facts.add_row("device set", summary["name"] or "-")
        if summary["description"]:
            facts.add_row("description", summary["description"])
        facts.add_row("phantom", summary["phantom"] or "none")
        facts.add_row("segmentation", "yes" if summary["segmentation"] else "no")
        facts.add_row("volume reconstruction", "yes" if summary["volume_reconstruction"] else "no")
        for name, t in summary["transforms"].items():
            extra = "" if t["error"] is None else f" (error {t['error']:.4g})"
            facts.add_row(name + extra, "\n".join(" ".join(f"{v:10.5g}" for v in row) for row in t["matrix"]))
    else:  # calibration report
        facts.add_row("calibration report", "PLUS ProbeCalibrationResult")
        facts.add_row("ImageToProbe", "\n".join(" ".join(f"{v:10.5g}" for v in row) for row in summary["image_to_probe"]))
        for key, value in summary["reprojection_3d"].items():
            facts.add_row(key.replace("_", " "), f"{value:.5g}")
        facts.add_row("frames", f"validation {summary['validation_frames']}, calibration {summary['calibration_frames']}")
    console.print(facts)


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        file: Path = typer.Argument(..., help="Sweep (.igs.mha, .seq.nrrd, .h5, ...), volume (.nrrd, .mha, "
                                    ".nii.gz) or PLUS device-set / calibration-report XML."),
    ) -> None:
        """Show what a file holds: frames, size, spacing, orientation, transforms with valid/invalid
        counts, time span and frame rate, image status, calibration; or a volume's geometry."""
        from rich.console import Console

        from freehand3d.io.summary import summarize_file

        summary = summarize_file(file)
        console = Console()
        console.print(f"[bold]{file}[/bold]")
        if summary["kind"] == "sweep":
            _print_sweep(console, summary)
        else:
            _print_other(console, summary)

    @app.command()
    def convert(
        source: Path = typer.Argument(..., help="Input sweep (.igs.mha, .seq.mha, .igs.nrrd, .mhd, .h5)."),
        target: Path = typer.Argument(..., help="Output sweep; the format follows the name."),
        compress: bool = typer.Option(True, "--compress/--no-compress", help="Compress the pixel data."),
        h5_format: str = typer.Option("dualtrack", help="Layout of an .h5 output: dualtrack or tusrec."),
    ) -> None:
        """Convert a sweep between formats (read_sweep -> write_sweep); every field is carried over."""
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from freehand3d.io.convert import convert_sweep_file

        console = Console(stderr=True)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            progress.add_task(f"converting {source.name} -> {target.name}", total=None)
            sweep = convert_sweep_file(source, target, compress=compress, h5_format=h5_format)
        console.print(f"wrote {target} ({len(sweep)} frames)")
