"""Export a DCCNeXt to safetensors, a timm / Hub folder, ONNX, TorchScript or a torch.export program.

Every export is built under a hidden name beside `-o` (`common.files.staged`) and checked against the eager model
before it is moved into place, so a kill or a full disk leaves nothing at `-o`: the file is loaded
back the way a user would load it (timm, onnxruntime, `torch.jit.load`, `torch.export.load`) and its
outputs are compared on seeded inputs of two shapes (batch 1 at the export size, batch 2 at a
second size), which also proves the dynamic batch and height/width axes.

Why a minimum input size for graphs: the clustering keeps K' = min(K, N) neighbours per token. From 160 px
up, stage 4 has at least 5x5 = 25 tokens, more than its K = 18, so K is a constant of the graph (TensorRT
needs a constant TopK k) and one exported graph serves every size above it. Weights formats (safetensors, the
timm and Hub folders) hold no graph: they keep the size the model was trained at, whatever it is.

ONNX and near ties: top-k is discontinuous. onnxruntime computes the same distances with other
kernels, so two candidates whose distances agree to ~1e-7 can swap places, and the logits then move
by ~1e-3. The ONNX check therefore also reads the cluster indices out of the graph's TopK nodes and
holds the outputs to the tolerance on the samples whose clusters all agree, counting the swaps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .common.files import atomic_write, atomic_write_bytes, atomic_write_text, check_new_output, staged
from .errors import ConfigError, DCCNeXtError
from .export_formats import FOLDER_FORMATS, FORMATS, GRAPH_FORMATS, MIN_EXPORT_SIZE, output_files
from .models.config import variant_config
from .models.dccnext import DCCNeXt
from .models.hub import hub_config, model_card, push_folder
from .models.inference import optimize_for_inference
from .models.settings import use_operator_settings
from .models.weights import CheckpointMeta, save_weights

__all__ = [
    "FORMATS",
    "GRAPH_FORMATS",
    "MIN_EXPORT_SIZE",
    "ONNX_OPSET",
    "ExportError",
    "ParityCheck",
    "ExportResult",
    "load_source",
    "export_model",
    "write_onnx_graph",
]

ONNX_OPSET = 18
MAX_EXPORT_SIZE = 8192
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Max abs difference to the float32 eager model that a check accepts, by export dtype.
TOLERANCE = {"float32": 1e-4, "float16": 5e-2, "bfloat16": 2e-1}
MAX_SWAPPED_FRACTION = 1e-3  # ONNX: cluster slots that may differ (near ties) before the check fails


class ExportError(DCCNeXtError):
    """An export that cannot be made or that does not match the eager model."""


@dataclass
class ParityCheck:
    """One comparison of an exported artefact with the eager float32 model."""

    shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    swapped_slots: int = 0  # ONNX only: cluster slots whose index differs from eager (near ties)
    total_slots: int = 0
    max_abs_diff_agreeing: float | None = None  # ONNX only: over samples whose clusters all agree
    agreeing_samples: int | None = None
    loaded_by: str = ""  # what read the file back: "onnxruntime", "timm.create_model", ...
    size: str = ""  # which input: the export size, or the second size (other height and width, batch 2)

    @property
    def why_ok(self) -> str:
        """Why a check above the tolerance still passes ('' when it is within it)."""
        if not self.ok or self.max_abs_diff <= self.tolerance:
            return ""
        within = f"; the {self.agreeing_samples} samples without one are within it" if self.agreeing_samples else ""
        return (f"{self.swapped_slots} of {self.total_slots} cluster slots swapped at near ties "
                f"(onnxruntime's kernels order them differently){within}")

    @property
    def ok(self) -> bool:
        if self.max_abs_diff <= self.tolerance or self.total_slots == 0:
            return self.max_abs_diff <= self.tolerance
        # Over tolerance: acceptable only as the effect of a few near-tie swaps, with the other samples exact.
        swapped_ok = self.swapped_slots <= MAX_SWAPPED_FRACTION * self.total_slots
        agreeing = self.max_abs_diff_agreeing
        return swapped_ok and (agreeing is None or agreeing <= self.tolerance)


@dataclass
class ExportResult:
    format: str
    path: Path
    dtype: str
    features: bool
    checks: list[ParityCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["ok"] = self.ok
        for c, d in zip(self.checks, out["checks"], strict=True):
            d["ok"] = c.ok
        return out


# ----------------------------------------------------------------------------- the source model
def load_source(checkpoint: str | os.PathLike | None, variant: str | None,
                model_changes: dict[str, Any] | None = None) -> tuple[DCCNeXt, CheckpointMeta]:
    """The model to export: a dccnext checkpoint, or a freshly initialised variant with `model_changes`."""
    if (checkpoint is None) == (variant is None):
        raise ConfigError("pass exactly one of --weights FILE or --variant NAME")
    if checkpoint is not None and model_changes:
        raise ConfigError("--set model.FIELD=VALUE builds a model from --variant; a checkpoint carries its own config")
    if checkpoint is not None:
        model, meta = DCCNeXt.from_checkpoint(checkpoint)
    else:
        config = variant_config(variant).override(model_changes, "--set model")
        model, meta = DCCNeXt(config), CheckpointMeta(variant.removeprefix("dccnext_"), config)
    return model.eval(), meta


# ----------------------------------------------------------------------------- module wrappers
class _Features(nn.Module):
    """The four-stage backbone: NCHW maps at strides 4, 8, 16 and 32."""

    def __init__(self, model: DCCNeXt):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.forward_intermediates(x, intermediates_only=True))


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


def _output_names(features: bool) -> list[str]:
    return [f"stage{i + 1}" for i in range(4)] if features else ["logits"]


# ----------------------------------------------------------------------------- parity
def _check_inputs(resolution: tuple[int, int], in_chans: int, floor: int = MIN_EXPORT_SIZE) -> list[torch.Tensor]:
    """Seeded inputs: batch 1 at the export size, batch 2 at a second size (other H and W, at least `floor`)."""
    gen = torch.Generator().manual_seed(0)
    height, width = resolution
    other = (height + 64, max(floor, width - 32))
    return [torch.randn(1, in_chans, height, width, generator=gen), torch.randn(2, in_chans, *other, generator=gen)]


INPUT_SIZES = ("export size", "second size")  # what each of `_check_inputs` is, for the report


def _size_label(i: int) -> str:
    """The report's name for input i (other inputs, a caller's own, have none)."""
    return INPUT_SIZES[i] if i < len(INPUT_SIZES) else ""


def _eager(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return _as_tuple(model(x))


def _max_diff(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], samples: Any = slice(None)) -> float:
    return max(float((o.float()[samples] - r.float()[samples]).abs().max()) for o, r in zip(outs, refs, strict=True))


def check_torch(run: Callable[[torch.Tensor], Any], reference: nn.Module, inputs: list[torch.Tensor], dtype: str,
                loaded_by: str = ""):
    """Compare a torch-callable artefact with the float32 eager model."""
    checks = []
    for i, x in enumerate(inputs):
        size = _size_label(i)
        refs = _eager(reference, x)
        with torch.no_grad():
            outs = _as_tuple(run(x.to(DTYPES[dtype])))
        checks.append(ParityCheck(tuple(x.shape), _max_diff(outs, refs), TOLERANCE[dtype], loaded_by=loaded_by,
                                  size=size))
    return checks


def _eager_with_indices(reference: nn.Module, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    model = reference.model if isinstance(reference, _Features) else reference
    model.keep_cluster_indices(True)
    try:
        refs = _eager(reference, x)
        indices = [layer.last_indices for _, layer in model.dcconv_layers()]
    finally:
        model.keep_cluster_indices(False)
    return refs, indices


def _onnx_session_with_indices(path: Path):
    """An onnxruntime session on the file, with every TopK's indices exposed as an extra output."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    names = [node.output[1] for node in proto.graph.node if node.op_type == "TopK"]
    known = {o.name for o in proto.graph.output}
    for name in names:
        if name not in known:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, len(names)


