"""Pure statistics for customer lifetime value: estimators in, numbers out.

Nothing here reads files, opens network connections or logs runs; the
pipeline does that around these estimators.
"""

from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError
from .histories import CustomerHistories, group_histories
from .purchase import PURCHASE_MODELS, BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel
from .spend import GammaGammaModel, SpendStatistics, spend_statistics

__all__ = [
    "PURCHASE_MODELS",
    "RELATIVE_GRADIENT_WARNING",
    "BetaGeoModel",
    "ConvergenceError",
    "CustomerHistories",
    "GammaGammaModel",
    "ModifiedBetaGeoModel",
    "ParetoNBDModel",
    "SpendStatistics",
    "group_histories",
    "spend_statistics",
]
