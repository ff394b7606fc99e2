"""The ``freehand3d`` command line: a thin Typer layer over the library.

Each area registers its commands from ``freehand3d/commands/<area>.py``; those modules import only
typer and the standard library at module level (heavy imports happen inside each command), so
``freehand3d --help`` stays fast. Errors a user can fix (:class:`freehand3d.errors.Freehand3DError`)
print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from freehand3d import __version__
from freehand3d.errors import Freehand3DError

app = typer.Typer(
    name="freehand3d",
    help="Freehand 3D ultrasound: calibrate, track, reconstruct, stream, ULM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

#: command modules, in the order their commands appear in --help
COMMAND_MODULES = ("io", "simulate", "calibrate", "reconstruct", "track", "stream", "ulm", "demo", "batch")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"freehand3d {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Freehand 3D ultrasound from raw frames to volumes."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"freehand3d.commands.{_name}")
    except ModuleNotFoundError as _exc:  # an area not written yet
        if _exc.name != f"freehand3d.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Console-script entry point: map freehand3d errors to one stderr line and exit code 2."""
    try:
        app(prog_name="freehand3d")
    except Freehand3DError as exc:
        typer.echo(f"freehand3d: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("freehand3d: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