def check_onnx(path: Path, reference: nn.Module, inputs: list[torch.Tensor], features: bool) -> list[ParityCheck]:
    """Run the file in onnxruntime (CPU) and compare outputs and cluster indices with the eager model."""
    session, num_topk = _onnx_session_with_indices(path)
    num_out = len(_output_names(features))
    checks = []
    for i, x in enumerate(inputs):
        size = _size_label(i)
        refs, ref_idx = _eager_with_indices(reference, x)
        results = session.run(None, {"images": x.numpy()})
        outs = [torch.from_numpy(r) for r in results[:num_out]]
        idx = [torch.from_numpy(r) for r in results[num_out:]]
        check = ParityCheck(tuple(x.shape), _max_diff(outs, refs), TOLERANCE["float32"], loaded_by="onnxruntime",
                            size=size)
        if num_topk == len(ref_idx) and all(a.shape == b.shape for a, b in zip(idx, ref_idx, strict=True)):
            differs = [(a != b) for a, b in zip(idx, ref_idx, strict=True)]
            check.swapped_slots = int(sum(d.sum() for d in differs))
            check.total_slots = int(sum(d.numel() for d in differs))
            agree = ~torch.stack([d.flatten(1).any(1) for d in differs]).any(0)  # (B,) samples with no swap
            check.agreeing_samples = int(agree.sum())
            if agree.any():
                check.max_abs_diff_agreeing = _max_diff(outs, refs, agree)
        checks.append(check)
    return checks


