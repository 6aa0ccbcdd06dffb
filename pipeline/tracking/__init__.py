"""Everything MLflow, and the only package that imports it.

* :mod:`.store` — where the store is, checking it answers, connecting;
* :mod:`.runs` — an MLflow run and what it logs (config, data fingerprint, fits, candidates,
  backtest, value, outputs, the champion monitor);
* :mod:`.model` — the pyfunc model around the frozen scorer: logging it and loading it back;
* :mod:`.registry` — versions, the challenger and champion aliases, promotion, comparison;
* :mod:`.tracker` — the tracker interface the commands log through, in this process;
* :mod:`.background` — the same interface from a helper process (``clv run``).

What a version must pass to be released is decided outside (:mod:`pipeline.release`); this
package records the verdict.
"""

from pipeline.config import resolve_input_path
from pipeline.tracking.model import PYFUNC_INPUT_COLUMNS, load_scorer, log_model, model_example
from pipeline.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    champion_version,
    compare_runs,
    log_pipeline_end,
    promote,
    register_model,
)
from pipeline.tracking.runs import (
    RUN_KIND_TAG,
    data_fingerprint,
    end_failed,
    error_line,
    flatten,
    input_file_sha256,
    log_backtest,
    log_backtest_origins,
    log_candidates,
    log_config,
    log_data,
    log_fit,
    log_model_summaries,
    log_monitor,
    log_outputs,
    log_value,
    open_run,
)
from pipeline.tracking.store import DEFAULT_URI, check_store, code_version, connect, tracking_uri
from pipeline.tracking.tracker import InProcessTracker, tracked_run

__all__ = [
    "CHALLENGER", "CHAMPION", "DEFAULT_URI", "PYFUNC_INPUT_COLUMNS", "RUN_KIND_TAG", "InProcessTracker",
    "champion_version", "check_store", "code_version", "compare_runs", "connect", "data_fingerprint", "end_failed",
    "error_line", "flatten", "input_file_sha256", "load_scorer", "log_backtest", "log_backtest_origins",
    "log_candidates", "log_config",
    "log_data", "log_fit", "log_model", "log_model_summaries", "log_monitor", "log_outputs", "log_pipeline_end",
    "log_value", "model_example", "open_run", "promote", "register_model", "resolve_input_path", "tracked_run",
    "tracking_uri",
]
