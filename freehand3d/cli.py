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

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from freehand3d import __version__
from freehand3d.errors import ConfigError, Freehand3DError, describe_os_error

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


def _check_device(args: list[str]) -> None:
    """``--device cuda`` on a machine without CUDA: one error line before any command starts
    (every command with a ``--device`` option gets the same check and message)."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--device" and i + 1 < len(args) else (arg[9:] if arg.startswith("--device=") else None)
        if value is None or value.lower() == "cpu":
            continue
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"{value!r} is not a device; use cpu, cuda or cuda:N", "--device") from None
        if not value.lower().startswith("cuda"):
            continue
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, no GPU found"
            raise ConfigError(f"CUDA is not available here (torch {torch.__version__}, {build}); use --device cpu", "--device")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"freehand3d: error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """Console-script entry point: one stderr line and exit code 2 for anything a user can fix.

    - :class:`freehand3d.errors.Freehand3DError`: ``freehand3d: error: <file>: <problem>``;
    - an ``OSError`` from any read or write (read-only folder, full disk, a folder where a file is
      expected): the file and the system's reason;
    - ``MemoryError``: the allocation that failed and a hint;
    - click's usage errors (bad option value) keep click's own message, exit 2;
    - Ctrl-C: ``freehand3d: interrupted`` and exit 130 (outputs are written atomically, so nothing
      half-written stays behind).
    """
    args = sys.argv[1:]
    try:
        _check_device(args)
        code = app(args=args, prog_name="freehand3d", standalone_mode=False)
    except Freehand3DError as exc:
        _fail(str(exc))
    except typer.Abort as exc:  # typer turns an EOFError escaping a command into Abort
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            _interrupted()
        _fail(f"unexpected end of data while reading input ({cause or 'EOF'})")
    except ClickException as exc:  # usage errors: click's own text
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
        except Exception:  # noqa: BLE001 - fall back to click's plain text
            exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except BrokenPipeError:
        sys.exit(1)  # output piped into e.g. `head`: not an error worth a line
    except OSError as exc:
        _fail(describe_os_error(exc))
    except MemoryError as exc:
        detail = str(exc).strip() or "an allocation failed"
        _fail(f"not enough memory ({detail}); try a coarser resolution or a smaller input")
    if code == 130:  # typer maps a KeyboardInterrupt inside a command to Exit(130)
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> None:
    typer.echo("freehand3d: interrupted", err=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
