"""Every check of what the user typed comes before the wait: one line, exit 2, and torch never imported.

Each case runs the real command in a fresh process with `-X importtime` and reads which packages it loaded;
the error must come without torch (loading torch and building a model is what takes the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "timm", "torchvision", "datasets", "accelerate"}


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "dccnext_cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    imported = {line.rpartition("|")[2].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    done.message = " ".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return done, imported


@pytest.fixture
def place(tmp_path) -> Path:
    """A folder with what the cases point at: an image, a non-image, existing outputs, data folders."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "model.onnx").write_bytes(b"mine")
    (tmp_path / "figure.png").write_bytes(b"mine")
    (tmp_path / "page.html").write_text("mine")
    (tmp_path / "hub" / "README.md").parent.mkdir()
    (tmp_path / "hub" / "README.md").write_text("mine")
    for cls in ("cat", "dog"):  # class folders with no train/ above them
        (tmp_path / "flat" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / cls / "0.png")
        (tmp_path / "no_val" / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "no_val" / "train" / cls / "0.png")
    (tmp_path / "empty_run").mkdir()
    return tmp_path


CASES = {
    "predict, missing image": (["predict", "nothere.jpg", "--checkpoint", "red.png"],
                               "image nothere.jpg does not exist"),
    "predict, not an image": (["predict", "notes.png", "--checkpoint", "red.png"], "not an image file Pillow can read"),
    "predict, missing checkpoint": (["predict", "red.png", "--checkpoint", "no.safetensors"],
                                    "weights file no.safetensors does not exist"),
    "eval, --checkpoint (the former name of --weights)": (["eval", "--checkpoint", "no.safetensors"],
                                                          "weights file no.safetensors does not exist"),
    "eval, run folder without weights": (["eval", "--weights", "empty_run"],
                                         "empty_run is a folder without model.safetensors"),
    "eval, bare --data path": (["eval", "--checkpoint", "red.png", "--data", "flat"],
                               "a local folder is read as --data imagefolder:flat"),
    "export, existing -o": (["export", "--variant", "b0", "--format", "onnx", "-o", "model.onnx"],
                            "model.onnx already exists; pass --overwrite"),
    "export, existing file in a hub folder": (["export", "--variant", "b0", "--format", "hub", "-o", "hub"],
                                              "README.md already exists"),
    "export, a folder for a file format": (["export", "--variant", "b0", "--format", "onnx", "-o", "hub"],
                                           "hub is a folder; the onnx format writes one file"),
    "visualize-clusters, missing image": (["visualize-clusters", "nothere.jpg", "-o", "new.png"],
                                          "image nothere.jpg does not exist"),
    "visualize-clusters, existing -o": (["visualize-clusters", "red.png", "-o", "figure.png"],
                                        "figure.png already exists"),
    "visualize-clusters, existing --html": (["visualize-clusters", "red.png", "--html", "page.html"],
                                            "page.html already exists; pass --overwrite to replace it or choose "
                                            "another --html"),
    "visualize-clusters, unknown figure format": (["visualize-clusters", "red.png", "-o", "figure.jpg"],
                                                  "use .png, .svg or .pdf"),
    "kernel-weights, existing -o": (["kernel-weights", "-o", "figure.png"], "figure.png already exists"),
    "train, bare --data path": (["train", "--data", "flat", "-o", "run"],
                                "a local folder is read as --data imagefolder:flat"),
    "train, image folder without train/": (["train", "--data", "imagefolder:flat", "-o", "run"],
                                           "flat has no train/ folder"),
    "train, image folder without validation/": (["train", "--data", "imagefolder:no_val", "-o", "run"],
                                                "has no validation/ folder (found: train)"),
    "train, missing --weights": (["train", "--weights", "b2.safetensors", "-o", "run"],
                                 "--weights b2.safetensors does not exist"),
    "train, missing image folder": (["train", "--data", "imagefolder:nowhere", "-o", "run"],
                                    "folder nowhere does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_error_comes_before_torch_is_imported(case, place):
    args, message = CASES[case]
    before = sorted(p.name for p in place.rglob("*"))
    done, imported = _run(args, place)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "typer" in imported  # the import log was read
    assert message in done.message and "Traceback" not in done.stderr
    assert not imported & HEAVY, f"{case}: imported {sorted(imported & HEAVY)} before the error"
    assert sorted(p.name for p in place.rglob("*")) == before  # nothing written, nothing replaced


def test_a_folder_with_train_but_no_validation_trains_when_evaluation_is_off(place):
    """The validation/ check follows the recipe: with eval_split=null the same folder passes the early check
    (and fails later only for a reason of its own; here an unknown key stops it without data loaded)."""
    done, imported = _run(["train", "--data", "imagefolder:no_val", "--set", "eval_split=null", "--set",
                           "no_such_key=1", "-o", "run"], place)
    assert done.returncode == 2 and "no_such_key" in done.message and "validation" not in done.message


@pytest.mark.parametrize("args, leaked", [
    (["flops", "--variant", "b9"], "Value error"),
    (["train", "--epochs", "abc"], "Input should be"),
])
def test_option_errors_carry_no_library_wording(args, leaked, tmp_path):
    done, _ = _run(args, tmp_path)
    assert done.returncode == 2 and "Invalid value for" in done.message
    assert leaked not in done.message


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as `train` leaves it, reduced to what --checkpoint reads: model.safetensors."""
    torch.manual_seed(0)
    config = variant_config("b0", num_classes=3)
    folder = tmp_path_factory.mktemp("runs") / "quickstart"
    save_weights(folder / "model.safetensors", DCCNeXt(config).eval(),
                 CheckpointMeta("b0", config, class_names=["a", "b", "c"], epoch=1))
    return folder


def test_checkpoint_may_name_a_run_folder(run_cli, run_folder):
    r = run_cli("kernel-weights", "--checkpoint", run_folder, "--json")
    assert r.exit_code == 0, r.output
    assert f"using {run_folder / 'model.safetensors'}" in " ".join(r.stderr.split())  # rich wraps at 80 columns
    assert json.loads(r.stdout)["model"]["checkpoint"] == str(run_folder / "model.safetensors")


def test_variants_are_case_insensitive(run_cli):
    r = run_cli("kernel-weights", "--variant", "B0", "--blocks", "7", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["variant"] == "b0"


def test_export_help_counts_its_formats_right(run_cli):
    from dccnext_cli.export_formats import FORMATS

    text = run_cli("export", "--help").text
    words = {5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"one of {words[len(FORMATS)]} formats" in text
    assert all(name in text for name in FORMATS)
