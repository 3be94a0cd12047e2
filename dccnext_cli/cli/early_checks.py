"""What a command checks before torch loads or a model is built: paths, images, outputs and data sources.

Loading torch and building a model takes from seconds to a minute; a typo in a path should not wait for it.
Each check here imports no torch and raises the library's own one-line error (the library keeps its checks
for Python callers); the commands call them in their first lines. tests/cli/test_early_checks.py holds each
to that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from ..errors import CheckpointError

__all__ = ["WEIGHTS_NAME", "checkpoint_file", "weights_file", "image_files", "data_source", "train_data",
           "export_output", "figure_outputs"]

WEIGHTS_NAME = "model.safetensors"  # what `train` leaves in a run folder; --weights RUN_DIR means this file
err_console = Console(stderr=True)


def checkpoint_file(path: Path | None) -> Path | None:
    """--weights FILE, or a run folder standing for its model.safetensors (said on stderr); None stays None."""
    if path is None:
        return None
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"--weights {path} is a folder without {WEIGHTS_NAME}; pass a run folder "
                                  "of `dccnext train` or a .safetensors file")
        err_console.print(f"--weights {path} is a run folder: using {weights}", highlight=False)
        return weights
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist; pass a .safetensors file or a run folder")
    return path


def weights_file(path: Path | None) -> None:
    """--weights of `train`: a file to start from (a dccnext checkpoint or ConvFormer weights) that exists."""
    if path is not None and not path.is_file():
        raise CheckpointError(f"--weights {path} {'is a folder' if path.is_dir() else 'does not exist'}; pass a "
                              "dccnext checkpoint or ConvFormer weights file")


def image_files(paths: list[Path]) -> None:
    """Every image exists and decodes (Pillow only), so a bad one is named before the model loads."""
    from ..data.images import load_image

    for path in paths:
        load_image(path)


def data_source(uri: str | None) -> None:
    """--data has a known scheme and, for a local source, exists (a bare path is told its scheme); the dense
    tasks' schemes (coco:, ade20k:) are their own loaders' to check."""
    from ..tasks import TASKS, is_dense

    dense_schemes = {task.data_scheme for task in TASKS.values() if is_dense(task)}
    if uri is not None and uri.partition(":")[0] not in dense_schemes:
        from ..data.sources import parse_data

        parse_data(uri)


def train_data(uri: str | None, recipe: str | None, set_items: list[str] | None, variant: str | None) -> None:
    """--data of `train`: its scheme, and an image folder holding the splits the recipe reads."""
    if uri is None:
        return
    from ..classification.recipe import RECIPE_ROOT, TrainRecipe, default_recipe_name
    from ..common.recipe_files import merge_overrides, parse_overrides, read_recipe
    from ..data.sources import check_split_folders, parse_data

    source = parse_data(uri)
    # The recipe's raw keys, not the checked recipe: checking it asks timm about augmentations (seconds).
    keys, _ = read_recipe(recipe or default_recipe_name(uri, variant), RECIPE_ROOT, what="recipe")
    merge_overrides(keys, parse_overrides(set_items))
    defaults = {field.name: field.default for field in dataclasses.fields(TrainRecipe)}
    splits = [keys.get(name, defaults[name]) for name in ("train_split", "eval_split")]
    check_split_folders(source, [str(split) for split in splits if split])


def export_output(fmt: str, output: Path, overwrite: bool) -> None:
    """export -o: the right kind of path (file or folder), not holding what it would write, writable."""
    from ..common.files import check_new_output
    from ..export_formats import output_files

    for path in output_files(fmt, output):
        check_new_output(path, overwrite, "-o")


def figure_outputs(output: Path | None, html: Path | None, overwrite: bool) -> None:
    """-o and --html of the figure commands: a known extension, not a folder, not existing, writable."""
    from ..viz.outputs import check_html_output, check_output

    if output is not None:
        check_output(output, overwrite)
    if html is not None:
        check_html_output(html, overwrite)
