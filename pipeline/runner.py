"""Stages with their IO: each reads its inputs from the run directory and writes its outputs there.

The pure logic lives in ``pipeline/stages``; this module is the edge that touches files, so
the same stage runs alone (``clv features``) and inside the whole pipeline (``clv run``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.io import write_json, write_parquet
from pipeline.stages.features import FeaturesResult, features_from_config

FEATURES_FILE = "features.parquet"
CALIBRATION_FILE = "calibration.parquet"
REPEAT_PURCHASES_FILE = "repeat_purchases.parquet"
FEATURES_SUMMARY_FILE = "features_summary.json"


def features_summary(result: FeaturesResult, config: Config, output: Path) -> dict[str, Any]:
    """What a person wants to see about a features run (also logged as run metadata)."""
    table = result.features
    frequency = table.column("frequency").to_numpy()
    calibration_repeaters = None
    if result.calibration is not None:
        calibration_repeaters = int((result.calibration.column("frequency").to_numpy() > 0).sum())
    return {
        "source": result.log.source,
        "rows_read": result.log.rows_read,
        "rows_used": result.log.rows_used,
        "rows_after_observation_end": result.log.rows_after_observation_end,
        "negative_amount_rows_dropped": result.log.negative_amount_rows_dropped,
        "first_date": result.log.first_date.isoformat(),
        "last_date": result.log.last_date.isoformat(),
        "customers": table.num_rows,
        "repeat_customers": int((frequency > 0).sum()),
        "period_unit": config.features.period.unit,
        "period_resolution": config.features.period.resolution,
        "observation_end": result.observation_end.isoformat(),
        "calibration_end": result.calibration_end.isoformat() if result.calibration_end else None,
        "calibration_customers": None if result.calibration is None else result.calibration.num_rows,
        "calibration_repeat_customers": calibration_repeaters,
        "output": str(output),
    }


def run_features(
    config: Config, run_dir: Path, source=None, final_dir: Path | None = None
) -> tuple[FeaturesResult, dict[str, Any]]:
    """Compute features for ``config`` and write them (atomically) into ``run_dir``.

    ``final_dir`` is where ``run_dir`` will be moved once the whole run succeeds; the summary
    names the file there.
    """
    result = features_from_config(config, source)
    write_parquet(result.features, Path(run_dir) / FEATURES_FILE)
    if result.calibration is not None:
        write_parquet(result.calibration, Path(run_dir) / CALIBRATION_FILE)
    write_parquet(result.repeat_purchases, Path(run_dir) / REPEAT_PURCHASES_FILE)
    summary = features_summary(result, config, Path(final_dir or run_dir) / FEATURES_FILE)
    write_json(summary, Path(run_dir) / FEATURES_SUMMARY_FILE)
    return result, summary


def log_summary_as_dict(result: FeaturesResult) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(result.log).items()}
