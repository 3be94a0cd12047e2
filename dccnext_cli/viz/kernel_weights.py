"""Figure 4: how much each kernel slot k = 0..K-1 of a DCConv weighs, |W[k, :]| averaged over channels.

Slot 0 multiplies the centre and slot k its k-th nearest token, so a trained model that uses
nearness shows a falling curve. A checkpoint trained at a size where a stage has N < K tokens only
ever used the first K' = N slots: the others kept their initial values and are marked "untrained".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..models.dccnext import DCCNeXt
from ..models.dcconv import effective_cluster_size
from .model_source import ModelSource, block_stage, dcconv_blocks, stage_grid

__all__ = ["BlockKernel", "kernel_weights", "kernel_figure", "kernel_csv"]


@dataclass
class BlockKernel:
    """Mean |W| per slot of one DCConv, and how many slots its training could have reached."""

    block: int
    stage: int
    param: str  # state-dict name of the weight, e.g. stages.2.blocks.0.token_mixer.spatial.weight
    values: np.ndarray  # (K,) float64
    trained_slots: int | None  # K' at the training size, None when unknown

    @property
    def cluster_size(self) -> int:
        return len(self.values)

    def trained(self, slot: int) -> bool | None:
        return None if self.trained_slots is None else slot < self.trained_slots

    def to_dict(self) -> dict:
        return {
            "block": self.block,
            "stage": self.stage,
            "param": self.param,
            "cluster_size": self.cluster_size,
            "trained_slots": self.trained_slots,
            "mean_abs_weight": [float(v) for v in self.values],
        }


def kernel_weights(source: ModelSource, blocks: list[int]) -> list[BlockKernel]:
    """|W| averaged over channels, per slot, for each chosen DCC block (float64, from the model's tensors)."""
    model: DCCNeXt = source.model
    layers = dcconv_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    result = []
    for b in blocks:
        layer = layers[b]
        stage = block_stage(model, b)
        trained = None
        if source.train_size is not None:
            rows, cols = stage_grid(model, stage, source.train_size)
            trained = effective_cluster_size(layer.cluster_size, rows * cols)
        values = layer.weight.detach().double().abs().mean(dim=1).cpu().numpy()
        result.append(BlockKernel(b, stage, f"{names[id(layer)]}.weight", values, trained))
    return result


def kernel_csv(kernels: list[BlockKernel]) -> str:
    """One row per (block, slot): block,stage,slot,mean_abs_weight,trained (true/false/unknown)."""
    lines = ["block,stage,slot,mean_abs_weight,trained"]
    for kern in kernels:
        for k, v in enumerate(kern.values):
            t = kern.trained(k)
            lines.append(f"{kern.block},{kern.stage},{k},{v:.9g},{'unknown' if t is None else str(t).lower()}")
    return "\n".join(lines) + "\n"


def _subtitle(source: ModelSource) -> str:
    if source.random_weights:
        return "fresh model: random initial weights (no checkpoint), so no slot has been trained"
    if source.train_size is None:
        return "training size unknown (checkpoint has no input_size): untrained slots cannot be marked"
    h, w = source.train_size
    return f"trained at {h}×{w}: hatched slots (k ≥ K', the stage's token count) were never used in training"


def _colors(kernels: list[BlockKernel]) -> list:
    """Blues for stage 3, oranges for stage 4, darker for later blocks: stages stay apart at a glance."""
    maps = {3: colormaps["Blues"], 4: colormaps["Oranges"]}
    colors = []
    for kern in kernels:
        same = [k.block for k in kernels if k.stage == kern.stage]
        shade = 0.55 + 0.4 * (same.index(kern.block) / max(len(same) - 1, 1)) if len(same) > 1 else 0.75
        colors.append(maps.get(kern.stage, colormaps["Greys"])(shade))
    return colors


def kernel_figure(source: ModelSource, kernels: list[BlockKernel]) -> Figure:
    """A heat map (block x slot) and one curve per block: slot index on x, mean |W| on y."""
    k_max = max(kern.cluster_size for kern in kernels)
    grid = np.full((len(kernels), k_max), np.nan)
    for i, kern in enumerate(kernels):
        grid[i, : kern.cluster_size] = kern.values
    fig = Figure(figsize=(12 + 1.6 * (len(kernels) > 4), 3.2 + 0.28 * len(kernels)), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.15)
    heat_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.15, 1])

    image = heat_ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest",
                           cmap=colormaps["viridis"].with_extremes(bad="white"))
    fig.colorbar(image, ax=heat_ax, label="mean |W| over channels", shrink=0.9)
    heat_ax.set_yticks(range(len(kernels)), [f"block {k.block} (stage {k.stage})" for k in kernels], fontsize=8)
    heat_ax.set_xticks(range(k_max))
    heat_ax.tick_params(axis="x", labelsize=7)
    heat_ax.set_xlabel("slot k (0 = centre, then nearer to farther)")
    heat_ax.set_title("mean |W| per slot, one row per block", fontsize=10)

    untrained_any = False
    for i, (kern, color) in enumerate(zip(kernels, _colors(kernels), strict=True)):
        values, slots = kern.values, np.arange(kern.cluster_size)
        line = curve_ax.plot(slots, values, marker="o", markersize=3.5, linewidth=1.4, color=color,
                             label=f"block {kern.block} (stage {kern.stage}, K={kern.cluster_size})")[0]
        if kern.trained_slots is not None and kern.trained_slots < kern.cluster_size:
            untrained_any = True
            t = kern.trained_slots
            heat_ax.add_patch(Rectangle((t - 0.5, i - 0.5), kern.cluster_size - t, 1, fill=False, hatch="///",
                                        edgecolor="0.85", linewidth=0, gid="untrained"))
            curve_ax.plot(slots[t:], values[t:], linestyle="none", marker="o", markersize=6,
                          markerfacecolor="white", markeredgecolor=line.get_color(), zorder=3)
    curve_ax.set_xlabel("slot k (0 = centre, then nearer to farther)")
    curve_ax.set_ylabel("mean |W| over channels")
    curve_ax.set_title("one curve per block", fontsize=10)
    curve_ax.grid(alpha=0.3)
    curve_ax.set_xticks(range(k_max))
    curve_ax.tick_params(axis="x", labelsize=7)
    handles, labels = curve_ax.get_legend_handles_labels()
    if untrained_any:
        handles.append(Patch(facecolor="white", edgecolor="0.4", hatch="///"))
        labels.append("never trained (hollow / hatched)")
    if len(kernels) > 4:  # a long legend goes beside the curves, not over them
        curve_ax.legend(handles, labels, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    else:
        curve_ax.legend(handles, labels, fontsize=7.5, loc="best", frameon=False)
    fig.suptitle(f"{source.label}: DCConv kernel weight per slot (paper Fig. 4)\n{_subtitle(source)}", fontsize=10)
    return fig
