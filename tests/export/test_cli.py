"""`dccnext export` from the command line: outputs, --json, --features, refusals and bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta, save_weights


@pytest.fixture(scope="module")
def checkpoint(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "trained.safetensors"
    save_weights(path, *source)
    return path


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_safetensors_json_result(run_cli, checkpoint, tmp_path):
    out = tmp_path / "b0.safetensors"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "safetensors", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["format"] == "safetensors" and report["path"] == str(out)
    assert all(c["max_abs_diff"] == 0.0 for c in report["checks"])
    assert out.is_file()


def test_half_weights(run_cli, checkpoint, source, tmp_path):
    out = tmp_path / "half.safetensors"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "safetensors", "-o", out, "--half", "--json")
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("stem.conv.weight").dtype == torch.float16
    report = json.loads(result.stdout)
    assert report["dtype"] == "float16" and report["ok"]
    assert all(0.0 < c["max_abs_diff"] <= c["tolerance"] for c in report["checks"])


def test_features_torchscript(run_cli, checkpoint, source, tmp_path):
    out = tmp_path / "backbone.ts"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "torchscript", "-o", out, "--features",
                     "--res", "192x160")
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.stdout
    backbone = torch.jit.load(str(out))
    x = torch.randn(2, 3, 256, 224)
    with torch.no_grad():
        feats = backbone(x)
        refs = source[0].forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, c, 256 // s, 224 // s) for c, s in
                                              zip((32, 64, 160, 256), (4, 8, 16, 32), strict=True)]
    for f, r in zip(feats, refs, strict=True):
        assert (f - r).abs().max().item() <= 1e-4


def test_refuses_to_overwrite_a_file(run_cli, checkpoint, tmp_path):
    out = tmp_path / "mine.onnx"
    out.write_bytes(b"the user's own file")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "-o", out)
    _one_line_error(result, "already exists", "--overwrite")
    assert out.read_bytes() == b"the user's own file"


def test_refuses_to_overwrite_a_timm_folder_then_overwrites(run_cli, checkpoint, tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "timm", "-o", folder)
    _one_line_error(result, "config.json already exists")
    assert (folder / "config.json").read_text() == "{}"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "timm", "-o", folder, "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "config.json").read_text())["architecture"] == "dccnext_b0"


def test_overwrite_replaces_a_file(run_cli, checkpoint, tmp_path):
    out = tmp_path / "b0.safetensors"
    out.write_bytes(b"old")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "safetensors", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000


def test_file_of_another_model(run_cli, tmp_path):
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(other))
    result = run_cli("export", "--checkpoint", other, "--format", "onnx", "-o", tmp_path / "x.onnx")
    _one_line_error(result, "is not a dccnext checkpoint")
    assert not (tmp_path / "x.onnx").exists()


def test_file_whose_tensors_are_another_variant(run_cli, tmp_path):
    b1 = DCCNeXt(variant_config("b1"))
    path = tmp_path / "mislabelled.safetensors"
    save_weights(path, b1, CheckpointMeta("b0", variant_config("b0")))
    result = run_cli("export", "--checkpoint", path, "--format", "safetensors", "-o", tmp_path / "y.safetensors")
    _one_line_error(result, "tensors do not fit its metadata")


def test_truncated_file(run_cli, checkpoint, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    result = run_cli("export", "--checkpoint", cut, "--format", "torchscript", "-o", tmp_path / "z.ts")
    _one_line_error(result, "cut.safetensors")
    assert not (tmp_path / "z.ts").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx", "--res", "128"], "160 px"),
        (["--format", "onnx", "--half"], "float32 only"),
        (["--format", "safetensors", "--features"], "--features applies to graph formats"),
    ],
)
def test_bad_options(run_cli, checkpoint, tmp_path, args, message):
    result = run_cli("export", "--checkpoint", checkpoint, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_needs_exactly_one_source(run_cli, checkpoint, tmp_path):
    result = run_cli("export", "--format", "onnx", "-o", tmp_path / "a.onnx")
    _one_line_error(result, "exactly one of --weights FILE or --variant NAME")
    result = run_cli("export", "--checkpoint", checkpoint, "--variant", "b0", "--format", "onnx", "-o", tmp_path / "a")
    _one_line_error(result, "exactly one")


def test_features_onnx(run_cli, checkpoint, source, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "backbone.onnx"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "-o", out, "--features",
                     "--res", "160", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["features"] is True
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["stage1", "stage2", "stage3", "stage4"]
    x = torch.randn(1, 3, 224, 192)
    feats = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        refs = source[0].forward_intermediates(x, intermediates_only=True)
    for f, r in zip(feats, refs, strict=True):
        assert f.shape == tuple(r.shape)
        assert abs(torch.from_numpy(f) - r).max().item() <= 1e-4
