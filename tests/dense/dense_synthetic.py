"""Small dense-task data sets that the tests draw themselves: COCO-format shapes and ADE20K-style label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# category ids deliberately not contiguous (COCO's are not either)
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]
SIZE = (64, 80)  # height, width


def _shapes(index: int) -> list[tuple[int, list[float]]]:
    """(category id, polygon) per object of image `index`; positions vary with the index."""
    dx, dy = 4 * index, 3 * index
    square = [8 + dx, 8 + dy, 36 + dx, 8 + dy, 36 + dx, 30 + dy, 8 + dx, 30 + dy]
    triangle = [44 - dx, 58 - dy, 76 - dx, 58 - dy, 60 - dx, 34 - dy]
    return [(3, square)] + ([(7, triangle)] if index % 2 == 0 else [])


def make_coco(root: Path, num_images: int = 4, rle_first: bool = True) -> Path:
    """Images with coloured shapes and a COCO instances JSON (polygons; the first object as uncompressed RLE)."""
    from pycocotools import mask as mask_utils

    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    h, w = SIZE
    for i in range(num_images):
        img = Image.new("RGB", (w, h), (20, 20, 20))
        draw = ImageDraw.Draw(img)
        for cat, poly in _shapes(i):
            draw.polygon(poly, fill=(230, 40, 40) if cat == 3 else (40, 200, 60))
            xs, ys = poly[0::2], poly[1::2]
            segm: object = [poly]
            if rle_first and i == 0 and cat == 3:
                m = mask_utils.decode(mask_utils.frPyObjects([poly], h, w))[..., 0]
                runs, flat, count, value = [], m.flatten(order="F"), 0, 0
                for v in flat:
                    if v != value:
                        runs.append(count)
                        count, value = 0, v
                    count += 1
                runs.append(count)
                segm = {"size": [h, w], "counts": [int(r) for r in runs]}
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "area": float((max(xs) - min(xs)) * (max(ys) - min(ys))), "segmentation": segm,
            })
        name = f"img{i}.png"
        img.save(root / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann


def make_ade20k(root: Path, num_images: int = 3, split: str = "training") -> Path:
    """ADEChallengeData2016-style folders: images/<split>/*.jpg and annotations/<split>/*.png (0 = other)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = SIZE
    rng = np.random.default_rng(0)
    for i in range(num_images):
        label = np.zeros((h, w), dtype=np.uint8)
        label[: h // 2, :] = 1 + i % 3
        label[h // 2:, w // 3:] = 4
        label[5:15, 5:25] = 5
        image = (rng.integers(0, 30, (h, w, 3)) + label[..., None] * 40).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / split / f"ADE_{i:04d}.jpg")
        Image.fromarray(label).save(root / "annotations" / split / f"ADE_{i:04d}.png")
    return root


