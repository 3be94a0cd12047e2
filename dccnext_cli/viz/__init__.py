"""The paper's figures: Figure 3 (the clusters a DCConv computed) and Figure 4 (its kernel weights per slot).

    from dccnext_cli.viz import load_model, parse_blocks, compute_clusters, resolve_centers, clusters_figure
    source = load_model("model.safetensors")            # or load_model(variant="b2"): random weights
    result = compute_clusters(source.model, "cat.jpg", (224, 224), parse_blocks(None, source.model))
    resolve_centers(result.blocks, "auto", [], count=3)
    clusters_figure([result], source.label, source.random_weights).savefig("clusters.png")

Names load on first use (`common.lazy`), so the commands' help imports neither torch nor matplotlib.
"""

from ..common.lazy import lazy_exports

EXPORTS = {
    ".clusters": ("BlockClusters", "ImageClusters", "choose_centers", "compute_clusters", "resolve_centers"),
    ".clusters_plot": ("clusters_figure", "drawn_cells"),
    ".figure": ("save_figure",),
    ".kernel_weights": ("BlockKernel", "kernel_csv", "kernel_figure", "kernel_weights"),
    ".model_source": ("ModelSource", "default_blocks", "load_model", "parse_blocks"),
}
__all__ = [name for names in EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
