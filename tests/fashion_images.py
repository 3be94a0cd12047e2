"""A small image folder (imagefolder: layout) cut from the embedded Fashion-MNIST, for tests of real runs."""

from __future__ import annotations

from pathlib import Path


def write_image_folder(root: Path, train_per_class: int, validation_per_class: int) -> Path:
    """Classes 0 and 1 as root/{train,validation}/class<label>/<index>.png (28x28), the first images of each."""
    from dccnext_cli.data.builtin import open_builtin

    data = open_builtin("fashion-mnist", "train")
    per_class = train_per_class + validation_per_class
    counts = {0: 0, 1: 0}
    for i in range(len(data)):
        label = int(data.labels[i])
        if label in counts and counts[label] < per_class:
            folder = root / ("train" if counts[label] < train_per_class else "validation") / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            data[i]["image"].save(folder / f"{i}.png")
            counts[label] += 1
        if all(c == per_class for c in counts.values()):
            return root
    raise AssertionError("not enough images")
