"""Static (time-invariant) covariates: the design table the models read, and the test that they help.

How the pipeline uses covariates
--------------------------------
1. Encode the customer attributes into numeric design columns, once, on the calibration
   customers::

       encoder = CovariateEncoder(["channel", "age"]).fit(customers)
       design = encoder.transform(customers)           # columns "channel[web]", ..., "age"
       features = features.join(design)                 # same customer index

   Categorical columns (object, string, category or bool dtype) become one 0/1 column per
   level except the reference level, named ``column[level]``; the reference is the most
   frequent level (ties broken by the sorted order of the levels' text), so the baseline
   parameters describe the commonest customers. Levels are compared as text (``str``), so
   ``True`` and ``"True"`` are one level. Numeric columns are standardised with the
   calibration mean and (population) standard deviation and keep their name, so a
   coefficient is the effect of one standard deviation and the baseline is at the mean.
   ``encoder.design_columns_`` lists the design columns in order.
2. Fit with ``covariates=encoder.design_columns_`` (any subset of the design columns, in any
   order) on every estimator: ``BetaGeoModel``, ``ModifiedBetaGeoModel``, ``ParetoNBDModel``
   and ``GammaGammaModel``. The features table (or the histories grouped by
   ``group_histories(features, covariates=...)``, or ``spend_statistics(features,
   covariates=...)``) must hold those columns; every prediction reads each customer's own
   design row from them. ``covariates=None`` (or empty) is the plain model, to the bit.
   ``models.discounting``'s CLV functions group the customers with the fitted model's
   ``covariates_`` themselves; ``expected_purchases_new_customer(horizon, covariates=row)``
   takes a dict/Series of design values or a table of them (None: the baseline customer).
   A cluster sends ``CustomerHistories.from_counts(unique, counts, covariates=...)`` or
   ``SpendStatistics(..., covariates=..., design=...)`` with the design columns grouped on.
3. Fitted, ``params_`` are the baseline parameters (every design column 0: reference levels
   and mean numerics), and ``coefficients_`` is a table with one row per coefficient: columns
   ``process`` (``purchase`` or ``dropout``; ``spend`` for Gamma-Gamma), ``parameter`` (the
   parameter it scales), ``covariate`` (design column), ``coefficient``, ``standard_error``,
   ``z`` and ``p_value`` (two-sided Wald). ``summary()["coefficients"]`` holds the same rows,
   ``covariates_`` the design columns the fit used, and ``covariance_`` covers every parameter
   and coefficient (coefficients named ``parameter:covariate``).
   The links, for design row x_i:

   * Pareto/NBD: alpha_i = alpha exp(-g_purchase . x_i), beta_i = beta exp(-g_dropout . x_i)
     (CLVTools' links; a positive coefficient means more purchases, or earlier dropout).
   * BG/NBD, MBG/NBD: alpha_i as Pareto/NBD, a_i = a exp(g_a . x_i), b_i = b exp(g_b . x_i).
     CLVTools gives a and b one shared coefficient vector; then a_i / (a_i + b_i), the mean
     dropout probability, is the same for every customer and a covariate can only change its
     spread. Here a and b have a coefficient each (as pymc-marketing's
     ``dropout_coefficient_a`` and ``_b``), so a covariate can move the mean dropout
     probability; with g_a = g_b one has CLVTools' model.
   * Gamma-Gamma: gamma_i = gamma exp(d . x_i), so the expected spend per purchase
     p gamma_i / (q - 1) is the baseline's times exp(d . x_i).

4. Store the encoder with the model: ``encoder.to_dict()`` is plain JSON (strings, numbers,
   lists); ``CovariateEncoder.from_dict(d)`` rebuilds the fitted encoder, and scoring applies
   ``transform`` to new customers (an unseen level is an error naming the column and level).
5. :func:`likelihood_ratio_test` (plain fit, covariate fit) says whether the covariates
   improve the fit more than chance would.

References
----------
.. [1] Fader, P. S. and Hardie, B. G. S. (2007), "Incorporating time-invariant covariates
   into the Pareto/NBD and BG/NBD models", http://brucehardie.com/notes/019/.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import chi2
from sklearn.exceptions import NotFittedError

from ._validation import rows

# The version of to_dict's layout, so a reader can refuse one it does not know.
ENCODING_VERSION = 1


class CovariateEncoder:
    """Encode customer attributes as numeric design columns for the models' ``covariates``.

    Parameters
    ----------
    columns : sequence of str
        The attribute columns to encode, in the order their design columns should come.

    Attributes
    ----------
    encodings_ : list of dict
        One per column: ``{"column", "kind": "categorical", "reference", "levels"}`` (levels
        other than the reference, sorted) or ``{"column", "kind": "numeric", "mean", "sd"}``.
    design_columns_ : tuple of str
        The names of the design columns ``transform`` returns.
    """

    def __init__(self, columns):
        self.columns = columns

    def fit(self, frame, y=None) -> CovariateEncoder:
        """Learn each column's reference level and levels, or its mean and standard deviation.

        Parameters
        ----------
        frame : pandas.DataFrame
            One row per customer (the calibration customers), holding ``columns``.
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If a column is missing or has missing values, a numeric column is constant, or a
            categorical column has a single level; the message names the column.
        """
        columns = _check_column_names(self.columns)
        _check_frame(frame, columns)
        encodings = []
        for column in columns:
            series = frame[column]
            _check_no_missing(series, column)
            if _is_categorical(series):
                counts = _as_text(series).value_counts(sort=False)
                if len(counts) < 2:
                    raise ValueError(
                        f"covariates: column '{column}' has a single level ({counts.index[0]!r}), "
                        "so it cannot explain any difference between customers"
                    )
                # Most frequent first, ties in the sorted order of the levels' text.
                ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                reference = ordered[0][0]
                levels = sorted(level for level in counts.index if level != reference)
                encodings.append({"column": column, "kind": "categorical", "reference": reference, "levels": levels})
            else:
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                not_finite = int(np.count_nonzero(~np.isfinite(values)))
                if not_finite:
                    raise ValueError(f"covariates: column '{column}': {rows(not_finite)} infinite")
                mean, sd = float(np.mean(values)), float(np.std(values))
                if not sd > 0:
                    raise ValueError(
                        f"covariates: column '{column}' is constant ({mean!r} in every row), "
                        "so it cannot explain any difference between customers"
                    )
                encodings.append({"column": column, "kind": "numeric", "mean": mean, "sd": sd})
        self._set(encodings)
        return self

    def _set(self, encodings):
        self.encodings_ = encodings
        names: list[str] = []
        for encoding in encodings:
            if encoding["kind"] == "categorical":
                names.extend(f"{encoding['column']}[{level}]" for level in encoding["levels"])
            else:
                names.append(encoding["column"])
        if len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"covariates: design column name(s) {repeated} would repeat; rename a column or level")
        self.design_columns_ = tuple(names)

    def transform(self, frame) -> pd.DataFrame:
        """The design columns of ``frame``'s customers.

        Parameters
        ----------
        frame : pandas.DataFrame
            Holding the encoded columns; one row per customer.

        Returns
        -------
        pandas.DataFrame
            float64 columns ``design_columns_``, indexed like ``frame``.

        Raises
        ------
        ValueError
            If a column is missing or has missing values, or a categorical column has a level
            the encoder was not fitted on; the message names the column, the levels and the
            number of rows.
        """
        self._check_fitted()
        _check_frame(frame, [encoding["column"] for encoding in self.encodings_])
        design = {}
        for encoding in self.encodings_:
            column = encoding["column"]
            series = frame[column]
            _check_no_missing(series, column)
            if encoding["kind"] == "categorical":
                text = _as_text(series)
                known = {encoding["reference"], *encoding["levels"]}
                unseen = ~text.isin(known)
                if unseen.any():
                    names = sorted(text[unseen].unique())
                    raise ValueError(
                        f"covariates: column '{column}': {rows(int(unseen.sum()))} with level(s) "
                        f"{', '.join(repr(name) for name in names[:5])}{' ...' if len(names) > 5 else ''} "
                        f"not seen when the encoder was fitted (known: {', '.join(repr(k) for k in sorted(known))})"
                    )
                values = text.to_numpy()
                for level in encoding["levels"]:
                    design[f"{column}[{level}]"] = (values == level).astype(np.float64)
            else:
                if _is_categorical(series):
                    raise ValueError(f"covariates: column '{column}' was numeric when fitted, now {series.dtype}")
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                not_finite = int(np.count_nonzero(~np.isfinite(values)))
                if not_finite:
                    raise ValueError(f"covariates: column '{column}': {rows(not_finite)} infinite")
                design[column] = (values - encoding["mean"]) / encoding["sd"]
        return pd.DataFrame(design, index=frame.index, columns=list(self.design_columns_))

    def fit_transform(self, frame, y=None) -> pd.DataFrame:
        """:meth:`fit`, then :meth:`transform` of the same frame."""
        return self.fit(frame).transform(frame)

    def to_dict(self) -> dict[str, Any]:
        """The fitted encoding as plain JSON types, for models.json and the pickled model."""
        self._check_fitted()
        return {
            "version": ENCODING_VERSION,
            "columns": list(_check_column_names(self.columns)),
            "encodings": [dict(encoding) for encoding in self.encodings_],
            "design_columns": list(self.design_columns_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CovariateEncoder:
        """The fitted encoder :meth:`to_dict` described.

        Raises
        ------
        ValueError
            If ``data`` is not such a description (another version, a malformed encoding).
        """
        if not isinstance(data, Mapping) or data.get("version") != ENCODING_VERSION:
            raise ValueError(f"covariate encoding: expected a dict with version {ENCODING_VERSION}")
        encodings = []
        for encoding in data.get("encodings", []):
            kind = encoding.get("kind")
            if kind == "categorical":
                encodings.append({"column": str(encoding["column"]), "kind": kind,
                                  "reference": str(encoding["reference"]),
                                  "levels": [str(level) for level in encoding["levels"]]})
            elif kind == "numeric":
                mean, sd = float(encoding["mean"]), float(encoding["sd"])
                if not (np.isfinite(mean) and np.isfinite(sd) and sd > 0):
                    raise ValueError(f"covariate encoding: column {encoding['column']!r}: mean and sd must be finite, sd > 0")
                encodings.append({"column": str(encoding["column"]), "kind": kind, "mean": mean, "sd": sd})
            else:
                raise ValueError(f"covariate encoding: unknown kind {kind!r}")
        encoder = cls([encoding["column"] for encoding in encodings])
        encoder._set(encodings)
        if "design_columns" in data and list(data["design_columns"]) != list(encoder.design_columns_):
            raise ValueError("covariate encoding: design_columns disagree with the encodings")
        return encoder

    def _check_fitted(self):
        if not hasattr(self, "encodings_"):
            raise NotFittedError("This CovariateEncoder is not fitted yet; call fit first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(columns={self.columns!r})"


def _check_column_names(columns) -> list[str]:
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a list of column names, got {type(columns).__name__}")
    names = list(columns)
    if not names:
        raise ValueError("columns: give at least one column to encode")
    if len(set(names)) != len(names):
        raise ValueError(f"columns: {names} names a column twice")
    return names


def _check_frame(frame, columns):
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"covariates must be read from a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"covariates: missing column(s) {', '.join(repr(column) for column in missing)}")


def _check_no_missing(series, column):
    missing = int(series.isna().sum())
    if missing:
        raise ValueError(f"covariates: column '{column}': {rows(missing)} missing (NaN/None); fill or drop them first")


def _is_categorical(series) -> bool:
    dtype = series.dtype
    return bool(
        pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
    )


def _as_text(series) -> pd.Series:
    return series.astype(object).map(str)


def design_matrix(features, covariates) -> np.ndarray:
    """The named design columns of a features table as a float64 (rows x covariates) array.

    Raises
    ------
    ValueError
        If a column is missing, not numeric, or holds NaN or an infinity; the message names it.
    """
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame, got {type(features).__name__}")
    missing = [column for column in covariates if column not in features.columns]
    if missing:
        raise ValueError(
            f"features: missing covariate column(s) {', '.join(repr(column) for column in missing)} "
            "(encode the attributes with CovariateEncoder and join its design columns)"
        )
    matrix = np.empty((len(features), len(covariates)))
    for position, column in enumerate(covariates):
        series = features[column]
        if not (pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)):
            raise ValueError(
                f"features: covariate column '{column}' is not numeric (dtype {series.dtype}); "
                "encode it with CovariateEncoder"
            )
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(f"features: covariate column '{column}': {rows(bad)} NaN or infinite")
        matrix[:, position] = values
    return matrix


def check_covariates(covariates) -> tuple[str, ...]:
    """An estimator's ``covariates`` setting as a tuple of design column names (() for None)."""
    if covariates is None:
        return ()
    if isinstance(covariates, str) or not isinstance(covariates, Sequence):
        raise ValueError(f"covariates must be a list of design column names or None, got {covariates!r}")
    names = tuple(covariates)
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise ValueError(f"covariates must be column names (strings), got {bad}")
    if len(set(names)) != len(names):
        raise ValueError(f"covariates: {list(names)} names a column twice")
    reserved = {"frequency", "recency", "T", "monetary_value"} & set(names)
    if reserved:
        raise ValueError(f"covariates: {sorted(reserved)} are the models' own columns, not covariates")
    return names


