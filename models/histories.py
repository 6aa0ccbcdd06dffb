"""Customers grouped by purchase history, once, by whoever holds the features.

The purchase models depend on a customer only through the history ``(frequency, recency,
T)``, and many customers share one (18M customers have about a million distinct histories),
so every fit and prediction works on the distinct histories and joins back. Grouping costs
about 2 s at 18M customers; a caller that fits and predicts on the same customers several
times groups them once with :func:`group_histories` and passes the result wherever a
features table is accepted. The grouping lives as long as the caller keeps it: there is no
cache in the models.

With static covariates (:mod:`models.covariates`) a customer is a history and a design row
(their encoded attributes): :func:`group_histories` with ``covariates`` groups on both, and
``unique`` then holds the design columns beside the history. A few channels multiply the
distinct rows by a few; a numeric covariate can make nearly every customer distinct.

A fit needs only the distinct histories and their counts. An engine that groups on a
cluster (Spark) sends the driver just that, and :meth:`CustomerHistories.from_counts` holds
it without any per-customer positions: enough to fit, not to return values per customer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._validation import PURCHASE_COLUMNS, check_features, group_rows, rows
from .covariates import check_covariates, design_matrix

HISTORY_COLUMNS = PURCHASE_COLUMNS

_NO_POSITIONS = (
    "these CustomerHistories were built by CustomerHistories.from_counts and hold no customer's "
    "position, so there is nothing to return per customer; predict on histories.unique instead "
    "(one value per distinct history) and join the values to the customers on frequency, recency and T"
)


class CustomerHistories:
    """The customers of a features table grouped into their distinct histories ``(frequency, recency, T)``.

    Build it with :func:`group_histories`, or with :meth:`from_counts` from distinct
    histories and their counts alone (fit only, see there); the purchase models (``fit``, ``expected_purchases``,
    ``expected_purchases_by_horizon``, ``probability_alive``, ``churn_probability``,
    ``probability_of_purchases``, ``discounted_expected_residual_purchases``) and
    :mod:`models.discounting`'s functions take it wherever
    they take a features table, with the same results: one value per customer, in the
    customers' order and with their :attr:`index`.

    Parameters
    ----------
    unique : pandas.DataFrame
        Columns ``frequency``, ``recency``, ``T``: one row per distinct history, checked as
        the models check features. Other columns and the index are ignored.
    inverse : array_like of int
        For each customer, the position of their history among the rows of ``unique``; every
        row must be some customer's. Held without a copy (it is 8 bytes a customer).
    index : pandas.Index, optional
        The customers, one per entry of ``inverse``; default ``RangeIndex(len(inverse))``.
    covariates : sequence of str, optional
        Design columns of ``unique`` that are part of each row (numeric, finite); the models
        with these covariates read each row's design from here.

    Raises
    ------
    TypeError
        If ``unique`` is not a DataFrame or ``inverse`` not an array of integers.
    ValueError
        If a history is invalid (see the models' feature checks), an entry of ``inverse``
        names no row of ``unique``, a row of ``unique`` belongs to no customer, or ``index``
        does not have one entry per customer.

    Attributes
    ----------
    unique : pandas.DataFrame
        The distinct histories (float64, ``RangeIndex``), with the design columns after
        ``frequency``, ``recency`` and ``T`` when grouped with covariates; a new frame over
        read-only columns at each access.
    covariates : tuple of str
        The design columns held (empty without covariates).
    inverse : numpy.ndarray
        Read-only; each customer's row in ``unique``. A ValueError when built by
        :meth:`from_counts`, which knows no customers' positions.
    counts : numpy.ndarray
        Read-only; customers per row of ``unique``.
    index : pandas.Index
        The customers. Series the models return for these histories are indexed by it: the
        features' index when built by :func:`group_histories` (a ``RangeIndex`` for the
        pipeline's positional frames). A ValueError when built by :meth:`from_counts`.
    """

    __slots__ = ("_columns", "_counts", "_covariates", "_design", "_index", "_inverse")
    # None when built by from_counts: no customer's position is known.
    _inverse: np.ndarray | None
    _index: pd.Index | None

    def __init__(self, unique, inverse, index=None, covariates=None):
        columns = check_features(unique, HISTORY_COLUMNS)
        covariates = check_covariates(covariates)
        design = design_matrix(unique, covariates)
        inverse = np.asarray(inverse)
        if inverse.ndim != 1 or not np.issubdtype(inverse.dtype, np.integer):
            raise TypeError(f"inverse must be a 1-d array of integers, got {inverse.dtype} with {inverse.ndim} dimension(s)")
        n_unique = len(unique)
        if len(inverse) and (inverse.min() < 0 or inverse.max() >= n_unique):
            raise ValueError(f"inverse: positions must lie in [0, {n_unique}), the rows of unique")
        counts = np.bincount(inverse, minlength=n_unique)
        unused = int(np.count_nonzero(counts == 0))
        if unused:
            raise ValueError(f"unique: {unused} of {n_unique} rows are no customer's history")
        index = pd.RangeIndex(len(inverse)) if index is None else pd.Index(index)
        if len(index) != len(inverse):
            raise ValueError(f"index has {len(index)} entries for {len(inverse)} customers")
        # Own read-only copies of the (few) distinct rows, and a read-only view of the
        # per-customer positions: nothing the caller does later can change a grouping.
        self._columns = tuple(_read_only(np.array(columns[name], dtype=np.float64)) for name in HISTORY_COLUMNS)
        self._inverse = _read_only(inverse.view())
        self._counts = _read_only(counts)
        self._index = index
        self._covariates = covariates
        self._design = _read_only(design)

    @classmethod
    def from_counts(cls, unique, counts, covariates=None) -> CustomerHistories:
        """Distinct histories and the number of customers with each, without the customers.

        What a cluster sends after grouping its customers by ``(frequency, recency, T)``
        and counting them: the purchase models' ``fit`` takes it and, when ``unique`` is
        in the order of first appearance among the customers (as :func:`group_histories`
        orders it), gives bit for bit the parameters, log-likelihood and standard errors of
        a fit on the per-customer table; another order changes the rounding of the
        likelihood's sums, and so the fit's last digits. Nothing here knows which customer has which history, so
        :attr:`inverse`, :attr:`index` and the per-customer predictions raise a ValueError:
        predict on ``histories.unique`` instead (one value per distinct history) and join
        on the history columns where the customers are.

        Parameters
        ----------
        unique : pandas.DataFrame
            Columns ``frequency``, ``recency``, ``T``: one row per distinct history,
            checked as the models check features, no two rows alike. Other columns and
            the index are ignored.
        counts : array_like of int
            Customers with each history, one positive whole number per row of ``unique``.
        covariates : sequence of str, optional
            Design columns of ``unique`` that are part of each row (then no two rows may be
            alike in history and design together).

        Returns
        -------
        CustomerHistories

        Raises
        ------
        TypeError
            If ``unique`` is not a DataFrame or ``counts`` not numeric.
        ValueError
            If a history is invalid, two rows of ``unique`` are alike, or ``counts`` is
            not one positive whole number per row; the message names the argument.
        """
        columns = check_features(unique, HISTORY_COLUMNS)
        covariates = check_covariates(covariates)
        design = design_matrix(unique, covariates)
        counts = _check_counts(counts, len(unique))
        distinct, _ = group_rows([*design.T, *(columns[name] for name in HISTORY_COLUMNS)])
        repeated = len(unique) - (len(distinct[0]) if len(unique) else 0)
        if repeated:
            # The fit would be right, but n_unique_rows_ and every per-row prediction would
            # count a history twice: the caller's group-by has gone wrong somewhere.
            raise ValueError(
                f"unique: {rows(repeated)} with a history an earlier row already has; group them and add their counts"
            )
        histories = cls.__new__(cls)
        histories._columns = tuple(_read_only(np.array(columns[name], dtype=np.float64)) for name in HISTORY_COLUMNS)
        histories._inverse = None
        histories._counts = _read_only(counts)
        histories._index = None
        histories._covariates = covariates
        histories._design = _read_only(design)
        return histories

    @property
    def unique(self) -> pd.DataFrame:
        columns = dict(zip(HISTORY_COLUMNS, self._columns))
        columns.update(zip(self._covariates, self._design.T))
        return pd.DataFrame(columns, copy=False)

    @property
    def covariates(self) -> tuple[str, ...]:
        return self._covariates

    def unique_design(self, covariates) -> np.ndarray:
        """The distinct rows' values of the design columns ``covariates`` (rows x covariates).

        Raises
        ------
        ValueError
            If a column is not among those these histories were grouped with.
        """
        missing = [name for name in covariates if name not in self._covariates]
        if missing:
            raise ValueError(
                f"these CustomerHistories were grouped without the covariate column(s) {missing}; "
                "group the features with group_histories(features, covariates=...) naming them"
            )
        positions = [self._covariates.index(name) for name in covariates]
        return self._design[:, positions]

    @property
    def inverse(self) -> np.ndarray:
        if self._inverse is None:
            raise ValueError(_NO_POSITIONS)
        return self._inverse

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def index(self) -> pd.Index:
        if self._index is None:
            raise ValueError(_NO_POSITIONS)
        return self._index

    def unique_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct histories' ``frequency``, ``recency`` and ``T`` as read-only float64 arrays."""
        return self._columns

    def __len__(self) -> int:
        """The number of customers."""
        return len(self._inverse) if self._inverse is not None else int(self._counts.sum())

    def __repr__(self) -> str:
        covariates = f", covariates={list(self._covariates)}" if self._covariates else ""
        return f"{type(self).__name__}(customers={len(self)}, unique={len(self._counts)}{covariates})"


def group_histories(features, covariates=None) -> CustomerHistories:
    """Group the customers of a features table into their distinct histories, checking them once.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per customer with columns ``frequency`` (repeat purchases), ``recency`` (age
        at the last repeat purchase) and ``T`` (age at the end of the period); other columns
        are ignored, but the design columns named in ``covariates``.
    covariates : sequence of str, optional
        Design columns (:class:`~models.covariates.CovariateEncoder`) to group on with the
        history, for models fitted with covariates.

    Returns
    -------
    CustomerHistories
        Distinct rows (history and design) in the order of their first customer, each
        customer's position among them, and ``features.index``.

    Raises
    ------
    TypeError
        If ``features`` is not a DataFrame.
    ValueError
        If a column is missing or holds a value no history can have (NaN, negative, a
        fractional frequency, recency above ``T``, ...); the message names the column and
        the number of rows.
    """
    columns = check_features(features, HISTORY_COLUMNS)
    covariates = check_covariates(covariates)
    if not covariates:
        unique, inverse = group_rows([columns[name] for name in HISTORY_COLUMNS])
        return CustomerHistories(pd.DataFrame(dict(zip(HISTORY_COLUMNS, unique)), copy=False), inverse, features.index)
    design = design_matrix(features, covariates)
    grouped, inverse = group_rows([*(columns[name] for name in HISTORY_COLUMNS), *design.T])
    unique = pd.DataFrame(dict(zip([*HISTORY_COLUMNS, *covariates], grouped)), copy=False)
    return CustomerHistories(unique, inverse, features.index, covariates=covariates)


def as_histories(features, covariates=()) -> CustomerHistories:
    """``features`` grouped by :func:`group_histories` (with ``covariates``), or as they are when
    already grouped (checked to hold ``covariates``)."""
    if isinstance(features, CustomerHistories):
        if covariates:
            features.unique_design(covariates)  # refuses histories grouped without them
        return features
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame or CustomerHistories, got {type(features).__name__}")
    return group_histories(features, covariates)


def _check_counts(counts, n_rows: int) -> np.ndarray:
    """``counts`` as int64, one positive whole number per row; the messages name ``counts``."""
    values = np.asarray(counts)
    if values.dtype == object:  # pandas' nullable integers arrive as objects
        values = pd.to_numeric(pd.Series(values.ravel())).to_numpy(dtype=np.float64, na_value=np.nan)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"counts must be an array of whole numbers, got {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"counts must be 1-d, one number per row of unique; got {values.ndim} dimension(s)")
    if len(values) != n_rows:
        raise ValueError(f"counts has {len(values)} entries for {n_rows} rows of unique")
    if not np.issubdtype(values.dtype, np.integer):
        fractional = int(np.count_nonzero(~np.isfinite(values) | (values != np.floor(values))))
        if fractional:
            raise ValueError(f"counts: {rows(fractional)} not a whole number")
    not_positive = int(np.count_nonzero(values < 1))
    if not_positive:
        raise ValueError(f"counts: {rows(not_positive)} below 1 (each row must be some customer's history)")
    # int64 like np.bincount's counts from group_histories, so that a fit sums the same numbers.
    return values.astype(np.int64)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
