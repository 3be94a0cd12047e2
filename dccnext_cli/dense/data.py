"""Data sets for the dense tasks: COCO-format instances (`coco:PATH`) and ADE20K-style segmentation (`ade20k:PATH`).

Both read images through the one image-loading path (`data.images.load_image`). Everything a user can get
wrong in the files (missing JSON keys, an empty category list, masks that do not fit their image, label maps
of another size) is found here and reported as one `DataError` line.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from ..errors import ConfigError, DataError

__all__ = [
    "CocoInstances",
    "ADE20KSegmentation",
    "SegAugment",
    "resolve_coco",
    "open_dense_source",
    "SCHEMES",
    "detection_collate",
    "segmentation_collate",
    "IGNORE_INDEX",
]

IGNORE_INDEX = 255  # ADE20K's label 0 ("other") and crop padding
SCHEMES = ("coco", "ade20k")  # the --data prefixes of the dense tasks


# --------------------------------------------------------------------- COCO
def _require(obj: Any, keys: tuple[str, ...], what: str, source: Path) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: {what} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{source}: {what} lacks the key(s) {', '.join(missing)}; a COCO instances file needs them")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_image_entry(img: dict[str, Any], index: int, source: Path) -> None:
    """Types of an image entry's fields, named with the entry, before anything is built from them."""
    where = f"{source}: image entry #{index}"
    if not (_is_int(img["id"]) or isinstance(img["id"], str)):
        raise DataError(f"{where} has id {img['id']!r}; an image id is an integer")
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        raise DataError(f"{where} has file_name {img['file_name']!r}; it must be a file name")
    for key in ("height", "width"):
        if not (_is_int(img[key]) and img[key] > 0):
            raise DataError(f"{where} ({img['file_name']}) has {key} {img[key]!r}; it must be a positive integer")


def _check_annotation(ann: dict[str, Any], index: int, source: Path) -> None:
    where = f"{source}: annotation #{index}"
    for key in ("image_id", "category_id"):
        if not (_is_int(ann[key]) or isinstance(ann[key], str)):
            raise DataError(f"{where} has {key} {ann[key]!r}; it must be an integer id")
    if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
        raise DataError(f"{where} bbox must be [x, y, width, height]")
    if not all(_is_number(v) for v in ann["bbox"]):
        raise DataError(f"{where} bbox {ann['bbox']!r} holds a value that is not a finite number; write it as "
                        "[x, y, width, height] in pixels")
    if ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
        raise DataError(f"{where} bbox {ann['bbox']!r} has a negative width or height")
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd", 0), bool):
        raise DataError(f"{where} has iscrowd {ann.get('iscrowd')!r}; it is 0 or 1")


def _decode_mask(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an (H, W) uint8 mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list)]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise DataError(f"{where}: polygons need an even number (>= 6) of coordinates each")
        if not all(_is_number(v) for p in polys for v in p):
            raise DataError(f"{where}: a polygon holds a coordinate that is not a finite number")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise DataError(
                f"{where}: its RLE mask is {segm['size'][1]} wide, {segm['size'][0]} high but the image is "
                f"{width} wide, {height} high; "
                "masks must have their image's size"
            )
        rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
    else:
        raise DataError(f"{where}: segmentation must be a list of polygons or an RLE dict with counts and size")
    return mask_utils.decode(rle)


