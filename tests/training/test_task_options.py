"""No option is silently ignored: every (task, option) pair of `train` and `eval` is honoured, with an effect a
user can see, or refused in one line that names the option.

`train`: one real `python -m dccnext_cli train` per task with every recipe option at a value that is not its
default, stopped once the options are resolved and recipe.yaml is written (`DCCNEXT_CRASH_AT=run:started`,
before any step: --compile would otherwise compile); each option must show in recipe.yaml. The run-folder
options (-o, --overwrite, --resume) show in what happens to the folder; --json in the document a finished run
prints. `eval`: the CLI on a real weights file of each task; each option changes the report.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml
from train_processes import ROOT, dccnext

from dccnext_cli.cli.app import build_app
from dccnext_cli.cli.options import option_name
from dccnext_cli.common.command_options import EVAL_OPTIONS, TRAIN_OPTIONS
from dccnext_cli.tasks import TASKS, check_options, get_task, is_dense

sys.path.insert(0, str(ROOT / "tests" / "dense"))
from dense_synthetic import make_ade20k, make_coco  # noqa: E402

RECIPE_OPTIONS = {  # option -> (its value here, the recipe.yaml keys it sets: for classification, for dense)
    "--variant": ("b1", {"variant": "b1"}),
    "--epochs": ("3", {"epochs": 3}),
    "--lr": ("0.0123", {"lr": 0.0123}),
    "--grad-accum": ("2", {"grad_accum": 2}),
    "--workers": ("3", {"workers": 3}),
    "--seed": ("7", {"seed": 7}),
    "--amp": ("bf16", {"amp": "bf16"}),
    "--compile": (None, {"compile": True}),
    "--grad-checkpointing": (None, {"grad_checkpointing": True}),
    "--checkpoint-every": ("3", {"checkpoint_every": 3}),
}
# checked below by recipe.yaml too, or by what they do to the run (-o, --overwrite, --resume, --json)
OTHER_TRAIN_OPTIONS = {"--recipe", "--set", "--batch-size", "--res", "--data", "--weights", "--task", "--output",
                       "--overwrite", "--resume", "--json"}
EVAL_CHECKED = {"--weights", "--task", "--data", "--split", "--limit", "--batch-size", "--precision", "--workers",
                "--json"}


def _params(command: str) -> set[str]:
    import typer.main

    click_command = typer.main.get_command(build_app()).commands[command]
    return {option_name(p) for p in click_command.params}


def test_the_declared_options_are_the_commands_options_and_every_one_is_walked():
    assert _params("train") == TRAIN_OPTIONS and _params("eval") == EVAL_OPTIONS
    assert set(RECIPE_OPTIONS) | OTHER_TRAIN_OPTIONS == TRAIN_OPTIONS and EVAL_CHECKED == EVAL_OPTIONS


def test_an_option_a_task_does_not_honour_is_refused_by_name():
    """The refusal itself (every registered task honours all of today's options)."""
    from dataclasses import replace

    from dccnext_cli.errors import ConfigError

    narrow = replace(get_task("semantic-fpn"), honours={"eval": EVAL_OPTIONS - {"--split"}})
    with pytest.raises(ConfigError, match=r"^eval --task semantic-fpn does not use --split; remove it$"):
        check_options(narrow, "eval", ["--data", "--split"])
    check_options(narrow, "eval", ["--data"])


# --------------------------------------------------------------------- the data and weights of every task
@pytest.fixture(scope="module")
def data(images, tmp_path_factory) -> dict[str, str]:
    """A --data value per task: COCO with train2017/val2017 (4 and 2 images), ADE20K (3 and 2)."""
    root = tmp_path_factory.mktemp("dense_data")
    coco = root / "coco"
    for split, count in (("train2017", 4), ("val2017", 2)):
        make_coco(coco / split, num_images=count)
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / split / "instances.json").rename(coco / "annotations" / f"instances_{split}.json")
    make_ade20k(root / "ade", num_images=3, split="training")
    make_ade20k(root / "ade", num_images=2, split="validation")
    return {name: (f"imagefolder:{images}" if not is_dense(task) else
                   f"coco:{coco}" if task.data_scheme == "coco" else f"ade20k:{root / 'ade'}")
            for name, task in TASKS.items()}


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> Path:
    """B1 classifier weights (random): --weights for classification and for the dense backbones."""
    from dccnext_cli.models.config import variant_config
    from dccnext_cli.models.dccnext import DCCNeXt
    from dccnext_cli.models.weights import CheckpointMeta, save_weights

    config = variant_config("b1").replace(num_classes=2)
    path = tmp_path_factory.mktemp("weights") / "b1.safetensors"
    return save_weights(path, DCCNeXt(config), CheckpointMeta("b1", config, ["a", "b"]))