class LikelihoodRatioTest(NamedTuple):
    """A likelihood-ratio test of nested fits: ``statistic`` = 2 (LL_full - LL_plain), chi-squared
    with ``df`` degrees of freedom under the plain model, and its upper-tail ``p_value``."""

    statistic: float
    df: int
    p_value: float


def likelihood_ratio_test(plain, full) -> LikelihoodRatioTest:
    """Whether a fit with covariates explains the customers better than the plain fit.

    Parameters
    ----------
    plain : fitted estimator
        The model without covariates (or with a subset of ``full``'s).
    full : fitted estimator
        The same model class with covariates, fitted on the same customers.

    Returns
    -------
    LikelihoodRatioTest
        ``statistic`` 2 (LL_full - LL_plain) (0 when rounding makes it slightly negative),
        ``df`` the number of added coefficients, ``p_value`` from scipy.stats.chi2. Wilks'
        theorem: valid for unpenalized maximum-likelihood fits on many customers.

    Raises
    ------
    ValueError
        If the models differ in class or customers, ``full`` has no more coefficients than
        ``plain``, or ``full``'s log-likelihood is clearly below ``plain``'s (its optimiser
        stopped short: refit before testing).
    """
    for label, model in (("plain", plain), ("full", full)):
        if not hasattr(model, "log_likelihood_"):
            raise NotFittedError(f"likelihood_ratio_test: the {label} model is not fitted")
    if type(plain) is not type(full):
        raise ValueError(f"likelihood_ratio_test: models of different kinds ({type(plain).__name__}, "
                         f"{type(full).__name__})")
    if plain.n_customers_ != full.n_customers_:
        raise ValueError(f"likelihood_ratio_test: fitted on different customers ({plain.n_customers_} and "
                         f"{full.n_customers_})")
    plain_covariates, full_covariates = (set(check_covariates(model.covariates)) for model in (plain, full))
    if not plain_covariates < full_covariates:
        raise ValueError("likelihood_ratio_test: the full model's covariates must include the plain model's and more")
    df = _n_parameters(full) - _n_parameters(plain)
    difference = float(full.log_likelihood_) - float(plain.log_likelihood_)
    # Optimisers stop within about 1e-9 per customer of a maximum; beyond that a smaller
    # likelihood for the larger model means it was not maximised.
    if difference < -max(1e-6, 1e-9 * abs(float(plain.log_likelihood_))):
        raise ValueError(
            f"likelihood_ratio_test: the model with covariates has the lower log-likelihood "
            f"({full.log_likelihood_:.6g} < {plain.log_likelihood_:.6g}); its fit did not reach the maximum"
        )
    statistic = max(2.0 * difference, 0.0)
    return LikelihoodRatioTest(statistic, int(df), float(chi2.sf(statistic, df)))


def _n_parameters(model) -> int:
    coefficients = getattr(model, "coefficients_", None)
    return len(model.params_) + (0 if coefficients is None else len(coefficients))


def check_covariate_row(design, covariates) -> np.ndarray:
    """One design row or a table of them (``expected_purchases_new_customer``'s argument)."""
    if isinstance(design, pd.DataFrame):
        return design_matrix(design, covariates)
    if isinstance(design, pd.Series):
        return design_matrix(design.to_frame().T.infer_objects(), covariates)
    if isinstance(design, Mapping):
        missing = [name for name in covariates if name not in design]
        if missing:
            raise ValueError(f"covariates: missing value(s) for {missing}")
        values = [design[name] for name in covariates]
        bad = [name for name, value in zip(covariates, values)
               if not isinstance(value, numbers.Real) or not math.isfinite(float(value))]
        if bad:
            raise ValueError(f"covariates: {bad} must be finite numbers")
        return np.array([values], dtype=np.float64)
    raise TypeError(f"covariates must be a dict, Series or DataFrame of design columns, got {type(design).__name__}")
