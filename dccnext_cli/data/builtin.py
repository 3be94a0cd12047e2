"""The embedded data set: a real, licence-clean image set shipped inside the package, so `train` works offline.

`builtin:fashion-mnist` is Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, Zalando SE, MIT licence; see
`builtin/README.md`): 30,000 training images (3,000 per class) and the full 10,000-image test set, 28x28 grey,
stored as one compressed `.npz` (about 17 MB). Images come out as RGB PIL images so that the same model and
transforms serve photos too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["BUILTIN_DIR", "BUILTIN_SETS", "FASHION_MNIST_CLASSES", "BuiltinImages", "open_builtin"]

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_SETS = {"fashion-mnist": "fashion_mnist.npz"}
SPLIT_ALIASES = {"train": "train", "test": "test", "validation": "test", "val": "test"}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@lru_cache(maxsize=2)
def _arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(BUILTIN_DIR / BUILTIN_SETS[name]) as npz:
        return {key: npz[key] for key in npz.files}


class BuiltinImages(Dataset):
    """A map-style split: item i is {"image": RGB PIL image, "label": int}, like a Hugging Face record."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str]):
        self.images, self.labels, self.class_names = images, labels, class_names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Image.Image | int]:
        return {"image": Image.fromarray(self.images[index]).convert("RGB"), "label": int(self.labels[index])}


def open_builtin(name: str, split: str) -> BuiltinImages:
    if name not in BUILTIN_SETS:
        raise DataError(f"no built-in data set {name!r}; use builtin:{', builtin:'.join(BUILTIN_SETS)}")
    if split not in SPLIT_ALIASES:
        raise DataError(f"builtin:{name} has splits train and test, not {split!r}")
    arrays = _arrays(name)
    part = SPLIT_ALIASES[split]
    return BuiltinImages(arrays[f"{part}_images"], arrays[f"{part}_labels"], [str(c) for c in arrays["class_names"]])