# ----------------------------------------------------------------------------- writers
def _meta_for_export(meta: CheckpointMeta, resolution: tuple[int, int]) -> CheckpointMeta:
    return dataclasses.replace(meta, input_size=tuple(resolution))


def _cast(model: DCCNeXt, dtype: str) -> DCCNeXt:
    import copy

    return model if dtype == "float32" else copy.deepcopy(model).to(DTYPES[dtype])


def _reload_checks(load: Callable[[], nn.Module], model: nn.Module, inputs, dtype: str,
                   loaded_by: str) -> list[ParityCheck]:
    """Weights formats: the reloaded model (float32, as users load it) against the eager model."""
    reloaded = load().eval()
    return check_torch(lambda x: reloaded(x.float()), model, inputs, dtype, loaded_by)


def _write_safetensors(model, meta, out: Path, dtype: str, inputs) -> list[ParityCheck]:
    import timm

    save_weights(out, _cast(model, dtype), meta)
    checks = _reload_checks(lambda: DCCNeXt.from_checkpoint(out)[0], model, inputs, dtype, "DCCNeXt.from_checkpoint")
    name = f"dccnext_{meta.variant}"
    if timm.is_model(name):  # a 'custom' config has no timm name to load by
        checks += _reload_checks(
            lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))),
            model, inputs[:1], dtype, "timm.create_model",
        )
    return checks


def _write_folder(model, meta, out: Path, dtype: str, inputs, resolution, card_name: str | None,
                  repo_id: str | None = None) -> list[ParityCheck]:
    """timm's `save_for_hf` layout (config.json + model.safetensors), and with `card_name` the model card."""
    import timm

    save_weights(out / "model.safetensors", _cast(model, dtype), meta)
    atomic_write_text(out / "config.json", json.dumps(hub_config(model, meta, resolution), indent=2) + "\n")
    if card_name is not None:
        atomic_write_text(out / "README.md", model_card(meta, card_name, resolution, repo_id))
    checks = _reload_checks(lambda: timm.create_model(f"local-dir:{out}", pretrained=True), model, inputs, dtype,
                            "timm.create_model")
    checks += _reload_checks(lambda: DCCNeXt.from_checkpoint(out / "model.safetensors")[0], model, inputs[:1], dtype,
                             "DCCNeXt.from_checkpoint")
    return checks


def _dynamic_shapes(resolution: tuple[int, int]) -> dict[str, dict[int, Any]]:
    dim = torch.export.Dim
    return {"x": {
        0: dim("batch", min=1, max=4096),
        2: dim("height", min=MIN_EXPORT_SIZE, max=MAX_EXPORT_SIZE),
        3: dim("width", min=MIN_EXPORT_SIZE, max=MAX_EXPORT_SIZE),
    }}


def _example(model: DCCNeXt, resolution: tuple[int, int], dtype: str) -> torch.Tensor:
    # Batch 2: torch.export specialises a size-1 axis, which would pin the batch.
    return torch.randn(2, model.in_chans, *resolution, generator=torch.Generator().manual_seed(1)).to(DTYPES[dtype])


