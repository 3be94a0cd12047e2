"""`dccnext eval` and `predict`: numbers that agree with a naive loop, names from the checkpoint, and one
clear line for a broken checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dccnext_cli.data.images import eval_transform, load_image
from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights

NAMES = ["Dress", "Pullover", "T-shirt-top", "Trouser"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = DCCNeXt(variant_config("b0").replace(num_classes=4))
    recipe = {"input_size": [32, 32], "crop_pct": 1.0, "interpolation": "bicubic"}
    meta = CheckpointMeta("b0", model.config, NAMES, 1, input_size=(32, 32), recipe=recipe)
    return save_weights(tmp_path_factory.mktemp("ckpt") / "model.safetensors", model, meta)


def _images(folder: Path, split: str) -> list[tuple[Path, int]]:
    return [(p, NAMES.index(p.parent.name)) for p in sorted((folder / split).rglob("*.png"))]


def test_eval_agrees_with_a_naive_loop(run_cli, checkpoint, imagefolder):
    r = run_cli("eval", "--checkpoint", checkpoint, "--data", f"imagefolder:{imagefolder}", "--split",
                "validation", "--batch-size", "5", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    model = DCCNeXt(variant_config("b0").replace(num_classes=4)).eval()
    model.load_state_dict(load_file(checkpoint))
    transform = eval_transform((32, 32))
    top1 = top2 = loss = 0.0
    items = _images(imagefolder, "validation")
    with torch.no_grad():
        for path, label in items:
            logits = model(transform(load_image(path))[None])[0]
            order = logits.argsort(descending=True).tolist()
            top1 += order[0] == label
            top2 += label in order[:4]  # top-5 with 4 classes = every class
            loss += float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([label])))
    n = len(items)
    assert got["samples"] == n == 16
    assert got["top1"] == pytest.approx(100 * top1 / n) and got["top5"] == pytest.approx(100.0)
    assert got["loss"] == pytest.approx(loss / n, rel=1e-4)


def test_eval_refuses_data_with_another_class_count(run_cli, checkpoint):
    r = run_cli("eval", "--checkpoint", checkpoint, "--data", "builtin:fashion-mnist", "--limit", "40", "--json")
    assert r.exit_code == 2 and "has 10 classes but the checkpoint has 4" in r.text


def test_eval_default_is_the_embedded_test_split(run_cli, tmp_path):
    model = DCCNeXt(variant_config("b0").replace(num_classes=10))
    path = save_weights(tmp_path / "m.safetensors", model, CheckpointMeta(
        "b0", model.config, None, None, input_size=(32, 32)))
    r = run_cli("eval", "--checkpoint", path, "--limit", "40", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert (got["data"], got["split"], got["samples"], got["resolution"]) == ("builtin:fashion-mnist", "test", 40,
                                                                             "32x32")


def test_predict_names_classes_in_order(run_cli, checkpoint, imagefolder):
    path, _ = _images(imagefolder, "validation")[0]
    r = run_cli("predict", path, path, "--checkpoint", checkpoint, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out) == 2 and out[0] == out[1]
    probs = [t["probability"] for t in out[0]["top"]]
    assert sorted(t["class"] for t in out[0]["top"]) == sorted(NAMES)  # k clamped to 4 classes
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_predict_bad_image(run_cli, checkpoint, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    r = run_cli("predict", bad, "--checkpoint", checkpoint)
    assert r.exit_code == 2 and "is not an image file" in r.text


def test_checkpoint_whose_tensors_do_not_fit_its_metadata(run_cli, checkpoint, tmp_path):
    state = load_file(checkpoint)
    state["head.fc.fc2.weight"] = state["head.fc.fc2.weight"][:3]
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        metadata = f.metadata()
    edited = tmp_path / "edited.safetensors"
    save_file(state, str(edited), metadata=metadata)
    image = tmp_path / "grey.png"  # a real image: images are checked before the checkpoint loads
    Image.new("RGB", (8, 8), (128, 128, 128)).save(image)
    for cmd in (["eval", "--checkpoint", edited, "--limit", "8"], ["predict", image, "--checkpoint", edited]):
        r = run_cli(*cmd)
        assert r.exit_code == 2 and "tensors do not fit its metadata" in r.text, r.output


def test_truncated_checkpoint(run_cli, checkpoint, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    r = run_cli("eval", "--checkpoint", cut)
    assert r.exit_code == 2 and ("truncated" in r.text or "not a readable safetensors" in r.text), r.output
    r = run_cli("eval", "--checkpoint", tmp_path / "missing.safetensors")
    assert r.exit_code == 2 and "does not exist" in r.text
