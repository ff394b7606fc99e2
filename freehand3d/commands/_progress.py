"""Progress lines for long commands (track, calibrate, segment), as ``reconstruct`` shows them.

One line per phase on stderr (rich): a bar with counts where the phase reports them, the elapsed
time always. On a terminal the lines update live; when stderr is a file or a pipe rich prints the
finished lines once at the end. ``quiet`` shows nothing. Nothing is shown before the first phase
starts (so a refused request prints its error line alone), and a failed run erases its lines so
the error line stands alone.
"""

from __future__ import annotations


class Phases:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.task = None
        self._then = None

    def __enter__(self) -> "Phases":
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        return self

    def start(self, description: str, total: float | None = None, then: str | None = None) -> None:
        """Close the current phase at 100 % and start ``description`` (a bar when ``total`` is
        given); ``then``: the phase that starts by itself once this one reaches its total."""
        if self.bar is None:
            return
        self._finish_current()
        if not self.bar.live.is_started:
            self.bar.start()
        self.task = self.bar.add_task(description, total=total)
        self._then = then

    def update(self, done: int, total: int | None = None) -> None:
        """The current phase has ``done`` of ``total`` items."""
        if self.bar is None or self.task is None:
            return
        self.bar.update(self.task, completed=done, **({} if total is None else {"total": total}))
        self._maybe_next()

    def advance(self, n: int = 1) -> None:
        if self.bar is None or self.task is None:
            return
        self.bar.advance(self.task, n)
        self._maybe_next()

    def _maybe_next(self) -> None:
        task = self.bar.tasks[-1]
        if self._then and task.total is not None and task.completed >= task.total:
            self.start(self._then)

    def _finish_current(self) -> None:
        if self.task is not None:
            task = self.bar.tasks[-1]
            self.bar.update(self.task, total=task.total or 1, completed=task.total or 1)

    def __exit__(self, *exc) -> bool:
        if self.bar is not None and self.bar.live.is_started:
            if exc[0] is None:
                self._finish_current()
            else:
                self.bar.live.transient = True  # the error line alone, no half-finished bars above it
            self.bar.stop()
        return False
