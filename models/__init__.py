"""Pure statistics for customer lifetime value: estimators in, numbers out.

Nothing here reads files, opens network connections or logs runs; the
pipeline does that around these estimators.
"""

from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError
from ._validation import forget_groupings
from .purchase import PURCHASE_MODELS, BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel
from .spend import GammaGammaModel

__all__ = [
    "PURCHASE_MODELS",
    "RELATIVE_GRADIENT_WARNING",
    "BetaGeoModel",
    "ConvergenceError",
    "GammaGammaModel",
    "ModifiedBetaGeoModel",
    "ParetoNBDModel",
    "forget_groupings",
]