def _train_args(task: str, data: dict[str, str], out: Path, *extra: str) -> list[str]:
    small = ["--batch-size", "4"] if not is_dense(TASKS[task]) else ["--batch-size", "2", "--set", "num_classes=5"]
    return ["train", "--task", task, "--data", data[task], *small, "--res", "48x40", "-o", out, *extra]


# --------------------------------------------------------------------- train
# the dense tasks' walks (a minute or more each here: four processes that build a dense model) are slow tests
TRAIN_WALK = [pytest.param(name, marks=pytest.mark.slow) if is_dense(task) else name for name, task in TASKS.items()]


@pytest.mark.parametrize("task", TRAIN_WALK)
def test_every_train_option_is_honoured(task, data, backbone_weights, tmp_path):
    spec = TASKS[task]
    assert spec.honours["train"] == TRAIN_OPTIONS  # nothing to refuse: each is checked below
    recipe_file = tmp_path / "mine.yaml"
    bundled = ROOT / "dccnext_cli" / "recipes" / (f"dense/{spec.recipe}.yaml" if is_dense(spec) else "quickstart.yaml")
    own_split = "" if is_dense(spec) else "eval_split: validation\n"  # the image folder's
    recipe_file.write_text(bundled.read_text() + "\nlog_every: 7\n" + own_split)
    options = [a for option, (value, _) in RECIPE_OPTIONS.items() for a in (option, *([value] if value else []))]
    out = tmp_path / "run"
    args = _train_args(task, data, out, "--recipe", recipe_file, "--set", "keep_last=5", "--weights",
                       backbone_weights, *options)
    done = dccnext(*args, extra_env={"DCCNEXT_CRASH_AT": "run:started"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())  # --output: the run is where -o says
    expected = {key: value for _, keys in RECIPE_OPTIONS.values() for key, value in keys.items()}
    expected.update(log_every=7, keep_last=5, batch_size=int(args[args.index("--batch-size") + 1]))  # --recipe, --set
    # --res 48x40 is height 40, width 48: the classifier's input, the segmenter's crop, the detectors' sides
    expected.update({key: list(value) if isinstance(value, tuple) else value
                     for key, value in spec.size_keys((40, 48)).items()})
    if is_dense(spec):  # --task, --data, --weights; --epochs replaces the recipe's iterations
        expected.update(task=task, data=data[task], weights=str(backbone_weights), iterations=None)
    else:
        expected.update(data=data[task], pretrained=str(backbone_weights))
    assert {key: recipe.get(key, "missing") for key in expected} == expected
    _check_run_options(task, args, out)


def _check_run_options(task: str, args: list, out: Path) -> None:
    """--overwrite replaces the run (refused without it), --resume continues it (and says from where)."""
    again = dccnext(*args)
    refused = " ".join(again.stderr.split())
    assert again.returncode == 2 and "already holds a run (recipe.yaml); pass --resume" in refused
    seed = args.index("--seed") + 1
    overwritten = dccnext(*args[:seed], "8", *args[seed + 1:], "--overwrite",
                          extra_env={"DCCNEXT_CRASH_AT": "run:started"})
    assert overwritten.returncode == -signal.SIGKILL, overwritten.stderr[-3000:]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["seed"] == 8
    resumed = dccnext(*args[:seed], "8", *args[seed + 1:], "--resume", extra_env={"DCCNEXT_CRASH_AT": "run:started"})
    assert "no saved state: starting at step 0" in " ".join(resumed.stderr.split()), resumed.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_train_json_is_the_one_document_on_stdout(task, data, tmp_path):
    sets = ["--set", "train_samples=8", "--set", "eval_samples=4", "--epochs", "1"] if not is_dense(TASKS[task]) \
        else ["--set", "iterations=1", "--variant", "b0", "--workers", "0"]
    done = dccnext(*_train_args(task, data, tmp_path / "run", *sets, "--json"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert Path(report["weights"]) == tmp_path / "run" / "model.safetensors"


# --------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def weights_of(data, images, tmp_path_factory) -> dict[str, Path]:
    """An untrained B0 weights file of every task, as `train` writes them."""
    from dccnext_cli.dense.checkpoint import save_dense_checkpoint
    from dccnext_cli.dense.recipe import load_dense_recipe
    from dccnext_cli.dense.tasks import build_dense_model
    from dccnext_cli.models.config import variant_config
    from dccnext_cli.models.dccnext import DCCNeXt
    from dccnext_cli.models.weights import CheckpointMeta, save_weights

    folder, files = tmp_path_factory.mktemp("eval_weights"), {}
    for name, task in TASKS.items():
        path = folder / f"{name}.safetensors"
        if not is_dense(task):
            config = variant_config("b0").replace(num_classes=2)
            meta = CheckpointMeta("b0", config, ["class0", "class1"], input_size=(32, 32),
                                  recipe={"data": data[name], "eval_split": "validation"})
            files[name] = save_weights(path, DCCNeXt(config), meta)
            continue
        names = getattr(task.open_data(data[name], train=False), "class_names", None)
        classes = len(names) if names else 5
        recipe = load_dense_recipe(name, ["variant=b0", "min_size=64", "max_size=96", f"num_classes={classes}"])
        model = build_dense_model(task, "b0", classes, **task.build_options(recipe))
        files[name] = save_dense_checkpoint(path, model, recipe, names, classes, 0)
    return files


def _eval(run_cli, *args) -> dict:
    r = run_cli("eval", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_eval_option_is_honoured(task, data, weights_of, run_cli, tmp_path):
    spec = TASKS[task]
    assert spec.honours["eval"] == EVAL_OPTIONS  # nothing to refuse: each is checked below
    base = ["--weights", weights_of[task], "--task", task, "--data", data[task]]  # --weights, --task, --data
    plain = _eval(run_cli, *base)
    images = {"classification": 8, "semantic-fpn": 2}.get(task, 2)  # the validation split's
    assert plain["images" if is_dense(spec) else "samples"] == images and plain["checkpoint"] == str(weights_of[task])
    count = "images" if is_dense(spec) else "samples"
    assert _eval(run_cli, *base, "--split", "train")[count] == {"classification": 32, "semantic-fpn": 3}.get(task, 4)
    assert _eval(run_cli, *base, "--limit", "1")[count] == 1
    assert _eval(run_cli, *base, "--batch-size", "2")["batches"] == math.ceil(images / 2)
    assert plain["batches"] == (images if is_dense(spec) else 1)  # the defaults: 1 image (dense), 256 images
    assert plain["dtype"] == "float32" and _eval(run_cli, *base, "--precision", "bf16")["dtype"] == "bfloat16"
    assert _eval(run_cli, *base, "--workers", "2") == plain  # worker processes read the images: the same scores
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_former_name_of_eval_weights_still_works(data, weights_of, run_cli):
    """eval --checkpoint FILE is --weights FILE under its former name: accepted, and the same scores."""
    args = ["--task", "classification", "--data", data["classification"]]
    plain = _eval(run_cli, "--weights", weights_of["classification"], *args)
    assert _eval(run_cli, "--checkpoint", weights_of["classification"], *args) == plain
