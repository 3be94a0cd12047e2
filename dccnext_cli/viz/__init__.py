"""The paper's figures: Figure 3 (the clusters a DCConv computed) and Figure 4 (its kernel weights per slot).

    from dccnext_cli.viz import load_model, parse_blocks, compute_clusters, resolve_centers, clusters_figure
    source = load_model("model.safetensors")            # or load_model(variant="b2"): random weights
    result = compute_clusters(source.model, "cat.jpg", (224, 224), parse_blocks(None, source.model))
    resolve_centers(result.blocks, "auto", [], count=3)
    clusters_figure([result], source.label, source.random_weights).savefig("clusters.png")
"""

from .clusters import BlockClusters, ImageClusters, choose_centers, compute_clusters, resolve_centers
from .clusters_plot import clusters_figure, drawn_cells
from .figure import save_figure
from .kernel_weights import BlockKernel, kernel_csv, kernel_figure, kernel_weights
from .model_source import ModelSource, default_blocks, load_model, parse_blocks

__all__ = [
    "BlockClusters",
    "BlockKernel",
    "ImageClusters",
    "ModelSource",
    "choose_centers",
    "clusters_figure",
    "compute_clusters",
    "default_blocks",
    "drawn_cells",
    "kernel_csv",
    "kernel_figure",
    "kernel_weights",
    "load_model",
    "parse_blocks",
    "resolve_centers",
    "save_figure",
]