class _Exportable(nn.Module):
    """A forward whose argument is named `x`, for `dynamic_shapes` (and which selects features)."""

    def __init__(self, model: DCCNeXt, features: bool):
        super().__init__()
        self.inner = _Features(model) if features else model

    def forward(self, x: torch.Tensor):
        return self.inner(x)


def write_onnx_graph(module: nn.Module, example: torch.Tensor, out: Path,
                     output_names: Sequence[str] = ("logits",)) -> None:
    """The one ONNX export call: the dynamo exporter at opset `ONNX_OPSET`, dynamic batch, height and width, input
    'images'. `export` writes users' files with it and `benchmarks/deploy.py` exports its peer models (timm's)
    with it, so both time and ship the same kind of graph. `module.forward` must name its argument `x`."""
    resolution = tuple(example.shape[-2:])
    # ONNX has no Sort: the clustering selects with TopK, whose ties go to the lower index (the same rule); the
    # GELU is written in the op order onnxruntime fuses into one Gelu node, the cluster convolution as one gather
    onnx_forms = {"export_target": "onnx"}
    module = optimize_for_inference(copy.deepcopy(module), pointwise_conv=True)  # ORT's MatMul form swapped ties
    with use_operator_settings(**onnx_forms), contextlib.redirect_stdout(sys.stderr):
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=ONNX_OPSET, dynamic_shapes=_dynamic_shapes(resolution),
            input_names=["images"], output_names=list(output_names), verbose=False,
        )

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)

    atomic_write(out, write)


def _write_onnx(module, reference, out: Path, resolution, inputs, features: bool) -> list[ParityCheck]:
    example = _example(reference if isinstance(reference, DCCNeXt) else reference.model, resolution, "float32")
    write_onnx_graph(module, example, out, _output_names(features))
    return check_onnx(out, reference, inputs, features)


def _write_torchscript(module, reference, out: Path, resolution, inputs, dtype: str) -> list[ParityCheck]:
    import warnings

    example = _example(reference if isinstance(reference, DCCNeXt) else reference.model, resolution, dtype)
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings flag the Python ints (K, loop bounds) that are constant from MIN_EXPORT_SIZE up;
        # torch 2.14 marks torch.jit as deprecated but it is still what many runtimes load.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example)
        atomic_write_bytes(out, _serialised(lambda buffer: torch.jit.save(traced, buffer)))
        loaded = torch.jit.load(str(out))
    return check_torch(loaded, reference, inputs, dtype, "torch.jit.load")


def _serialised(save: Callable[[io.BytesIO], None]) -> bytes:
    """What torch's C++ writers produce, made in memory: written to disk from Python, a full disk is an OSError
    (`torch.export.save` straight to a full disk aborts the process from C++)."""
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _write_exported_program(module, reference, out: Path, resolution, inputs, dtype: str) -> list[ParityCheck]:
    example = _example(reference if isinstance(reference, DCCNeXt) else reference.model, resolution, dtype)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(resolution))

    atomic_write_bytes(out, _serialised(lambda buffer: torch.export.save(program, buffer)))
    with open(out, "rb") as f:  # a file object: torch.export.load warns on names not ending in .pt2
        loaded = torch.export.load(f).module()
    return check_torch(loaded, reference, inputs, dtype, "torch.export.load")


