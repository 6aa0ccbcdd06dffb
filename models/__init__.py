"""Pure statistics for customer lifetime value: estimators in, numbers out.

Nothing here reads files, opens network connections or logs runs; the
pipeline does that around these estimators.
"""

from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError
from .covariates import CovariateEncoder, LikelihoodRatioTest, likelihood_ratio_test
from .historical import (
    CompanyHistoricalCLV,
    HistoricalCLV,
    HistoricalTotals,
    historical_clv,
    historical_clv_from_totals,
    historical_totals,
)
from .histories import CustomerHistories, group_histories
from .purchase import PURCHASE_MODELS, BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel
from .spend import GammaGammaModel, SpendStatistics, spend_statistics

__all__ = [
    "PURCHASE_MODELS",
    "RELATIVE_GRADIENT_WARNING",
    "BetaGeoModel",
    "CompanyHistoricalCLV",
    "ConvergenceError",
    "CovariateEncoder",
    "CustomerHistories",
    "GammaGammaModel",
    "HistoricalCLV",
    "HistoricalTotals",
    "LikelihoodRatioTest",
    "ModifiedBetaGeoModel",
    "ParetoNBDModel",
    "SpendStatistics",
    "group_histories",
    "historical_clv",
    "historical_clv_from_totals",
    "historical_totals",
    "likelihood_ratio_test",
    "spend_statistics",
]
