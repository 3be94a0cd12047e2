"""Small real data for the training tests (helpers): Fashion-MNIST images from the embedded set, written as an image
folder and as Hub-style parquet shards (with one corrupt image each where a test asks for it)."""

from __future__ import annotations

import io
from pathlib import Path

from dccnext_cli.data.builtin import open_builtin

CLASSES = 4
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 4
CORRUPT = b"\xff\xd8\xff\xe0 this is not really a JPEG"


def _samples(split: str, per_class: int) -> list[tuple[object, int]]:
    data = open_builtin("fashion-mnist", split)
    out, counts = [], dict.fromkeys(range(CLASSES), 0)
    for i in range(len(data)):
        label = int(data.labels[i])
        if label < CLASSES and counts[label] < per_class:
            counts[label] += 1
            out.append((data[i]["image"], label))
        if all(c == per_class for c in counts.values()):
            return out
    raise AssertionError("not enough images")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_imagefolder(root: Path, corrupt: bool = False) -> Path:
    names = open_builtin("fashion-mnist", "train").class_names
    for split, per_class in (("train", TRAIN_PER_CLASS), ("validation", VAL_PER_CLASS)):
        for i, (image, label) in enumerate(_samples("train" if split == "train" else "test", per_class)):
            folder = root / split / names[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.png").write_bytes(_png(image))
        if corrupt:
            (root / split / names[0].replace("/", "-") / "broken.jpg").write_bytes(CORRUPT)
    return root


def write_parquet(root: Path, corrupt: bool = False, empty_validation: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("validation", VAL_PER_CLASS)):
        rows = [({"bytes": _png(img), "path": f"{split}-{i}.png"}, label)
                for i, (img, label) in enumerate(_samples("train" if split == "train" else "test", per_class))]
        if corrupt:
            rows.insert(3, ({"bytes": CORRUPT, "path": "broken.jpg"}, 0))
        if split == "validation" and empty_validation:
            rows = []
        table = pa.table({"image": pa.array([r[0] for r in rows], pa.struct([("bytes", pa.binary()),
                                                                               ("path", pa.string())])),
                          "label": pa.array([r[1] for r in rows], pa.int64())})
        half = len(rows) // 2
        for shard, part in enumerate((table.slice(0, half), table.slice(half))):
            pq.write_table(part, root / f"{split}-{shard:05d}-of-00002.parquet")
    return root


# a tiny, fast recipe: b0 at 32 px, no heavy augmentation, one process
TINY = ["--res", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--set", "warmup_epochs=0",
        "--set", "log_every=1"]
