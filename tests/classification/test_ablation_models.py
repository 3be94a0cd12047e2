"""Ablation models from any entry point: recipes' `model:` mappings, `--set model.FIELD=VALUE`, and a trained
"DCCConv -> None" model that evaluates, explains it has no DCConv layers, and exports."""

from __future__ import annotations

import json

import pytest
import yaml
from engine_data import TINY

from dccnext_cli.classification.recipe import load_recipe
from dccnext_cli.common.recipe_files import parse_overrides
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.paper_tables import PAPER_TABLES
from dccnext_cli.models.weights import read_meta

ROWS = [row for rows in PAPER_TABLES.values() for row in rows]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.recipe)
def test_each_paper_row_has_a_recipe_that_builds_it(row):
    recipe = load_recipe(row.recipe)
    assert (recipe.variant, recipe.epochs) == ("b1", 150)
    assert recipe.model_config() == variant_config("b1", **row.changes).replace(drop_path_rate=0.1)


def test_dotted_overrides_add_to_the_recipe_model_mapping(tmp_path):
    assert parse_overrides(["model.global_op=none", "lr=0.001", "model.cluster_sizes=[4,4]"]) == {
        "model": {"global_op": "none", "cluster_sizes": [4, 4]}, "lr": 1e-3}
    recipe = load_recipe("ablation/table6-dcconv", ["model.cluster_sizes=[8,8]"])
    assert recipe.model == {"conv_ffn": False, "subvector_intervals": [1, 1], "cluster_sizes": [8, 8]}


@pytest.mark.parametrize("args,message", [
    (["--set", "model.nonsense=1"], "model: unknown model option(s) nonsense; known: dims, depths, num_classes"),
    (["--set", "model.global_op=mlp"], "global_op must be one of dcc, conv, none, got 'mlp'"),
    (["--set", "model.num_classes=3"], "model.num_classes is set by the recipe key num_classes"),
])
def test_bad_model_options_are_one_line_and_exit_2(run_cli, tmp_path, args, message):
    r = run_cli("train", "--variant", "b0", *args, "--epochs", "1", "-o", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert message in r.text and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_model_without_dcconv_trains_evaluates_and_exports(run_cli, imagefolder, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--data", f"imagefolder:{imagefolder}", *TINY, "--set", "model.global_op=none",
                "--set", "model.conv_ffn=false", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    weights = out / "model.safetensors"
    meta = read_meta(weights)
    assert (meta.config.global_op, meta.config.conv_ffn) == ("none", False)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"] == {"global_op": "none", "conv_ffn": False}
    r = run_cli("eval", "--checkpoint", weights, "--data", f"imagefolder:{imagefolder}", "--json")
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["top1"] <= 100
    r = run_cli("kernel-weights", "--checkpoint", weights, "--json")
    assert r.exit_code == 2
    assert r.text == ("error: this model has no DCConv layers (global_op='none'); "
                      "there are no clusters or kernels to show")
    r = run_cli("export", "--checkpoint", weights, "--format", "safetensors", "-o", tmp_path / "x.safetensors",
                "--res", "224", "--json")  # trained at 32 px, below the export check's minimum
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] and read_meta(tmp_path / "x.safetensors").config == meta.config
    r = run_cli("export", "--checkpoint", weights, "--set", "model.global_op=conv", "--format", "safetensors",
                "-o", tmp_path / "y.safetensors")
    assert r.exit_code == 2 and "a checkpoint carries its own config" in r.text
