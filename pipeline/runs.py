"""Run directories: where one run's outputs live, and how later stages find them."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputDataError

LATEST_POINTER = "LATEST"


def new_run_name(name: str | None = None) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{name or secrets.token_hex(3)}"


@dataclasses.dataclass(frozen=True)
class StagedRun:
    """A run being written: files go to ``staging``; ``final`` is where they appear on success."""

    staging: Path
    final: Path


@contextlib.contextmanager
def staged_run_dir(output_dir: Path, name: str | None = None) -> Iterator[StagedRun]:
    """Yield a hidden staging directory that becomes ``output_dir/<run name>`` only on success.

    A failed or interrupted run leaves nothing under ``output_dir`` and does not move
    ``LATEST``, so later stages never pick up half a run.
    """
    output_dir = Path(output_dir)
    run_name = new_run_name(name)
    staging = output_dir / f".{run_name}.partial"
    final = output_dir / run_name
    staging.mkdir(parents=True, exist_ok=False)
    try:
        yield StagedRun(staging=staging, final=final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)
    mark_latest(final)


def mark_latest(run_dir: Path) -> None:
    """Record ``run_dir`` as the latest complete run (read by stages run alone)."""
    pointer = run_dir.parent / LATEST_POINTER
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(run_dir.name + "\n")
    tmp.replace(pointer)


def resolve_run_dir(output_dir: Path, run_dir: Path | None) -> Path:
    """The run directory a single stage should read from: the given one, else the latest."""
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise InputDataError(f"{run_dir}: run directory not found")
        return Path(run_dir)
    pointer = Path(output_dir) / LATEST_POINTER
    if not pointer.is_file():
        raise InputDataError(
            f"{output_dir}: no previous run found; run `clv run` or `clv features` first, or pass --run-dir"
        )
    found = Path(output_dir) / pointer.read_text().strip()
    if not found.is_dir():
        raise InputDataError(f"{pointer}: points at {found}, which does not exist")
    return found
