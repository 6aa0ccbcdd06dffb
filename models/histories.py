"""Customers grouped by purchase history, once, by whoever holds the features.

The purchase models depend on a customer only through the history ``(frequency, recency,
T)``, and many customers share one (18M customers have about a million distinct histories),
so every fit and prediction works on the distinct histories and joins back. Grouping costs
about 2 s at 18M customers; a caller that fits and predicts on the same customers several
times groups them once with :func:`group_histories` and passes the result wherever a
features table is accepted. The grouping lives as long as the caller keeps it: there is no
cache in the models.

A fit needs only the distinct histories and their counts. An engine that groups on a
cluster (Spark) sends the driver just that, and :meth:`CustomerHistories.from_counts` holds
it without any per-customer positions: enough to fit, not to return values per customer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._validation import PURCHASE_COLUMNS, check_features, group_rows, rows

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
    ``probability_of_purchases``) and :mod:`models.discounting`'s functions take it wherever
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
        The distinct histories (float64, ``RangeIndex``), a new frame over read-only columns
        at each access.
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

    __slots__ = ("_columns", "_counts", "_index", "_inverse")
    # None when built by from_counts: no customer's position is known.
    _inverse: np.ndarray | None
    _index: pd.Index | None

    def __init__(self, unique, inverse, index=None):
        columns = check_features(unique, HISTORY_COLUMNS)
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

    @classmethod
    def from_counts(cls, unique, counts) -> CustomerHistories:
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
        counts = _check_counts(counts, len(unique))
        distinct, _ = group_rows([columns[name] for name in HISTORY_COLUMNS])
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
        return histories

    @property
    def unique(self) -> pd.DataFrame:
        return pd.DataFrame(dict(zip(HISTORY_COLUMNS, self._columns)), copy=False)

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
        return f"{type(self).__name__}(customers={len(self)}, unique={len(self._counts)})"


def group_histories(features) -> CustomerHistories:
    """Group the customers of a features table into their distinct histories, checking them once.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per customer with columns ``frequency`` (repeat purchases), ``recency`` (age
        at the last repeat purchase) and ``T`` (age at the end of the period); other columns
        are ignored.

    Returns
    -------
    CustomerHistories
        Distinct histories in the order of their first customer, each customer's position
        among them, and ``features.index``.

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
    unique, inverse = group_rows([columns[name] for name in HISTORY_COLUMNS])
    return CustomerHistories(pd.DataFrame(dict(zip(HISTORY_COLUMNS, unique)), copy=False), inverse, features.index)


def as_histories(features) -> CustomerHistories:
    """``features`` grouped by :func:`group_histories`, or as they are when already grouped."""
    if isinstance(features, CustomerHistories):
        return features
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame or CustomerHistories, got {type(features).__name__}")
    return group_histories(features)


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
