"""Run directories: where one run's outputs live, and how later stages find them."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from pipeline.errors import InputDataError

LATEST_POINTER = "LATEST"


def new_run_dir(output_dir: Path, name: str | None = None) -> Path:
    """Create ``output_dir/<UTC timestamp>-<suffix>`` and point ``output_dir/LATEST`` at it."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(output_dir) / f"{stamp}-{name or secrets.token_hex(3)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


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
