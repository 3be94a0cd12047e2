"""The DCCNeXt model core: the DCConv operator, the network, its config and weights loading."""

from .config import PAPER_TABLE1, VARIANT_DROP_PATH, VARIANTS, DCCNeXtConfig, variant_config
from .dccnext import DCCNeXt, create_dccnext
from .dcconv import DCConv, cluster_conv, cluster_conv_reference, cluster_indices
from .flops import count_variant  # also registers DCConv's FLOP formulas with torch's FlopCounterMode
from .pretrained import WarmStartReport, convformer_to_dccnext, warm_start_from_convformer

__all__ = [
    "DCConv",
    "cluster_indices",
    "cluster_conv",
    "cluster_conv_reference",
    "DCCNeXt",
    "DCCNeXtConfig",
    "VARIANTS",
    "VARIANT_DROP_PATH",
    "PAPER_TABLE1",
    "variant_config",
    "create_dccnext",
    "count_variant",
    "WarmStartReport",
    "convformer_to_dccnext",
    "warm_start_from_convformer",
]
