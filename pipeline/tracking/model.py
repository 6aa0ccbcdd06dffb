"""The registered model: the pyfunc wrapper around the frozen scorer, logging it and loading it back."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.errors import InputDataError
from pipeline.tracking.runs import _Run
from pipeline.tracking.store import connect

MODEL_ARTIFACT = "model"


def _pyfunc_class():
    import mlflow.pyfunc

    class CustomerValueModel(mlflow.pyfunc.PythonModel):
        """Scores a per-customer features frame: P(alive), churn, purchases, spend, CLV, tier.

        Input: one row per customer with ``customer_id``, ``frequency``, ``recency``, ``T``,
        ``monetary_value``, ``n_transactions``, ``total_amount`` (optionally ``total_margin``,
        ``acquisition_cost``, ``first_channel``), in the model's time unit; a model with
        covariates also reads their raw columns (its signature lists them).
        """

        def load_context(self, context):
            import joblib

            self.scorer = joblib.load(context.artifacts["scorer"])

        # A DataFrame hint: MLflow infers no schema from it (the logged signature stays the
        # contract) and, without any hint, warns on every log past all warnings filters.
        def predict(self, context, model_input: pd.DataFrame, params=None):
            frame = pd.DataFrame(model_input)
            if "customer_id" in frame.columns:
                frame = frame.set_index("customer_id")
            return self.scorer.score(frame).reset_index()

    return CustomerValueModel


PYFUNC_INPUT_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value", "n_transactions", "total_amount"]


def _log_pyfunc(example: pd.DataFrame, signature: Any, scorer_path: Path, scorer: Any) -> Any:
    import mlflow

    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; this model carries an explicit signature instead.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=_pyfunc_class()(),
            artifacts={"scorer": str(scorer_path)},
            signature=signature,
            input_example=example,
            # Listing requirements skips MLflow's slow import-tracing inference.
            pip_requirements=["lifetimes==0.11.3", "pandas", "numpy", "scipy", "scikit-learn", "joblib"],
            metadata={"value_settings": scorer.settings_summary()},
        )


def model_example(features: pd.DataFrame, scorer: Any = None) -> pd.DataFrame:
    """The logged model's input example: the first five customers, with the columns it reads
    (a covariate model's raw covariates among them, so the signature asks for them)."""
    covariates = list(getattr(scorer, "covariates", ()))
    optional = [c for c in ("total_margin", "acquisition_cost", "first_channel") if c in features.columns]
    optional += [c for c in covariates if c not in optional and c in features.columns]
    return features.head(5).reset_index()[PYFUNC_INPUT_COLUMNS + optional]


def log_model(run: _Run, example: pd.DataFrame, scorer: Any) -> Any:
    """Log the pyfunc model of ``scorer`` (signature and input ``example``, see :func:`model_example`) in the run."""
    import tempfile

    import joblib
    from mlflow.models import infer_signature

    output = scorer.score(example.set_index("customer_id")).reset_index()
    # A copy of its own: the run's scorer file is in the staging directory, which is renamed
    # when the run commits, perhaps while this logs.
    with tempfile.TemporaryDirectory() as scratch:
        scorer_path = Path(scratch) / "scorer.joblib"
        joblib.dump(scorer, scorer_path)
        return _log_pyfunc(example, infer_signature(example, output), scorer_path, scorer)


def load_scorer(config: Config, model_uri: str) -> tuple[Any, Any]:
    """The frozen scorer inside a registered pyfunc model, and which model version it is."""
    from mlflow.exceptions import MlflowException

    from pipeline.stages.score import ModelIdentity

    client = connect(config.tracking)
    import mlflow.pyfunc

    name = version = run_id = None
    try:
        if model_uri.startswith("models:/"):
            reference = model_uri.removeprefix("models:/")
            if "@" in reference:
                name, alias = reference.split("@", 1)
                found = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = reference.partition("/")
                found = client.get_model_version(name, number)
            version, run_id = str(found.version), found.run_id
        elif model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        with warnings.catch_warnings():
            # Unpickling the model class repeats MLflow's type-hint suggestion; the model has a signature.
            warnings.simplefilter("ignore", UserWarning)
            model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise InputDataError(f"model {model_uri}: not found ({str(exc).splitlines()[0][:200]})") from None
    scorer = getattr(model.unwrap_python_model(), "scorer", None)
    if scorer is None:
        raise InputDataError(f"model {model_uri}: not a CLV model logged by this pipeline")
    return scorer, ModelIdentity(uri=model_uri, name=name, version=version, run_id=run_id)
