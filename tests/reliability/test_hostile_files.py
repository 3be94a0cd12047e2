"""Files that lie: planted links, training state whose manifest matches but whose content does not, data and
metadata of the wrong type, weights holding NaN, names holding terminal codes, phone photos.

Each case is one the hostile run found (named in the test); each ends in one line and exit status 2 naming the
file and what is wrong with it, or in the right behaviour (the rotated photo scores as the upright pixels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from dccnext_cli.common.tensor_tree import load_tree, save_tree
from dccnext_cli.data.loading import decode_record
from dccnext_cli.data.sources import DataSource, ImageSplit
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights
from dccnext_cli.training.run_state import list_train_states
from tests.reliability.disks import last_line_error


# --------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def killed_run(dccnext, small_images, train_args, tmp_path_factory):
    """A 2-epoch run killed right after its first checkpoint (step 2) was committed."""
    out = tmp_path_factory.mktemp("killed") / "run"
    done = dccnext(*train_args(small_images, out), env={"DCCNEXT_CRASH_AT": "checkpoint-2-0:committed"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return out


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _forge_manifest(checkpoint) -> None:
    """What someone who knows the format would do after editing a file: list its real digest."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(checkpoint.iterdir()) if p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_log_jsonl_symlink_to_an_outside_file_is_refused(dccnext, small_images, train_args, killed_run, tmp_path):
    run, outside = _copy(killed_run, tmp_path), tmp_path / "outside.txt"
    outside.write_text("someone else's file\n")
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(outside)
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 2
    line = last_line_error(done.stderr)
    assert "log.jsonl is a symbolic link" in line, line
    assert outside.read_text() == "someone else's file\n"


def test_planted_step_tmp_symlink_is_removed_not_followed(dccnext, small_images, train_args, killed_run, tmp_path):
    run, outside = _copy(killed_run, tmp_path), tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (run / "checkpoints" / ".step-00000004.tmp").symlink_to(outside, target_is_directory=True)
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"
    assert [p.name for p in list_train_states(run)] == ["step-00000008"]


@pytest.mark.parametrize("field, value", [("epoch", 1_000_000_000), ("batch", 1_000_000), ("step", 10**9),
                                          ("samples", 10**12), ("task.best_top1", 1000.0), ("task.best_epoch", 99)])
def test_train_state_counter_out_of_range(dccnext, small_images, train_args, killed_run, tmp_path, field, value):
    """The loop's counters, and the task's own entries (classification: the best top-1 and its epoch)."""
    run = _copy(killed_run, tmp_path)
    (checkpoint,) = list_train_states(run)
    state = json.loads((checkpoint / "train_state.json").read_text())
    field = field.removeprefix("task.")
    lie = {"task": {**state["task"], field: value}} if field.startswith("best_") else {field: value}
    (checkpoint / "train_state.json").write_text(json.dumps({**state, **lie}))
    _forge_manifest(checkpoint)
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line_error(done.stderr)
    assert "train_state.json" in line and f"{field}={value}" in line, line
    assert not (run / "summary.json").exists()


def test_optimizer_tensor_of_the_wrong_shape(dccnext, small_images, train_args, killed_run, tmp_path):
    run = _copy(killed_run, tmp_path)
    (checkpoint,) = list_train_states(run)
    tree = load_tree(checkpoint / "optimizer.safetensors")
    name = next(iter(tree["optimizer"]["state"]))
    tree["optimizer"]["state"][name]["exp_avg"] = torch.zeros(2)
    (checkpoint / "optimizer.safetensors").unlink()
    save_tree(checkpoint / "optimizer.safetensors", tree)
    _forge_manifest(checkpoint)
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line_error(done.stderr)
    assert "optimizer.safetensors" in line and f"state.{name}.exp_avg" in line and "[2]" in line, line


def test_recipe_yaml_with_a_python_object_tag(dccnext, small_images, train_args, killed_run, tmp_path):
    run, marker = _copy(killed_run, tmp_path), tmp_path / "ran"
    (run / "recipe.yaml").write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 2, done.stderr[-3000:]
    line = last_line_error(done.stderr)
    assert "recipe.yaml holds a YAML tag" in line, line
    assert not marker.exists()


