"""What `export` writes, named without importing torch: the CLI's --format choices, size floor and output
files come from here, so that a wrong or existing -o is refused before the model loads."""

from __future__ import annotations

from pathlib import Path

from .errors import OutputExistsError

FORMATS = ("safetensors", "timm", "hub", "onnx", "torchscript", "exported-program")
GRAPH_FORMATS = ("onnx", "torchscript", "exported-program")
FOLDER_FORMATS = ("timm", "hub")
MIN_EXPORT_SIZE = 160  # px, graph formats: stage 4 then has >= 25 tokens > K = 18, so K is constant in the graph
FOLDER_FILES = {"timm": ("config.json", "model.safetensors"), "hub": ("config.json", "model.safetensors", "README.md")}


def output_files(fmt: str, out: Path) -> list[Path]:
    """The files an export to `out` writes; a file where a folder goes (or the other way round) is refused."""
    if fmt in FOLDER_FORMATS and out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; the {fmt} format writes a folder, choose a folder path for -o")
    if fmt not in FOLDER_FORMATS and out.is_dir():
        raise OutputExistsError(f"{out} is a folder; the {fmt} format writes one file, choose a file path for -o")
    return [out / name for name in FOLDER_FILES[fmt]] if fmt in FOLDER_FORMATS else [out]