# ----------------------------------------------------------------------------- the entry point
def _check_request(fmt: str, out: Path, features: bool, dtype: str, resolution: tuple[int, int],
                   overwrite: bool, push: str | None) -> None:
    """Refuse what cannot be exported before anything is written: one clear error each."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if fmt in GRAPH_FORMATS and min(resolution) < MIN_EXPORT_SIZE:
        raise ConfigError(
            f"--res {resolution[0]}x{resolution[1]} is below the {fmt} export minimum of {MIN_EXPORT_SIZE} px "
            f"(from there stage 4 has more tokens than K, so K is a graph constant); pass --res {MIN_EXPORT_SIZE} or "
            "more (weights formats keep any size)"
        )
    if features and fmt not in GRAPH_FORMATS:
        raise ConfigError(f"--features applies to graph formats ({', '.join(GRAPH_FORMATS)}), not {fmt}")
    if push is not None and fmt != "hub":
        raise ConfigError(f"--push uploads a Hub folder; use it with --format hub, not {fmt}")
    if push is not None:
        _check_repo_id(push)
    if fmt == "onnx" and dtype != "float32":
        raise ConfigError("ONNX export is float32 only; convert the file afterwards (onnxconverter-common) for fp16")
    for path in output_files(fmt, out):
        check_new_output(path, overwrite, "-o")


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"--push {repo_id!r} is not a Hub repo id; write it as NAME or OWNER/NAME") from None


def _push(out: Path, repo_id: str) -> str:
    """Upload a written and checked Hub folder; a failed upload is one clear error (the folder stays)."""
    try:
        return push_folder(out, repo_id)
    except Exception as e:  # noqa: BLE001 - offline, refused token, no network: the same user-facing failure
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{out} was written and checked, but the upload to {repo_id} failed ({reason}); "
                          f"log in with `hf auth login` and run again, or upload the folder yourself") from None


def _write_and_check(result: ExportResult, model: DCCNeXt, meta: CheckpointMeta, target: Path, inputs,
                     resolution: tuple[int, int], push: str | None) -> None:
    """Write `result.format` at `target` (the staged place) and fill in the checks of the file read back."""
    fmt, dtype, features, out = result.format, result.dtype, result.features, result.path
    reference: nn.Module = _Features(model) if features else model
    if fmt == "safetensors":
        result.checks = _write_safetensors(model, meta, target, dtype, inputs)
    elif fmt in FOLDER_FORMATS:
        card = None if fmt == "timm" else (push.split("/")[-1] if push else out.resolve().name)
        result.checks = _write_folder(model, meta, target, dtype, inputs, resolution, card, push)
    else:
        module = _Exportable(_cast(model, dtype), features).eval()
        if fmt == "onnx":
            result.checks = _write_onnx(module, reference, target, resolution, inputs, features)
            result.notes.append(f"opset {ONNX_OPSET}; input 'images' (batch, {model.in_chans}, H, W)")
        elif fmt == "torchscript":
            result.checks = _write_torchscript(module, reference, target, resolution, inputs, dtype)
            result.notes.append("traced (K is fixed from the minimum size up, so tracing loses nothing)")
        else:
            result.checks = _write_exported_program(module, reference, target, resolution, inputs, dtype)
        result.notes.append(f"dynamic batch, height and width >= {MIN_EXPORT_SIZE} px")


def export_model(
        model: DCCNeXt,
        meta: CheckpointMeta,
        fmt: str,
        output: str | os.PathLike,
        features: bool = False,
        dtype: str = "float32",
        resolution: tuple[int, int] | None = None,
        overwrite: bool = False,
        push: str | None = None,
) -> ExportResult:
    """Write `model` in `fmt` to `output` and check the written artefact against the eager model.

    Weights formats keep the size the model was trained at (the default `resolution`); graph formats need at
    least `MIN_EXPORT_SIZE`. `push` (format "hub") uploads the checked folder to that Hub repo.
    """
    out = Path(output)
    if resolution is None:
        resolution = meta.input_size or (224, 224)
    _check_request(fmt, out, features, dtype, resolution, overwrite, push)

    # on a copy: the caller's model stays as it was; the linears stay Linear, so that the eager reference computes
    # the GEMMs as a reloaded weights file does (ONNX writes its 1x1 convolutions itself, write_onnx_graph)
    model = optimize_for_inference(copy.deepcopy(model), pointwise_conv=False)
    meta = _meta_for_export(meta, resolution)
    inputs = _check_inputs(resolution, model.in_chans, MIN_EXPORT_SIZE if fmt in GRAPH_FORMATS else 32)
    result = ExportResult(fmt, out, dtype, features)
    with staged(out, folder=fmt in FOLDER_FORMATS) as target:  # whole at -o, or nothing there
        _write_and_check(result, model, meta, target, inputs, resolution, push)
    if not result.ok and dtype == "float32":
        worst = max(result.checks, key=lambda c: c.max_abs_diff)
        raise ExportError(
            f"{out} was written but does not match the eager model (max abs diff {worst.max_abs_diff:.3g} at "
            f"{worst.shape}, tolerance {worst.tolerance:g}); please report this as a bug"
        )
    if push is not None and result.ok:
        result.notes.append(f"uploaded to https://huggingface.co/{push}: {_push(out, push)}")
    return result
