"""The Hub folder (`--format hub`): timm's layout, a model card, the training size kept, `--push` up to the upload."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

from dccnext_cli.classification.recipe import load_recipe
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, read_meta, save_weights

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A quickstart-like checkpoint: b0 trained at 56 px on Fashion-MNIST, with the run's metadata."""
    torch.manual_seed(3)
    config = variant_config("b0", num_classes=10)
    model = DCCNeXt(config).eval()
    meta = CheckpointMeta("b0", config, class_names=CLASSES, epoch=3, input_size=(56, 56),
                          recipe=load_recipe("quickstart", {}).to_dict(), metrics={"top1": 88.08, "top5": 99.68})
    path = save_weights(tmp_path_factory.mktemp("q") / "model.safetensors", model, meta)
    return path, model


@pytest.fixture(scope="module")
def hub_folder(quickstart, tmp_path_factory, cli_app):
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("hub") / "hub_b0"
    result = CliRunner().invoke(cli_app, ["export", "--checkpoint", str(quickstart[0]), "--format", "hub",
                                          "-o", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_hub_folder_has_timms_layout_and_the_training_size(hub_folder):
    folder, result = hub_folder
    assert result["ok"] and [c["shape"] for c in result["checks"]][0] == [1, 3, 56, 56]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "dccnext_b0" and config["num_classes"] == 10
    assert config["label_names"] == CLASSES
    assert config["model_args"]["cluster_sizes"] == [12, 18] and config["model_args"]["dims"] == [32, 64, 160, 256]
    assert config["pretrained_cfg"]["input_size"] == [3, 56, 56]
    assert read_meta(folder / "model.safetensors").input_size == (56, 56)


def test_local_dir_returns_the_checkpoints_logits(hub_folder, quickstart):
    model = timm.create_model(f"local-dir:{hub_folder[0]}", pretrained=True).eval()
    assert model.pretrained_cfg["input_size"] == (3, 56, 56) and model.num_classes == 10
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), quickstart[1](x))


def test_model_card_metadata_recipe_and_citation(hub_folder):
    card = (hub_folder[0] / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "timm" and front["license"] == "apache-2.0"
    assert {"timm", "image-classification", "dccnext"} <= set(front["tags"])
    assert front["datasets"] == ["zalando-datasets/fashion_mnist"]
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {"type": "accuracy", "name": "Top-1 accuracy", "value": 88.08} in metrics
    assert "import dccnext_cli" in card and 'timm.create_model("local-dir:' in card
    assert "| input size | `56x56 px` |" in card and "| learning rate | `0.003` |" in card
    assert "Dynamic Clustering Convolutional Neural Network" in card and "@inproceedings" in card


def test_weights_formats_keep_the_training_size_graph_formats_refuse_it(run_cli, quickstart, tmp_path):
    weights = tmp_path / "a.safetensors"
    result = run_cli("export", "--checkpoint", quickstart[0], "--format", "safetensors", "-o", weights)
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "a.safetensors").input_size == (56, 56)
    result = run_cli("export", "--checkpoint", quickstart[0], "--format", "onnx", "-o", tmp_path / "a.onnx")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "error: --res 56x56 is below the onnx export minimum of 160 px (from there stage 4 has more tokens than K, "
        "so K is a graph constant); pass --res 160 or more (weights formats keep any size)")
    assert not (tmp_path / "a.onnx").exists()


def test_push_writes_and_checks_the_folder_then_fails_clearly_offline(run_cli, quickstart, tmp_path):
    """Everything up to the upload runs; the tests are offline, so the upload itself is refused."""
    out = tmp_path / "pushed"
    result = run_cli("export", "--checkpoint", quickstart[0], "--format", "hub", "-o", out,
                     "--push", "someone/dccnext-b0-fashion")
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out} was written and checked, but the upload to "
                                                   "someone/dccnext-b0-fashion failed (")
    card = (out / "README.md").read_text()
    assert 'timm.create_model("hf-hub:someone/dccnext-b0-fashion", pretrained=True)' in card
    assert _front_matter(card)["model-index"][0]["name"] == "dccnext-b0-fashion"


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "timm", "--push", "a/b"], "error: --push uploads a Hub folder; use it with --format hub, not timm"),
    (["--format", "hub", "--push", "a//b c"], "error: --push 'a//b c' is not a Hub repo id; write it as NAME or "
                                               "OWNER/NAME"),
])
def test_push_refusals_write_nothing(run_cli, quickstart, tmp_path, args, message):
    result = run_cli("export", "--checkpoint", quickstart[0], "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and result.stderr.strip() == message
    assert not (tmp_path / "out").exists()
