"""dccnext: DCCNeXt, the Dynamic Clustering Convolutional Neural Network (Li et al., AAAI 2025).

Importing this package registers `dccnext_b0` ... `dccnext_b4` with timm.
"""

from ._version import __version__
from .errors import CheckpointError, ConfigError, DataError, DCCNeXtError, ImageError
from .models import (
    PAPER_TABLE1,
    VARIANTS,
    DCCNeXt,
    DCCNeXtConfig,
    DCConv,
    WarmStartReport,
    cluster_conv,
    cluster_conv_reference,
    cluster_indices,
    convformer_to_dccnext,
    create_dccnext,
    variant_config,
    warm_start_from_convformer,
)
from .models.settings import OperatorSettings, operator_settings, set_operator_settings, use_operator_settings

__all__ = [
    "__version__",
    "DCConv",
    "cluster_indices",
    "cluster_conv",
    "cluster_conv_reference",
    "DCCNeXt",
    "DCCNeXtConfig",
    "VARIANTS",
    "PAPER_TABLE1",
    "variant_config",
    "create_dccnext",
    "convformer_to_dccnext",
    "warm_start_from_convformer",
    "WarmStartReport",
    "OperatorSettings",
    "operator_settings",
    "set_operator_settings",
    "use_operator_settings",
    "DCCNeXtError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "ImageError",
]