class CocoInstances(Dataset):
    """COCO-format instances: (image (3, H, W) float in [0, 1], target) with torchvision's target keys.

    target: `boxes` (N, 4) xyxy pixels, `labels` (N,) 1..C in category-id order (0 is background),
    `masks` (N, H, W) uint8 when `with_masks`, `iscrowd` (N,), `image_id`. Crowd regions are kept for
    evaluation and dropped for training (`train=True`), as are boxes without area. `train` also flips
    horizontally with probability `hflip`.
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path | None = None, with_masks: bool = True,
                 train: bool = False, hflip: float = 0.5):
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise DataError(f"COCO annotation file {self.ann_file} does not exist")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.ann_file} is not valid JSON ({e})") from None
        src = self.ann_file
        _require(data, ("images", "annotations", "categories"), "the top level", src)
        if not isinstance(data["categories"], list) or not data["categories"]:
            raise DataError(f"{src}: the category list is empty; list every class as {{'id': ..., 'name': ...}}")
        for cat in data["categories"]:
            _require(cat, ("id", "name"), "a category", src)
            if not _is_int(cat["id"]):
                raise DataError(f"{src}: category {cat['name']!r} has id {cat['id']!r}; a category id is an integer")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = [str(c["name"]) for c in cats]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.images: list[dict[str, Any]] = []
        for img in data["images"]:
            _require(img, ("id", "file_name", "height", "width"), "an image entry", src)
            _check_image_entry(img, len(self.images), src)
            self.images.append(img)
        if not self.images:
            raise DataError(f"{src} lists no images")
        self.image_root = Path(image_root) if image_root is not None else self.ann_file.parent
        self.anns: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        needed = ("image_id", "category_id", "bbox") + (("segmentation",) if with_masks else ())
        for i, ann in enumerate(data["annotations"]):
            _require(ann, needed, f"annotation #{i}", src)
            if ann["image_id"] not in self.anns:
                raise DataError(f"{src}: annotation #{i} refers to image_id {ann['image_id']}, which is not listed")
            if ann["category_id"] not in self.cat_to_label:
                raise DataError(f"{src}: annotation #{i} has category_id {ann['category_id']}, not in categories")
            _check_annotation(ann, i, src)
            self.anns[ann["image_id"]].append(ann)
        self.with_masks = with_masks
        self.train = train
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> dict[str, torch.Tensor]:
        info = self.images[index]
        h, w = int(info["height"]), int(info["width"])
        anns = self.anns[info["id"]]
        if self.train:
            anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(index),
        }
        if self.with_masks:
            masks = [
                _decode_mask(a["segmentation"], h, w, f"{self.ann_file}: annotation of image {info['file_name']}")
                for a in anns
            ]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[index]
        image = load_image(self.image_root / info["file_name"])
        if image.size != (int(info["width"]), int(info["height"])):
            raise DataError(
                f"{info['file_name']} is {image.size[1]}x{image.size[0]} but {self.ann_file.name} says "
                f"{info['height']}x{info['width']}; its boxes and masks would not fit"
            )
        x = pil_to_tensor(image).float().div_(255)
        target = self.target(index)
        if self.train and random.random() < self.hflip:
            x = x.flip(-1)
            width = x.shape[-1]
            target["boxes"][:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return x, target


def resolve_coco(path: str | Path, split: str = "train") -> tuple[Path, Path]:
    """(annotation file, image folder) for `coco:PATH`.

    PATH is a JSON file (images relative to its folder, or to `ROOT/<split>` for
    `ROOT/annotations/instances_<split>.json`) or a COCO root with
    `annotations/instances_{train,val}2017.json` and `train2017/`, `val2017/`.
    """
    path = Path(path)
    if path.is_dir():
        name = "train2017" if split == "train" else "val2017"
        ann = path / "annotations" / f"instances_{name}.json"
        if not ann.is_file():
            raise DataError(f"{path} has no annotations/instances_{name}.json; pass coco:FILE.json instead")
        return ann, path / name
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist")
    if path.parent.name == "annotations" and path.stem.startswith("instances_"):
        images = path.parent.parent / path.stem.removeprefix("instances_")
        if images.is_dir():
            return path, images
    return path, path.parent


# --------------------------------------------------------------------- ADE20K
@dataclass
class SegAugment:
    """MMSegmentation's ADE20K training pipeline: random resize within `scale` x [0.5, 2], random crop,
    horizontal flip. Photometric distortion is not applied [D]."""

    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    cat_max_ratio: float = 0.75


def _fit_scale(height: int, width: int, scale: tuple[int, int]) -> float:
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(height, width), short_edge / min(height, width))


class ADE20KSegmentation(Dataset):
    """Images and label PNGs paired by file stem: (normalised image (3, H, W), label (H, W) int64).

    Labels follow ADE20K: 0 is "other" (ignored, 255 here) and 1..C are the classes (0..C-1 here).
    Training applies `SegAugment`; evaluation resizes the image into `scale` and keeps the label at full size.
    """

    def __init__(self, root: str | Path, split: str = "training", num_classes: int = 150, train: bool = False,
                 augment: SegAugment | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"ADE20K folder {root} does not exist")
        images, labels = root / "images" / split, root / "annotations" / split
        if not images.is_dir():
            images, labels = root / "images", root / "annotations"
        if not images.is_dir() or not labels.is_dir():
            raise DataError(
                f"{root} needs images/{split}/ and annotations/{split}/ (ADEChallengeData2016) or images/ and "
                "annotations/ with label PNGs named like the images"
            )
        exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
        self.images = sorted(p for p in images.iterdir() if p.suffix.lower() in exts)
        if not self.images:
            raise DataError(f"{images} holds no images")
        self.labels = []
        for image in self.images:
            label = labels / f"{image.stem}.png"
            if not label.is_file():
                raise DataError(f"{image.name} has no label map {label}; every image needs a PNG of the same name")
            self.labels.append(label)
        self.num_classes = num_classes
        self.train = train
        self.augment = augment or SegAugment()
        self.class_names = None

    def __len__(self) -> int:
        return len(self.images)

    def load_label(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        path = self.labels[index]
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path} is a {img.mode} image; label maps must be single-channel PNGs of class ids")
            if img.size != size:
                raise DataError(
                    f"{path} is {img.size[1]}x{img.size[0]} but its image is {size[1]}x{size[0]}; "
                    "a label map must have its image's size"
                )
            label = torch.from_numpy(np.array(img, dtype=np.int64))
        if int(label.max()) > self.num_classes:
            raise DataError(f"{path} holds class {int(label.max())}, above the {self.num_classes} classes")
        return torch.where(label == 0, IGNORE_INDEX, label - 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.images[index])
        label = self.load_label(index, image.size)
        x = pil_to_tensor(image).float().div_(255)[None]
        aug = self.augment
        h, w = x.shape[-2:]
        if self.train:
            s = _fit_scale(h, w, aug.scale) * random.uniform(*aug.ratio_range)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
            x, label = self._crop(x, label)
            if random.random() < aug.hflip:
                x, label = x.flip(-1), label.flip(-1)
        else:
            s = _fit_scale(h, w, aug.scale)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x - mean) / std)[0], label

    def _crop(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crop (retried up to 10 times so that no class covers more than cat_max_ratio), padded."""
        ch, cw = self.augment.crop_size
        h, w = label.shape
        for _ in range(10):
            top, left = random.randint(0, max(h - ch, 0)), random.randint(0, max(w - cw, 0))
            crop = label[top:top + ch, left:left + cw]
            counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten(), minlength=1)
            if len(counts) > 1 and counts.max() / counts.sum() < self.augment.cat_max_ratio:
                break
        x = x[..., top:top + ch, left:left + cw]
        label = label[top:top + ch, left:left + cw]
        pad_h, pad_w = ch - label.shape[0], cw - label.shape[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return x, label


# --------------------------------------------------------------------- sources and batching
def open_dense_source(spec: str | Dataset, scheme: str, task_name: str, train: bool, *, with_masks: bool = False,
                      num_classes: int | None = None, augment: SegAugment | None = None,
                      hflip: float = 0.5, split: str | None = None) -> Dataset:
    """`coco:PATH` or `ade20k:PATH`, whichever `scheme` the task reads; a Dataset passes through. `split`:
    train (training) or validation (val), default the one `train` says."""
    if isinstance(spec, Dataset):
        return spec
    given, sep, path = str(spec).partition(":")
    if not sep or given not in SCHEMES:
        raise DataError(f"data {spec!r} is not coco:PATH or ade20k:PATH; {task_name} reads {scheme}:PATH")
    if given != scheme:
        raise DataError(f"{task_name} reads {scheme}:PATH, not {given}:")
    on_train = _train_split(split, train)
    if scheme == "coco":
        ann, images = resolve_coco(path, "train" if on_train else "val")
        return CocoInstances(ann, images, with_masks=with_masks, train=train, hflip=hflip)
    return ADE20KSegmentation(path, "training" if on_train else "validation", num_classes or 150, train, augment)


def _train_split(split: str | None, train: bool) -> bool:
    """Whether `split` names the training images (None: the ones `train` says)."""
    if split is None:
        return train
    if split.lower() not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r}: a dense data set has train and validation; choose one of them")
    return SPLIT_NAMES[split.lower()]


SPLIT_NAMES = {"train": True, "training": True, "validation": False, "val": False}


def detection_collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def segmentation_collate(batch: list) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """Stack same-size crops; keep evaluation images (of different sizes) as lists."""
    images, labels = [b[0] for b in batch], [b[1] for b in batch]
    if all(i.shape == images[0].shape for i in images) and all(t.shape == labels[0].shape for t in labels):
        return torch.stack(images), torch.stack(labels)
    return images, labels
