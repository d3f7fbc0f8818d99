"""The progress bars of `backfill` and `verify`: on stderr, drawn only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from cdc_daemon.backfill import BackfillProgress
from cdc_daemon.verify import VerifyProgress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = structlog.get_logger("cdc_daemon.cli")


def progress_bar(transient: bool = False) -> Progress:
    from rich.console import Console  # imported here: the other commands start faster
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    # On stderr, drawn only on a terminal. Lines printed meanwhile go above the bar when stdout
    # is that terminal too; a piped stdout gets them as they are, and never the bar.
    return Progress(
        *columns,
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
        transient=transient,
        redirect_stdout=sys.stdout.isatty(),
    )


class Counted(Protocol):
    """What a bar shows: BackfillProgress, VerifyProgress."""

    @property
    def table(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int | None: ...


def shown_on(bar: Progress, task: TaskID, unit: str = "rows") -> Callable[[Counted], None]:
    """`backfill`'s and `verify`'s progress on `task` of the bar (`unit`s per second)."""

    def show(progress: Counted) -> None:
        counts = {"table": progress.table, "done": progress.done, "total": progress.total}
        if isinstance(progress, BackfillProgress):
            if progress.resumed_from and progress.done == progress.resumed_from:
                print(f"{progress.table}: resuming after {progress.done} rows")
            log.debug("backfill progress", **counts)
        else:
            log.debug("verify progress", **counts)
        speed = bar.tasks[task].speed
        bar.update(
            task,
            total=progress.total,
            completed=progress.done,
            rate=f"{speed:,.0f} {unit}/s" if speed else "-",
        )

    return show


def verify_shown_on(bar: Progress) -> Callable[[VerifyProgress], None]:
    """A bar per table and stage (documents read, rows compared); a repair's comparison after
    it gets bars of its own (each stage is a new VerifyProgress)."""
    shown: dict[VerifyProgress, Callable[[Counted], None]] = {}

    def show(progress: VerifyProgress) -> None:
        if progress not in shown:
            description = f"{progress.table}: {progress.stage}"
            task = bar.add_task(description, total=progress.total, rate="-")
            shown[progress] = shown_on(bar, task, progress.stage)
        shown[progress](progress)

    return show
