"""The DCCNeXt model core: the DCConv operator, the network, its config and weights loading.

Names load on first use (`common.lazy`): `from dccnext_cli.models.config import VARIANTS` imports no torch.
"""

from ..common.lazy import lazy_exports

EXPORTS = {
    ".config": ("PAPER_TABLE1", "VARIANT_DROP_PATH", "VARIANTS", "DCCNeXtConfig", "variant_config"),
    ".dccnext": ("DCCNeXt", "create_dccnext"),
    ".dcconv": ("DCConv", "cluster_conv", "cluster_conv_reference", "cluster_indices"),
    ".inference": ("optimize_for_inference",),
    ".pretrained": ("WarmStartReport", "convformer_to_dccnext", "warm_start_from_convformer"),
    ".flops": ("count_variant",),
}
__all__ = [name for names in EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
