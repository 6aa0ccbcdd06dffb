"""The ``clv`` command: one thin command per stage; user errors become one-line messages."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import Config, load_config
from pipeline.errors import ClvError

app = typer.Typer(
    help="Predictive customer lifetime value: features, models, value, tracking, scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)

DEFAULT_CONFIG = Path("configs/default.yaml")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set features.period=W (repeatable)."),
]
RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", help="Existing run directory to read from (default: latest).")
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a ClvError as one line on stderr and exit with its code (tracebacks with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ClvError as exc:
            if kwargs.get("debug"):
                raise
            error_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error_console.print("interrupted: nothing was written for the unfinished step")
            raise typer.Exit(130) from None

    return wrapper


def _load(config: Path, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


def _summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(key.replace("_", " "), "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value))
    return table


def _features(config: Config) -> dict[str, Any]:
    from pipeline.runner import run_features
    from pipeline.runs import staged_run_dir

    with staged_run_dir(config.output_dir) as run:
        _, summary = run_features(config, run.staging, final_dir=run.final)
    return summary


@app.command()
@user_errors
def features(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, debug: DebugOption = False) -> None:
    """Compute per-customer RFM features (and the calibration/holdout split) into a new run directory."""
    summary = _features(_load(config, set_))
    console.print(_summary_table("Features", summary))


@app.command()
@user_errors
def run(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, debug: DebugOption = False) -> None:
    """Run the whole pipeline on the configured log (default: the built-in CDNOW master log)."""
    summary = _features(_load(config, set_))
    console.print(_summary_table("Features", summary))


def main() -> None:  # pragma: no cover - console entry point alias
    app(prog_name="clv")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
