"""Figure 3: each cluster drawn over the image the model saw, on the patch grid of its stage.

One panel per (image, block, centre): the image, the stage's token grid, the centre cell in red and
its K'-1 other members in orange, a title (block, stage, grid, K) and a legend. `--centers all`
draws one small multiple per cell instead. The cells are drawn as `Rectangle`s whose `gid` is
'center' or 'member', so that tests (and users) can read back exactly what was drawn.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch, Rectangle

from .clusters import BlockClusters, ImageClusters
from .figure import CENTER_COLOR, MEMBER_COLOR

__all__ = ["clusters_figure", "draw_cluster", "drawn_cells"]

PANEL_IN = 2.9  # inches per panel side in the regular layout
SMALL_FIGURE_WIDTH_IN = 8.0  # width of one block's small multiples with --centers all
HEADER_IN = 0.7  # height of the title band above the small multiples


def draw_cluster(ax: Axes, image, block: BlockClusters, center: tuple[int, int], small: bool = False) -> None:
    """The image, the stage's patch grid, the centre (red) and its other members (orange)."""
    height, width = image.shape[:2]
    rows, cols = block.grid
    cell_h, cell_w = height / rows, width / cols
    ax.imshow(image, extent=(0, width, height, 0), interpolation="antialiased")
    grid_style = dict(colors="white", linewidths=0.3 if small else 0.5, alpha=0.45)
    ax.vlines([c * cell_w for c in range(1, cols)], 0, height, **grid_style)
    ax.hlines([r * cell_h for r in range(1, rows)], 0, width, **grid_style)
    members = block.members(center)
    for i, (r, c) in enumerate(members):
        color = CENTER_COLOR if i == 0 else MEMBER_COLOR
        ax.add_patch(Rectangle(
            (c * cell_w, r * cell_h), cell_w, cell_h, facecolor=color, alpha=0.6 if i == 0 else 0.5,
            edgecolor=color, linewidth=0.6 if small else 1.4, gid="center" if i == 0 else "member",
            zorder=3 if i == 0 else 2,
        ))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(not small)
        spine.set_linewidth(0.5)


def drawn_cells(ax: Axes, image_size: tuple[int, int], grid: tuple[int, int]) -> dict[str, list]:
    """Read back the cells drawn on a panel: {'center': [(r, c)], 'member': [(r, c), ...]} with colours."""
    cell_h, cell_w = image_size[0] / grid[0], image_size[1] / grid[1]
    cells: dict[str, list] = {"center": [], "member": []}
    for p in ax.patches:
        if isinstance(p, Rectangle) and p.get_gid() in cells:
            x, y = p.get_xy()
            cells[p.get_gid()].append((round(y / cell_h), round(x / cell_w), p.get_facecolor()))
    return cells


def _block_title(block: BlockClusters) -> str:
    k = f"K={block.cluster_size}"
    if block.effective_k < block.cluster_size:
        k += f" (only {block.effective_k} tokens)"
    return f"block {block.block} · stage {block.stage} · {block.grid[0]}×{block.grid[1]} grid · {k}"


def _legend(target, block: BlockClusters, small: bool) -> None:
    handles = [
        Patch(facecolor=CENTER_COLOR, alpha=0.6, edgecolor=CENTER_COLOR, label="centre"),
        Patch(facecolor=MEMBER_COLOR, alpha=0.5, edgecolor=MEMBER_COLOR,
              label=f"{block.effective_k - 1} other members"),
    ]
    if small:  # one legend under a block's small multiples
        target.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9)
    else:
        target.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2,
                      frameon=False, fontsize=7.5, handlelength=1.2, columnspacing=1.0)


def _input_note(result: ImageClusters) -> str:
    height, width = result.image.shape[:2]
    return f"input {height}×{width}: resized with aspect kept, centre crop"


def _regular(fig: Figure, results: list[ImageClusters]) -> None:
    rows = [(r, b) for r in results for b in r.blocks]
    ncols = max(len(b.centers) for _, b in rows)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for i, (result, block) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(block.centers):
                ax.set_axis_off()
                continue
            center = block.centers[j]
            draw_cluster(ax, result.image, block, center)
            ax.set_title(f"{_block_title(block)}\ncentre (row {center[0]}, col {center[1]})", fontsize=8)
            _legend(ax, block, small=False)
        axes[i][0].set_ylabel(result.path.name, fontsize=9)


def _small_multiples(fig: Figure, results: list[ImageClusters], title: str) -> None:
    rows = [(r, b) for r in results for b in r.blocks]
    ratios = [HEADER_IN / SMALL_FIGURE_WIDTH_IN] + [b.grid[0] / b.grid[1] + 0.12 for _, b in rows]
    subfigs = fig.subfigures(len(rows) + 1, 1, height_ratios=ratios, squeeze=False)[:, 0]
    subfigs[0].text(0.5, 0.5, title, ha="center", va="center", fontsize=10)
    for sub, (result, block) in zip(subfigs[1:], rows, strict=True):
        _draw_block_multiples(sub, result, block)


def _draw_block_multiples(sub: SubFigure, result: ImageClusters, block: BlockClusters) -> None:
    rows, cols = block.grid
    axes = sub.subplots(rows, cols, squeeze=False, gridspec_kw=dict(wspace=0.04, hspace=0.04))
    for center in block.centers:
        draw_cluster(axes[center[0]][center[1]], result.image, block, center, small=True)
    sub.suptitle(f"{result.path.name}: {_block_title(block)}; one panel per centre cell", fontsize=10)
    _legend(sub, block, small=True)
    sub.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.06)


def clusters_figure(results: list[ImageClusters], model_label: str, random_weights: bool) -> Figure:
    """All images and blocks in one figure: a row per (image, block), or small multiples for 'all'."""
    lines = [f"{model_label}: dynamic clusters", _input_note(results[0])]
    if random_weights:
        lines.append("untrained model: these clusters say little about a trained DCCNeXt")
    title = "\n".join(lines)
    all_cells = all(len(b.centers) == b.grid[0] * b.grid[1] > 1 for r in results for b in r.blocks)
    rows = sum(len(r.blocks) for r in results)
    if all_cells:
        height = sum(SMALL_FIGURE_WIDTH_IN * (b.grid[0] / b.grid[1] + 0.12) for r in results for b in r.blocks)
        fig = Figure(figsize=(SMALL_FIGURE_WIDTH_IN, height + HEADER_IN))
        _small_multiples(fig, results, title)
    else:
        ncols = max(len(b.centers) for r in results for b in r.blocks)
        aspect = results[0].image.shape[0] / results[0].image.shape[1]  # one --res for all images
        fig = Figure(figsize=(PANEL_IN * ncols + 0.4, (PANEL_IN * aspect + 0.8) * rows + 0.7), layout="constrained")
        fig.get_layout_engine().set(h_pad=0.12, w_pad=0.05)
        _regular(fig, results)
        fig.suptitle(title, fontsize=9.5)
    return fig
