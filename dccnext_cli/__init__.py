"""dccnext: DCCNeXt, the Dynamic Clustering Convolutional Neural Network (Li et al., AAAI 2025).

Importing this package registers `dccnext_b0` ... `dccnext_b4` with timm (at once if timm is loaded, else as
soon as it is), and the names below load on first use: `import dccnext_cli` and `dccnext --help` import no
torch.
"""

from typing import TYPE_CHECKING

from ._timm_registration import register_with_timm
from ._version import __version__
from .common.lazy import lazy_exports
from .errors import CheckpointError, ConfigError, DataError, DCCNeXtError, ImageError

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .models.config import PAPER_TABLE1, VARIANTS, DCCNeXtConfig, variant_config  # noqa: F401
    from .models.dccnext import DCCNeXt, create_dccnext  # noqa: F401
    from .models.dcconv import DCConv, cluster_conv, cluster_conv_reference, cluster_indices  # noqa: F401
    from .models.inference import optimize_for_inference  # noqa: F401
    from .models.pretrained import WarmStartReport, convformer_to_dccnext, warm_start_from_convformer  # noqa: F401
    from .models.settings import OperatorSettings, operator_settings, set_operator_settings, use_operator_settings  # noqa: F401

EXPORTS = {
    ".models.config": ("PAPER_TABLE1", "VARIANTS", "DCCNeXtConfig", "variant_config"),
    ".models.dccnext": ("DCCNeXt", "create_dccnext"),
    ".models.dcconv": ("DCConv", "cluster_conv", "cluster_conv_reference", "cluster_indices"),
    ".models.inference": ("optimize_for_inference",),
    ".models.pretrained": ("WarmStartReport", "convformer_to_dccnext", "warm_start_from_convformer"),
    ".models.settings": ("OperatorSettings", "operator_settings", "set_operator_settings", "use_operator_settings"),
}
__all__ = [
    "__version__", "DCCNeXtError", "ConfigError", "CheckpointError", "DataError", "ImageError",
    *(name for names in EXPORTS.values() for name in names),
]
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
register_with_timm()
