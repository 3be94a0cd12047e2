"""Where images come from: one `--data` value -> a split of (image, label) records.

    builtin:fashion-mnist      the embedded set (default; offline anywhere)
    imagefolder:PATH           class-per-folder trees PATH/train/<class>/*.jpg, PATH/validation/<class>/...
    parquet:GLOB               Hub-style shards (image bytes + label); the split comes from each file's name
                               (train-00000-of-00004.parquet, validation/..., test-...), else everything is train
    hf:REPO[:CONFIG]           any Hub image-classification dataset, streamed (ImageNet: hf:timm/imagenet-1k-wds)

Everything but `builtin:` goes through Hugging Face `datasets`, map-style or streaming. Images are left
undecoded here (`Image(decode=False)`) so that the loader decodes them itself and can skip a corrupt one.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .labels import check_labels, name_map

__all__ = ["DataSource", "ImageSplit", "parse_data", "check_split_folders", "open_split", "KINDS"]

KINDS = ("builtin", "imagefolder", "parquet", "hf")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "target", "fine_label", "category")
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "eval")}


@dataclass(frozen=True)
class DataSource:
    kind: str
    location: str

    @property
    def uri(self) -> str:
        return f"{self.kind}:{self.location}"

    @property
    def default_streaming(self) -> bool:
        return self.kind == "hf"


@dataclass
class ImageSplit:
    """One split, ready for a loader: `dataset` yields records holding `image_column` and `label_column`."""

    source: DataSource
    split: str
    dataset: Any  # a map-style torch/HF dataset, or a datasets.IterableDataset when streaming
    streaming: bool
    image_column: str
    label_column: str
    num_samples: int | None
    class_names: list[str] | None
    label_names: dict[str, int] | None = None  # a column of class names: name -> index (see labels.py)

    @property
    def where(self) -> str:
        """How a one-line error names this split."""
        return f"{self.source.uri} ({self.split})"

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None


def parse_data(uri: str) -> DataSource:
    """Check a `--data` value; a local path that does not exist is an error here, before any work starts."""
    kind, sep, location = uri.partition(":")
    if not sep or kind not in KINDS or not location:
        raise DataError(f"--data {uri!r} is not one of builtin:NAME, imagefolder:PATH, parquet:GLOB, hf:REPO"
                        + _scheme_hint(uri))
    if kind == "imagefolder" and not Path(location).is_dir():
        raise DataError(f"--data {uri}: folder {location} does not exist; give a folder with train/ and "
                        "validation/ class-per-folder trees")
    if kind == "imagefolder" and not _split_folders(Path(location)):
        raise DataError(f"--data {uri}: {location} has no train/ folder; an image folder holds "
                        f"{Path(location) / 'train'}/<class>/*.jpg and {Path(location) / 'validation'}/<class>/...")
    if kind == "parquet" and not _parquet_files(location):
        raise DataError(f"--data {uri}: no .parquet file matches {location}; check the path or the glob")
    return DataSource(kind, location)


def _scheme_hint(uri: str) -> str:
    """For a bare local path: the --data value that reads it."""
    path = Path(uri)
    if path.is_dir():
        return f"; a local folder is read as --data imagefolder:{uri}"
    if path.suffix == ".parquet" or _parquet_files(uri):
        return f"; parquet shards are read as --data parquet:{uri}"
    return ""


def _split_folders(root: Path) -> list[str]:
    """The split folders (train/, validation/, test/ and their aliases) directly under an image folder."""
    words = {w for names in SPLIT_WORDS.values() for w in names}
    return sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in words)


def check_split_folders(source: DataSource, splits: list[str]) -> None:
    """An image folder must hold a folder for every split the run reads: said before any data is opened."""
    if source.kind != "imagefolder":
        return
    found = _split_folders(Path(source.location))
    for split in splits:
        if _split_alias(split, found) is None:
            hint = " (or --set eval_split=null to train without evaluation)" if split != "train" else ""
            raise DataError(f"--data {source.uri} has no {split}/ folder (found: {', '.join(found)}); add "
                            f"{Path(source.location) / split}/<class>/... images{hint}")


def _parquet_files(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*.parquet")
    return sorted(f for f in glob.glob(pattern, recursive=True) if f.endswith(".parquet"))


def _pattern_root(pattern: str) -> str:
    """The folder a pattern starts from: a folder itself, else the path up to its first glob part."""
    if os.path.isdir(pattern):
        return pattern
    head = pattern
    while glob.has_magic(head):
        head = os.path.dirname(head)
    return head if head != pattern else os.path.dirname(pattern)


def _parquet_splits(pattern: str) -> dict[str, list[str]]:
    """A parquet source's files by split, read from each file's path below the pattern's root folder.

    Only the part below counts: `parquet:runs/test_shards` names no split by the folder's own name.
    """
    root = _pattern_root(pattern) or "."
    by_split: dict[str, list[str]] = {}
    for f in _parquet_files(pattern):
        by_split.setdefault(_split_of(os.path.relpath(f, root)), []).append(f)
    return by_split


def _split_of(path: str) -> str:
    words = re.split(r"[/\\_.\-]+", path.lower())
    for split, names in SPLIT_WORDS.items():
        if any(w in names for w in words):
            return split
    return "train"


def _split_alias(split: str, available: list[str]) -> str | None:
    if split in available:
        return split
    for names in SPLIT_WORDS.values():
        if split in names:
            return next((s for s in available if s in names), None)
    return None


def _load_hf(source: DataSource, split: str, streaming: bool):
    import datasets

    try:
        if source.kind == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=source.location, split=split, streaming=streaming)
        if source.kind == "parquet":
            by_split = _parquet_splits(source.location)
            found = _split_alias(split, list(by_split))
            if found is None:
                raise DataError(f"{source.uri} has no {split!r} split (found: {', '.join(sorted(by_split))}); "
                                "name the files train-*.parquet, validation-*.parquet, ...")
            return datasets.load_dataset("parquet", data_files={found: by_split[found]}, split=found,
                                         streaming=streaming)
        repo, _, config = source.location.partition(":")
        return datasets.load_dataset(repo, config or None, split=split, streaming=streaming)
    except DataError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataError(f"{source.uri} has no {split!r} split ({str(e).splitlines()[0]})") from None
        raise DataError(f"{source.uri}: {str(e).splitlines()[0]}") from None
    except (FileNotFoundError, ConnectionError, OSError) as e:
        hint = " (offline? HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise DataError(f"{source.uri}: cannot open split {split!r}{hint}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # datasets raises its own types for empty folders, bad files, missing repos
        raise DataError(f"{source.uri}: cannot open split {split!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _pick(names: list[str], wanted: str | None, known: tuple[str, ...], what: str, source: DataSource) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{source.uri} has no column {wanted!r} (columns: {', '.join(names)})")
        return wanted
    for name in known:
        if name in names:
            return name
    raise DataError(f"{source.uri}: cannot tell which column holds the {what} (columns: {', '.join(names)}); "
                    f"set it with --set {what}_column=NAME")


def open_split(source: DataSource, split: str, *, streaming: bool | None = None, image_column: str | None = None,
               label_column: str | None = None, class_names: list[str] | None = None) -> ImageSplit:
    """Open one split; an empty split or one that does not exist is a DataError naming it. `class_names`: the
    names a column of strings is mapped through (a checkpoint's, when it is evaluated); see labels.py."""
    if source.kind == "builtin":
        from .builtin import open_builtin  # torch's Dataset: imported when data is opened, not when --data is checked

        data = open_builtin(source.location, split)
        return ImageSplit(source, split, data, False, "image", "label", len(data), data.class_names)
    part = _open_hf_split(source, split, streaming, image_column, label_column)
    first = _first_record(part.dataset, source, split)[part.label_column]  # a bad stream fails now, not in a worker
    part.label_names = name_map(first, part.label_column, part.where, part.class_names or class_names)
    if not part.streaming:
        check_labels(part.dataset[part.label_column], part.label_column, part.where, part.label_names)
    return part


def _open_hf_split(source: DataSource, split: str, streaming: bool | None, image_column: str | None,
                   label_column: str | None) -> ImageSplit:
    streaming = source.default_streaming if streaming is None else streaming
    if _local_count(source, split) == 0:
        raise DataError(f"split {split!r} of {source.uri} is empty; add images or pick another split")
    ds = _load_hf(source, split, streaming)
    features = ds.features
    if features is None:  # some streams (webdataset) resolve their columns only on the first record
        first = _first_record(ds, source, split)
        names = list(first)
    else:
        names = list(features)
    image_col = _pick(names, image_column, IMAGE_COLUMNS, "image", source)
    if source.kind == "imagefolder" and label_column is None and not set(LABEL_COLUMNS) & set(names):
        # datasets names no label when every image sits in one folder
        raise DataError(f"split {split!r} of {source.uri} has one class folder; an image folder needs one "
                        "subfolder per class (at least two), e.g. train/cat/*.png and train/dog/*.png")
    label_col = _pick(names, label_column, LABEL_COLUMNS, "label", source)
    class_names = None
    if features is not None:
        import datasets

        if isinstance(features.get(image_col), datasets.Image):
            ds = ds.cast_column(image_col, datasets.Image(decode=False))
        label_feature = features.get(label_col)
        if isinstance(label_feature, datasets.ClassLabel):
            class_names = list(label_feature.names)
    if streaming:
        num = _local_count(source, split)
        info = getattr(ds, "info", None)
        if num is None and info is not None and info.splits and split in info.splits:
            num = info.splits[split].num_examples or None
    else:
        num = len(ds)
        if num == 0:
            raise DataError(f"split {split!r} of {source.uri} is empty; add images or pick another split")
    return ImageSplit(source, split, ds, streaming, image_col, label_col, num, class_names)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _parquet_rows(pq, path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own types for a file that is not parquet
        raise DataError(f"{path} is not a readable parquet file ({str(e).splitlines()[0]}); re-download it or "
                        "remove it from the glob") from None


def _local_count(source: DataSource, split: str) -> int | None:
    """A local stream's length without decoding it: parquet row counts, or image files in the split's folder."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        by_split = _parquet_splits(source.location)
        found = _split_alias(split, list(by_split))
        return sum(_parquet_rows(pq, f) for f in by_split[found]) if found else None
    if source.kind == "imagefolder":
        root = Path(source.location)
        folders = [d for d in root.iterdir() if d.is_dir() and _split_alias(split, [d.name]) == d.name]
        if not folders:
            return None
        return sum(1 for d in folders for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return None


def _first_record(ds, source: DataSource, split: str) -> dict:
    try:
        return next(iter(ds))
    except StopIteration:
        raise DataError(f"split {split!r} of {source.uri} is empty; add images or pick another split") from None