def test_warning_is_rendered_not_shown_as_markup(dccnext, small_images, train_args, killed_run, tmp_path):
    run = _copy(killed_run, tmp_path)
    (run / "checkpoints" / "step-00000099").mkdir()
    done = dccnext(*train_args(small_images, run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    text = " ".join(done.stderr.split())
    assert "warning: skipping train state step-00000099" in text and "[yellow]" not in done.stderr


# --------------------------------------------------------------------- weights files
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A real b0 weights file (2 classes) and its hostile variants; an image."""
    root = tmp_path_factory.mktemp("hostile_weights")
    config = variant_config("b0").replace(num_classes=2)
    good = root / "good.safetensors"
    save_weights(good, DCCNeXt(config), CheckpointMeta("b0", config, ["a", "b"], 1, input_size=(32, 32),
                                                       recipe={"mean": [0.5] * 3, "std": [0.5] * 3}))
    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    recipe = json.loads(meta["recipe"])
    out = {"good": good}
    changes = {
        "input_size_bools": ({}, {"input_size": "[true, true]"}),
        "interpolation_nonsense": ({}, {"recipe": json.dumps({**recipe, "interpolation": "nonsense"})}),
        "ansi_names": ({}, {"class_names": json.dumps(["\x1b[2J\x1b[Hcleared", "b"])}),
        "nan": ({"stem.conv.weight": None}, {}),
    }
    for name, (tensor_change, meta_change) in changes.items():
        changed = dict(tensors)
        for key in tensor_change:
            key = next(k for k in tensors if k.startswith("stem")) if key not in tensors else key
            changed[key] = tensors[key].clone()
            changed[key].view(-1)[0] = float("nan")
            out["nan_tensor"] = key
        out[name] = root / f"{name}.safetensors"
        save_file(changed, str(out[name]), metadata={**meta, **meta_change})
    out["image"] = root / "image.png"
    Image.fromarray((np.arange(48 * 48 * 3) % 251).reshape(48, 48, 3).astype(np.uint8)).save(out["image"])
    return out


def _one_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    return lines[0]


def _last_line(r) -> str:
    """Commands that open a data set first (datasets prints its progress): one error line, the last."""
    assert r.exit_code == 2, r.output
    return last_line_error(r.stderr)


def test_input_size_of_booleans_is_refused(run_cli, weights):
    line = _one_line(run_cli("predict", weights["image"], "--checkpoint", weights["input_size_bools"]))
    assert "input_size" in line and "[true, true]" in line, line


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_interpolation_timm_does_not_know_is_refused_like_on_the_command_line(run_cli, weights, command, tmp_path):
    args = [weights["image"]] if command == "predict" else ["--data", "builtin:fashion-mnist"]
    line = _one_line(run_cli(command, *args, "--checkpoint", weights["interpolation_nonsense"]))
    assert "interpolation must be one of bicubic" in line and "'nonsense'" in line, line
    train = run_cli("train", "--recipe", "quickstart", "-o", tmp_path / "run", "--set", "interpolation=nonsense")
    assert "interpolation must be one of bicubic" in train.stderr  # the same words for the same value


@pytest.mark.parametrize("command", ["predict", "eval", "export", "train"])
def test_weights_holding_nan_are_refused_naming_the_tensor(run_cli, weights, command, tmp_path):
    path = weights["nan"]
    args = {"predict": ["predict", weights["image"], "--checkpoint", path],
            "eval": ["eval", "--checkpoint", path, "--data", "builtin:fashion-mnist"],
            "export": ["export", "--checkpoint", path, "--format", "safetensors", "-o", tmp_path / "x.safetensors"],
            "train": ["train", "--recipe", "quickstart", "--weights", path, "-o", tmp_path / "run"]}[command]
    line = _one_line(run_cli(*args))
    assert f"tensor {weights['nan_tensor']} holds 1 NaN or Inf" in line, line
    assert not (tmp_path / "x.safetensors").exists()


def test_class_names_are_printed_with_control_characters_escaped(run_cli, weights):
    r = run_cli("predict", weights["image"], "--checkpoint", weights["ansi_names"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "\\x1b[2J\\x1b[Hcleared" in r.stdout, r.stdout


# --------------------------------------------------------------------- phone photos
def test_exif_orientation_6_scores_as_the_upright_pixels(run_cli, weights, tmp_path):
    """A JPEG stored sideways with orientation 6 (rotate 90 degrees clockwise to view) predicts exactly as a
    lossless PNG of the pixels turned upright, and not as its stored pixels."""
    rng = np.random.default_rng(0)
    upright = np.kron(rng.integers(0, 255, (6, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 48x32
    stored = np.rot90(upright, k=1).copy()  # what the camera wrote: the view turned 90 degrees anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(photo, quality=95, exif=exif.tobytes())
    decoded = np.asarray(Image.open(photo).convert("RGB"))  # the stored pixels, as JPEG decodes them
    as_viewed, as_stored = tmp_path / "viewed.png", tmp_path / "stored.png"
    Image.fromarray(np.rot90(decoded, k=-1).copy()).save(as_viewed)
    Image.fromarray(decoded).save(as_stored)

    def scores(path):
        r = run_cli("predict", path, "--checkpoint", weights["good"], "--json")
        assert r.exit_code == 0, r.output
        return [(item["class"], item["probability"]) for item in json.loads(r.stdout)[0]["top"]] \
            if isinstance(json.loads(r.stdout), list) else json.loads(r.stdout)["top"]

    assert scores(photo) == scores(as_viewed)
    assert scores(photo) != scores(as_stored)
    # training and evaluation read records through the same path: the record's image is the upright one
    split = ImageSplit(DataSource("imagefolder", str(tmp_path)), "train", None, False, "image", "label", 1, None)
    for value in ({"bytes": photo.read_bytes(), "path": "photo.jpg"}, Image.open(photo)):
        image, label = decode_record({"image": value, "label": 1}, split)
        assert label == 1 and np.array_equal(np.asarray(image), np.asarray(Image.open(as_viewed).convert("RGB")))


# --------------------------------------------------------------------- data
def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(root, labels, split="train"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    images = [{"bytes": _png(20 * i), "path": f"{i}.png"} for i in range(len(labels))]
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array(labels)})
    pq.write_table(table, root / f"{split}-00000-of-00001.parquet")
    return root


@pytest.mark.parametrize("case, labels, expected", [
    ("strings", ["cls0", "cls1"] * 4, "holds class names as strings ('cls0')"),
    ("negative", [0, 1, -1, 1] * 2, "row 2: label -1 in column 'label' is negative"),
])
def test_parquet_labels_strings_or_negative_are_refused_in_train(run_cli, tmp_path, case, labels, expected):
    root = _parquet(tmp_path / "pq", labels)
    r = run_cli("train", "--data", f"parquet:{root}/*.parquet", "--res", "32", "--epochs", "1", "--batch-size", "4",
                "--workers", "0", "--set", "eval_split=", "--set", "num_classes=2", "-o", tmp_path / "run")
    line = _last_line(r)
    assert expected in line, line


def test_parquet_string_labels_in_eval_map_through_the_checkpoints_names(run_cli, weights, tmp_path):
    named = _parquet(tmp_path / "named", ["a", "b"] * 4, split="validation")
    r = run_cli("eval", "--checkpoint", weights["good"], "--data", f"parquet:{named}/*.parquet", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["samples"] == 8
    unknown = _parquet(tmp_path / "unknown", ["cls0", "cls1"] * 4, split="validation")
    line = _last_line(run_cli("eval", "--checkpoint", weights["good"], "--data", f"parquet:{unknown}/*.parquet"))
    assert "label 'cls0' in column 'label' is not one of the class names (a, b)" in line, line


def _coco(root, image_change=None, bbox=None):
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (30, 30, 30)).save(root / "img.png")
    image = {"id": 1, "file_name": "img.png", "height": 48, "width": 64, **(image_change or {})}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": bbox or [4, 4, 20, 20], "area": 400.0,
           "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]}
    path = root / "instances.json"
    path.write_text(json.dumps({"images": [image], "annotations": [ann],
                                "categories": [{"id": 1, "name": "box"}]}))
    return path


@pytest.mark.parametrize("case, image_change, bbox, expected", [
    ("bbox-strings", None, ["4", "4", "20", "20"], "annotation #0 bbox ['4', '4', '20', '20'] holds a value"),
    ("height-abc", {"height": "abc"}, None, "image entry #0 (img.png) has height 'abc'"),
])
def test_coco_fields_of_the_wrong_type(run_cli, tmp_path, case, image_change, bbox, expected):
    path = _coco(tmp_path / "coco", image_change, bbox)
    r = run_cli("train", "--task", "retinanet", "--data", f"coco:{path}", "--res", "64", "--epochs", "1",
                "-o", tmp_path / "run")
    line = _last_line(r)
    assert expected in line, line
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")
