"""Covariates stage: each customer's raw covariates beside their features, checked.

``models.covariates`` names per-customer columns: ``first_channel`` (the channel of the first
purchase, which the features stage computes from the log) or columns of a customer attribute
file (``input.customers``, read by :func:`pipeline.io.read_customer_attributes`) joined here by
customer id. The models encode them (``models.CovariateEncoder``: one-hot with a reference
level, numerics standardised); this stage only puts the raw values beside the features and
refuses what cannot be encoded: a customer of the log missing from the file, or a missing value.
No fill is guessed: a missing attribute is an error naming the column and a customer, so a
model is never fitted on silently invented values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import FIRST_CHANNEL, CustomerAttributes
from pipeline.errors import InputDataError
from pipeline.stages.backtest import customer_ids


def attribute_columns(covariates: list[str]) -> list[str]:
    """The covariates that come from the attribute file (all but ``first_channel``)."""
    return [name for name in covariates if name != FIRST_CHANNEL]


def join_attributes(features: pd.DataFrame, attributes: pd.DataFrame, settings: CustomerAttributes,
                    columns: list[str], source: str) -> pd.DataFrame:
    """``features`` with the attribute ``columns`` of each of its customers (matched on
    ``settings.customer_id``), in the features' order.

    Ids are matched as integers when both sides hold integers, or when one side does and the
    other's text ids are all whole numbers (a log's '00042' and a spreadsheet's 42 are one
    customer); else as text. A customer of
    ``features`` without a row in the file is an :class:`InputDataError` naming ``source`` (the
    file), how many are missing and one of them; so is a column that would replace a feature.
    """
    clashes = [name for name in columns if name in features.columns]
    if clashes:
        raise InputDataError(f"{source}: attribute column(s) {clashes} have the name of a feature column; "
                             "rename them in the file")
    ids = pd.Series(np.asarray(customer_ids(features)))
    file_ids = attributes[settings.customer_id]
    ids, file_ids = _comparable(ids, file_ids)
    table = attributes[columns].set_axis(pd.Index(file_ids.to_numpy(), name="customer_id"))
    positions = table.index.get_indexer(pd.Index(ids.to_numpy()))
    absent = positions < 0
    if absent.any():
        raise InputDataError(
            f"{source}: {int(absent.sum()):,} of the log's {len(ids):,} customers have no row "
            f"(e.g. customer {ids[absent].iloc[0]!r}); every customer needs their attributes "
            f"(input.customers.customer_id: {settings.customer_id})"
        )
    joined = {name: table[name].to_numpy()[positions] for name in columns}
    return features.assign(**joined)


def _comparable(ids: pd.Series, file_ids: pd.Series) -> tuple[pd.Series, pd.Series]:
    integer = [pd.api.types.is_integer_dtype(side.dtype) for side in (ids, file_ids)]
    if all(integer):
        return ids, file_ids
    if any(integer):
        as_numbers = [pd.to_numeric(side.astype(str).str.strip(), errors="coerce") for side in (ids, file_ids)]
        if all(side.notna().all() and (side % 1 == 0).all() for side in as_numbers):
            return as_numbers[0].astype(np.int64), as_numbers[1].astype(np.int64)
    return ids.astype(str), file_ids.astype(str)


def check_covariate_values(features: pd.DataFrame, covariates: list[str], source: dict[str, str]) -> None:
    """Every customer has a value of every covariate; else an :class:`InputDataError` naming the
    covariate, where it comes from (``source``: name → file or "the log's channel column"), how
    many customers lack it and one of them."""
    for name in covariates:
        if name not in features.columns:
            raise InputDataError(f"models.covariates: no column '{name}' beside the features ({source[name]})")
        missing = features[name].isna().to_numpy()
        if missing.any():
            example = pd.Series(np.asarray(customer_ids(features)))[missing].iloc[0]
            raise InputDataError(
                f"{source[name]}: covariate '{name}' is missing for {int(missing.sum()):,} customers "
                f"(e.g. customer {example!r}); give every customer a value or drop it from models.covariates"
            )
