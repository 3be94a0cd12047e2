"""visualize-clusters: the cells drawn are exactly the clusters the model computed, on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image

from dccnext_cli.data.images import load_image_tensor
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.viz.clusters import choose_centers, compute_clusters, resolve_centers
from dccnext_cli.viz.clusters_plot import clusters_figure, drawn_cells
from dccnext_cli.viz.figure import CENTER_COLOR, MEMBER_COLOR
from dccnext_cli.viz.model_source import load_model, parse_blocks

RES = (96, 96)  # b0: stage 3 is 6x6, stage 4 is 3x3


def layer_indices(checkpoint, image, res, blocks):
    """The indices straight from the layers, in a forward pass of our own (not through the viz code)."""
    model, _ = DCCNeXt.from_checkpoint(checkpoint)
    model.eval()
    model.keep_cluster_indices(True)
    with torch.no_grad():
        model(load_image_tensor(image, res).unsqueeze(0))
    layers = dict(model.dcconv_layers())
    return {b: layers[b].last_indices[0].numpy() for b in blocks}


def test_default_blocks_are_the_papers():
    def model(variant):  # the meta device: structure without the cost of initialising weights
        return DCCNeXt(variant_config(variant), device="meta")

    assert parse_blocks(None, model("b2")) == [7, 16]
    assert parse_blocks(None, model("b0")) == [7, 12]
    assert parse_blocks("all-dcc", model("b0")) == list(range(7, 14))


def test_drawn_cells_are_the_computed_clusters(b0_checkpoint, photos):
    source = load_model(b0_checkpoint)
    blocks = [7, 10, 12]
    result = compute_clusters(source.model, photos["chelsea"], RES, blocks)
    resolve_centers(result.blocks, None, [(0, 0), (1, 2), (2, 1)], count=3)
    expected = layer_indices(b0_checkpoint, photos["chelsea"], RES, blocks)
    fig = clusters_figure([result], source.label, source.random_weights)
    axes = fig.axes
    assert len(axes) == len(blocks) * 3
    for i, block in enumerate(result.blocks):
        assert block.grid == ((6, 6) if block.stage == 3 else (3, 3))
        np.testing.assert_array_equal(block.indices, expected[block.block])
        for j, (r, c) in enumerate(block.centers):
            cells = drawn_cells(axes[i * 3 + j], RES, block.grid)
            want = [divmod(int(n), block.grid[1]) for n in expected[block.block][r * block.grid[1] + c]]
            assert [cell[:2] for cell in cells["center"]] == [(r, c)] == want[:1]
            assert sorted(cell[:2] for cell in cells["member"]) == sorted(want[1:])
            assert len(cells["member"]) == block.effective_k - 1
            assert all(to_rgb(cell[2]) == to_rgb(CENTER_COLOR) for cell in cells["center"])
            assert all(to_rgb(cell[2]) == to_rgb(MEMBER_COLOR) for cell in cells["member"])
            title = axes[i * 3 + j].get_title()
            assert f"block {block.block}" in title and f"stage {block.stage}" in title
            assert f"{block.grid[0]}×{block.grid[1]} grid" in title and f"K={block.cluster_size}" in title
            assert axes[i * 3 + j].get_legend() is not None


def test_json_indices_match_the_layer(run_cli, b0_checkpoint, photos, tmp_path):
    out = tmp_path / "clusters.png"
    images = [photos["astronaut"], photos["grace_hopper"]]
    result = run_cli("visualize-clusters", *images, "--checkpoint", b0_checkpoint, "--res", "96",
                     "--center", "1,2", "--center", "2,0", "--json", "-o", out)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["resolution"] == "96x96" and data["model"]["random_weights"] is False
    for image, entry in zip(images, data["images"], strict=True):
        expected = layer_indices(b0_checkpoint, image, RES, [7, 12])
        assert [b["block"] for b in entry["blocks"]] == [7, 12]
        for block in entry["blocks"]:
            indices = np.array(block["indices"])
            np.testing.assert_array_equal(indices, expected[block["block"]])
            cols = block["grid"][1]
            for cluster in block["clusters"]:
                r, c = cluster["center"]
                assert [divmod(int(n), cols) for n in indices[r * cols + c]] == [tuple(m) for m in cluster["members"]]
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 300


def test_asking_for_indices_changes_no_output(b0_checkpoint, photos):
    source = load_model(b0_checkpoint)
    result = compute_clusters(source.model, photos["coffee"], RES, [7, 12])
    model, _ = DCCNeXt.from_checkpoint(b0_checkpoint)
    model.eval()
    with torch.no_grad():
        plain = model(load_image_tensor(photos["coffee"], RES).unsqueeze(0))
    assert torch.equal(result.logits, plain)
    assert all(layer.last_indices is None and not layer.keep_indices for _, layer in source.model.dcconv_layers())


def test_all_photos_every_format(run_cli, b0_checkpoint, photos, tmp_path):
    for suffix, magic, images in (
        (".png", b"\x89PNG", list(photos.values())),
        (".svg", b"<?xml", [photos["coffee"]]),
        (".pdf", b"%PDF", [photos["grace_hopper"]]),
    ):
        out = tmp_path / f"fig{suffix}"
        result = run_cli("visualize-clusters", *images, "--checkpoint", b0_checkpoint, "-o", out,
                         "--num-centers", "1", "--dpi", "50")
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(magic)


def test_centers_all_draws_one_panel_per_cell(b0_checkpoint, photos):
    source = load_model(b0_checkpoint)
    result = compute_clusters(source.model, photos["astronaut"], (64, 64), [7, 12])
    resolve_centers(result.blocks, "all", [], count=3)
    fig = clusters_figure([result], source.label, source.random_weights)
    for sub, block in zip(fig.subfigs[1:], result.blocks, strict=True):
        rows, cols = block.grid
        assert len(sub.axes) == rows * cols == len(block.centers)
        for n, ax in enumerate(sub.axes):
            cells = drawn_cells(ax, (64, 64), block.grid)
            assert [cell[:2] for cell in cells["center"]] == [divmod(n, cols)]
            assert sorted(cell[:2] for cell in cells["member"]) == sorted(block.members(divmod(n, cols))[1:])


def test_auto_centers_are_salient_and_spread():
    saliency = np.zeros(36)
    saliency[[0, 7, 8, 14, 28]] = [100, 9, 8, 7, 6]  # cell 0 is on the border; 8 is next to 7
    centers = choose_centers(saliency, (6, 6), 3)
    assert centers[0] == (1, 1)  # the most salient interior cell
    assert (1, 2) not in centers and (2, 2) not in centers  # too close to (1, 1)
    assert (4, 4) in centers  # cell 28, far enough
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 2 for a in centers for b in centers if a != b)
    assert len(choose_centers(np.arange(4.0), (2, 2), 3)) == 3  # a tiny grid still gives 3 distinct cells


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_are_converted(run_cli, b0_checkpoint, photos, tmp_path, mode):
    path = tmp_path / f"photo_{mode}.png"
    with Image.open(photos["chelsea"]) as img:
        img.convert(mode).save(path)
    result = run_cli("visualize-clusters", path, "--checkpoint", b0_checkpoint, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"][0]["input_size"] == "64x64"


def test_rendered_pixels_show_centre_and_members(b0_checkpoint, photos):
    """Render a panel over a flat grey image and read the colour at every cell's middle in the PNG pixels."""
    source = load_model(b0_checkpoint)
    result = compute_clusters(source.model, photos["astronaut"], RES, [7])
    resolve_centers(result.blocks, None, [(2, 3)], count=1)
    result.image = np.full_like(result.image, 0.5)
    fig = clusters_figure([result], source.label, source.random_weights)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    ax, block = fig.axes[0], result.blocks[0]
    members = block.members((2, 3))
    rows, cols = block.grid
    for r in range(rows):
        for c in range(cols):
            x, y = ax.transData.transform(((c + 0.5) * RES[1] / cols, (r + 0.5) * RES[0] / rows))
            red, green, blue = pixels[pixels.shape[0] - int(round(y)), int(round(x))]
            if (r, c) == members[0]:
                assert red > 170 and green < 90 and blue < 90, (r, c, red, green, blue)  # red
            elif (r, c) in members:
                assert red > 180 and 120 < green < 170 and blue < 110, (r, c, red, green, blue)  # orange
            else:
                assert abs(red - green) < 6 and abs(green - blue) < 6, (r, c, red, green, blue)  # grey
