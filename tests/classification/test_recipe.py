"""Recipes: the bundled ones say what the paper says; a broken one is refused with one clear line."""

from __future__ import annotations

import pytest

from dccnext_cli.classification.recipe import TrainRecipe, default_recipe_name, load_recipe
from dccnext_cli.dense.recipe import load_dense_recipe
from dccnext_cli.errors import ConfigError


@pytest.mark.parametrize("variant, drop_path", [("b0", 0.0), ("b1", 0.1), ("b2", 0.2), ("b3", 0.4), ("b4", 0.5)])
def test_imagenet_recipes_are_the_papers(variant, drop_path):
    r = load_recipe(f"imagenet/{variant}")
    assert (r.variant, r.drop_path) == (variant, drop_path)
    assert (r.epochs, r.warmup_epochs, r.batch_size, r.peak_lr()) == (300, 20, 4096, pytest.approx(4e-3))
    assert (r.opt, r.weight_decay, r.warmup_lr, r.min_lr, r.grad_clip) == ("adamw", 0.05, 1e-6, 1e-5, None)
    assert (r.auto_augment, r.mixup, r.cutmix, r.mixup_switch_prob) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.5)
    assert (r.smoothing, r.re_prob, r.re_mode, r.scale, r.crop_pct) == (0.1, 0.25, "pixel", (0.08, 1.0), 1.0)
    assert (r.data, r.input_size, r.interpolation) == ("hf:timm/imagenet-1k-wds", (224, 224), "bicubic")


def test_lr_scales_with_total_batch_and_defaults():
    assert load_recipe("imagenet/b2", {"batch_size": 1024}).peak_lr() == pytest.approx(1e-3)
    assert load_recipe("imagenet/b2", ["lr=5e-4"]).peak_lr() == 5e-4
    assert default_recipe_name(None, None) == "quickstart"
    assert default_recipe_name("imagefolder:x", "b3") == "imagenet/b3"
    q = load_recipe("quickstart")
    assert q.data == "builtin:fashion-mnist" and q.variant == "b0" and not q.uses_mixup
    assert TrainRecipe().auto_augment == load_recipe("imagenet/b0").auto_augment  # defaults = the paper


@pytest.mark.parametrize("overrides, message", [
    (["lr_max=1"], "unknown key(s) lr_max"),
    (["epochs=1.5"], "epochs must be an integer, got 1.5"),
    (["input_size=[224]"], "input_size must be a list of 2 (an integer, an integer)"),
    (["amp=fp8"], "amp must be one of auto, no, bf16, fp16"),
    (["variant=b9"], "unknown variant 'b9'"),
    (["input_size=[16,16]"], "input_size must be at least 32x32"),
    (["compile=yes please"], "compile must be true/false"),
    (["nonsense"], "is not key=value"),
])
def test_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_recipe("quickstart", overrides)
    assert message in str(e.value)


def test_recipe_files_inherit_and_are_checked(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\nlr: 1.0e-3\n")
    (tmp_path / "mine.yaml").write_text("base: base.yaml\nlr: 2.0e-3\ninput_size: [64, 48]\n")
    r = load_recipe(tmp_path / "mine.yaml")
    assert (r.epochs, r.lr, r.input_size) == (7, 2e-3, (64, 48))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="is a dense-task recipe"):
        load_recipe("dense/semantic-fpn")
    with pytest.raises(ConfigError, match="file .*missing.yaml does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_dense_recipes_share_the_checks():
    assert load_dense_recipe("retinanet", ["lr=2e-4"]).lr == 2e-4
    with pytest.raises(ConfigError, match="crop_size must be a list of 2"):
        load_dense_recipe("semantic-fpn", ["crop_size=7"])
