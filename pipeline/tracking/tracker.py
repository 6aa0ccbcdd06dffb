"""The tracker interface every command logs through: start (as a context), ``log_fit``,
``log_model``, ``finish`` (register the model) and ``fail``, plus what retrain and the stage
commands add. :class:`InProcessTracker` logs from the calling process (the stage commands and
``clv retrain``, which needs the registry around the run); ``clv run`` uses the background
implementation in :mod:`pipeline.tracking.background`, which does the same from a helper process.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import TrackingError
from pipeline.tracking import model as model_logging
from pipeline.tracking import registry, runs
from pipeline.tracking.store import connect


class InProcessTracker:
    """An open MLflow run, logged from this process."""

    def __init__(self, run: runs._Run, config: Config, config_path: Path | None = None):
        self.run = run
        self.run_id = run.run_id
        self.client = run.client
        self.config = config
        self.config_path = config_path
        self._logged_model = None
        self._scorer = None

    # --- the interface, as the background tracker has it ------------------------------------

    def log_fit(self, fit: Any) -> None:
        """The production models, the candidates (nested runs) and the backtest."""
        runs.log_fit(self.run, fit)

    def log_model(self, scorer: Any, features: Any) -> None:
        """Log (not yet register) the pyfunc model of ``scorer``, with an input example from ``features``."""
        self._logged_model = model_logging.log_model(self.run, model_logging.model_example(features, scorer), scorer)
        self._scorer = scorer

    def finish(self, run_dir: Path, summary: dict[str, Any], checks: dict[str, Any], source: Any = None) -> dict[str, Any]:
        """Log the finished run's outputs and register its model with the release gates' ``checks``."""
        if self._logged_model is None:
            raise RuntimeError("the run finished before its model was logged")
        return registry.log_pipeline_end(
            self.run, self.config, Path(run_dir), summary, self._scorer, self._logged_model, checks, source
        )

    def fail(self, exc: BaseException) -> None:
        runs.end_failed(self.run, runs.error_line(exc), type(exc).__name__, killed=isinstance(exc, KeyboardInterrupt))

    # --- what the stage commands and retrain log besides -------------------------------------

    def log_config(self) -> None:
        runs.log_config(self.run, self.config, self.config_path)

    def log_features(self, summary: dict[str, Any]) -> None:
        """The data fingerprint of a features run (``summary``: the features stage's)."""
        runs.log_data(self.run, runs.data_fingerprint(self.config, summary), summary)

    def log_value(self, summary: dict[str, Any]) -> None:
        runs.log_value(self.run, summary)

    def log_outputs(self, run_dir: Path) -> None:
        runs.log_outputs(self.run, run_dir)

    def log_backtest_origins(self, summary: dict[str, Any], run_dir: Path) -> None:
        """``clv backtest``'s report (see :func:`pipeline.tracking.runs.log_backtest_origins`)."""
        runs.log_backtest_origins(self.run, summary, run_dir)

    def log_monitor(self, metrics: dict[str, float], alert: str | None) -> None:
        runs.log_monitor(self.run, metrics, alert)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in runs._finite(metrics).items():
            self.client.log_metric(self.run_id, key, value)

    def tag(self, key: str) -> str | None:
        """A tag of this run as stored (e.g. the data fingerprint logged by :meth:`finish`)."""
        return self.client.get_run(self.run_id).data.tags.get(key)

    def champion(self) -> Any:
        """The registered version holding the champion alias, or None."""
        return registry.champion_version(self.client, self.config.tracking.registered_model)

    def champion_tags(self, version: Any) -> dict[str, str]:
        """The tags of the run that registered ``version``."""
        return self.client.get_run(version.run_id).data.tags

    def set_champion(self, version: str) -> None:
        self.client.set_registered_model_alias(self.config.tracking.registered_model, registry.CHAMPION, version)


@contextlib.contextmanager
def tracked_run(
    config: Config, kind: str, run_name: str | None = None, config_path: Path | None = None
) -> Iterator[InProcessTracker | None]:
    """An MLflow run around a stage or the pipeline, logged from this process; FAILED with the
    error as a tag if the body raises (KILLED on Ctrl-C).

    With ``tracking.enabled: false`` — or an unreachable store and ``tracking.required: false``
    — yields ``None`` and the caller writes outputs locally only.
    """
    settings = config.tracking
    if not settings.enabled:
        yield None
        return
    try:
        client = connect(settings)
    except TrackingError as exc:
        if settings.required:
            raise
        warnings.warn(f"{exc}; tracking.required is false, so outputs are written locally only", stacklevel=3)
        yield None
        return
    with runs.open_run(client, config, kind, run_name) as run:
        yield InProcessTracker(run, config, config_path)
