"""The bad-input matrix: each command x each kind of bad input a user (or a broken file) can bring.

Every case must end in one line on stderr naming the problem, exit status 2, no traceback (the CLI runs
in-process with exceptions not caught, so an unexpected one fails the test with its traceback), and nothing in
the working folder changed. Cases with a correct answer instead (a 16-bit PNG) check the answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real b0 weights file (2 classes), an image, and the broken variants of both."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = root / "good.safetensors"
    config = variant_config("b0").replace(num_classes=2)
    save_weights(good, DCCNeXt(config), CheckpointMeta("b0", config, ["a", "b"], 1, input_size=(32, 32),
                                                       recipe={"mean": [0.5] * 3, "std": [0.5] * 3}))
    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    big = json.loads(meta["model_config"])
    broken = {
        "dims5": {"model_config": json.dumps({**big, "dims": [32, 64, 160, 256, 512]})},
        "huge_dims": {"model_config": json.dumps({**big, "dims": [10**6] * 4})},
        "names_length": {"class_names": json.dumps(["a", "b", "c"])},
        "names_type": {"class_names": json.dumps([1, 2])},
        "input_size_0": {"input_size": "[0, 0]"},
        "input_size_neg": {"input_size": "-5"},
        "recipe_json": {"recipe": "{not json"},
        "std_0": {"recipe": json.dumps({"std": [0, 0, 0]})},
        "b0_labelled_b2": {"variant": "b2"},
    }
    out = {"good": good}
    for name, change in broken.items():
        out[name] = root / f"{name}.safetensors"
        save_file(tensors, str(out[name]), metadata={**meta, **change})
    out["truncated"] = root / "truncated.safetensors"
    out["truncated"].write_bytes(good.read_bytes()[:5000])
    out["image"] = root / "image.png"
    Image.fromarray((np.arange(48 * 48 * 3) % 251).reshape(48, 48, 3).astype(np.uint8)).save(out["image"])
    out["png16"] = root / "gray16.png"
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(out["png16"])
    out["bomb"] = root / "bomb.png"
    Image.new("L", (14000, 14000)).save(out["bomb"])  # 190 KB on disk, 196 M pixels
    out["cycle"] = root / "a.yaml"
    out["cycle"].write_text("base: b.yaml\nepochs: 1\n")
    (root / "b.yaml").write_text("base: a.yaml\n")
    out["latin1"] = root / "latin1.yaml"
    out["latin1"].write_bytes("epochs: 1\n# r\xe9sum\xe9\n".encode("latin-1"))
    for name in ("garbage.safetensors", "garbage.parquet"):
        out[name] = root / name
        out[name].write_bytes(bytes(range(256)) * 12)
    out["a_file"] = root / "plain.txt"
    out["a_file"].write_text("not a folder")
    return out


BAD_CHECKPOINTS = ["dims5", "huge_dims", "names_length", "names_type", "input_size_0", "input_size_neg",
                   "recipe_json", "std_0", "b0_labelled_b2", "truncated"]
CHECKPOINT_COMMANDS = {
    "predict": lambda f, ckpt: ["predict", f["image"], "--checkpoint", ckpt],
    "export": lambda f, ckpt: ["export", "--checkpoint", ckpt, "--format", "safetensors", "-o", "out.safetensors"],
    "kernel-weights": lambda f, ckpt: ["kernel-weights", "--checkpoint", ckpt, "-o", "k.png"],
    "visualize-clusters": lambda f, ckpt: ["visualize-clusters", f["image"], "--checkpoint", ckpt, "-o", "c.png"],
}
RECIPE_VALUES = ["smoothing=1.5", "mixup=-1", "cutmix=-0.5", "hflip=2", "re_prob=2", "mixup_prob=1.5",
                 "ratio=[2,1]", "warmup_epochs=-1", "eval_samples=0", "grad_clip=-1", "grad_clip=0", "lr=.nan",
                 "lr=-1", "seed=8589934592", "seed=-1", "opt=bogus", "auto_augment=bogus", "interpolation=bogus",
                 "re_mode=bogus", "crop_pct=-1", "crop_pct=1.5", "std=[0,1,1]", "mean=[.nan,0,0]",
                 "drop_path_rate=1.5", "input_size=[100000,100000]", "weight_decay=-1"]
TRAIN = ["train", "--recipe", "quickstart", "-o", "run"]


def _cases():
    for command, args in CHECKPOINT_COMMANDS.items():
        for bad in BAD_CHECKPOINTS:
            yield pytest.param(lambda f, a=args, b=bad: a(f, f[b]), id=f"{command}-{bad}")
    for value in RECIPE_VALUES:
        yield pytest.param(lambda f, v=value: [*TRAIN, "--set", v], id=f"train-{value}")
    yield from (pytest.param(fn, id=name) for name, fn in {
        "train-option-and-set": lambda f: [*TRAIN, "--epochs", "2", "--set", "epochs=3"],
        "train-base-cycle": lambda f: ["train", "--recipe", f["cycle"], "-o", "run"],
        "train-not-utf8": lambda f: ["train", "--recipe", f["latin1"], "-o", "run"],
        "train-output-under-a-file": lambda f: ["train", "--recipe", "quickstart", "-o", f["a_file"] / "run"],
        "train-usage-type": lambda f: [*TRAIN, "--epochs", "two"],
        "train-usage-unknown": lambda f: [*TRAIN, "--bogus"],
        "train-res-ceiling": lambda f: [*TRAIN, "--res", "100000"],
        "flops-res-ceiling": lambda f: ["flops", "--res", "100000"],
        "export-res-ceiling": lambda f: ["export", "--checkpoint", f["good"], "--format", "safetensors", "-o",
                                         "x.safetensors", "--res", "9000"],
        "predict-bomb": lambda f: ["predict", f["bomb"], "--checkpoint", f["good"]],
        "figure-bomb": lambda f: ["visualize-clusters", f["bomb"], "--checkpoint", f["good"], "-o", "c.png"],
        "figure-output-under-a-file": lambda f: ["kernel-weights", "--checkpoint", f["good"], "-o",
                                                 f["a_file"] / "k.png"],
        "page-output-under-a-file": lambda f: ["visualize-clusters", f["image"], "--checkpoint", f["good"],
                                               "--html", f["a_file"] / "p.html", "--json"],
        "export-output-under-a-file": lambda f: ["export", "--checkpoint", f["good"], "--format", "safetensors",
                                                 "--res", "224", "-o", f["a_file"] / "x.safetensors"],
        "unknown-command": lambda f: ["trian"],
        "train-garbage-weights": lambda f: [*TRAIN, "--weights", f["garbage.safetensors"]],
        "train-garbage-parquet": lambda f: [*TRAIN, "--data", f"parquet:{f['garbage.parquet']}"],
    }.items())


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make_args", _cases())
def test_bad_input_is_one_line_exit_2_and_nothing_written(run_cli, files, tmp_path, monkeypatch, make_args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("the user's own file")
    before, sources = _snapshot(tmp_path), {p: p.read_bytes() for p in files.values() if p.stat().st_size < 10**6}
    r = run_cli(*make_args(files))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    assert _snapshot(tmp_path) == before
    assert all(p.read_bytes() == data for p, data in sources.items())


def test_a_16_bit_png_is_scaled_not_clipped_white(run_cli, files, tmp_path):
    """A 16-bit gray ramp predicts exactly as its 8-bit conversion does (Pillow's own convert clips it white)."""
    eight = tmp_path / "gray8.png"
    values = np.asarray(Image.open(files["png16"]), dtype=np.float64)
    Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L").save(eight)
    a = run_cli("predict", files["png16"], "--checkpoint", files["good"], "--json")
    b = run_cli("predict", eight, "--checkpoint", files["good"], "--json")
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    first, second = json.loads(a.stdout), json.loads(b.stdout)
    strip = [{k: v for k, v in item.items() if k not in ("image", "path")} for item in (first, second)] \
        if isinstance(first, dict) else [[{k: v for k, v in i.items() if k not in ("image", "path")} for i in x]
                                         for x in (first, second)]
    assert strip[0] == strip[1]
