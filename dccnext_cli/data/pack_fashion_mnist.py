"""Maintainer tool: rebuild the embedded Fashion-MNIST subset from the original IDX files.

    apt-get install dataset-fashion-mnist      # Debian's copy of the original files (MIT licence)
    python -m dccnext_cli.data.pack_fashion_mnist /usr/share/datasets/fashion-mnist

Keeps a class-balanced 3,000 images per class of the training set (the first ones in file order) and the whole
10,000-image test set, so that the package stays under 30 MB while the quickstart still clears 85 % top-1.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

from .builtin import BUILTIN_DIR, FASHION_MNIST_CLASSES

PER_CLASS = 3000


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST container: magic, dims, raw uint8) as an array."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pack(source: Path, out: Path) -> Path:
    train_x, train_y = read_idx(source / "train-images-idx3-ubyte.gz"), read_idx(source / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(source / "t10k-images-idx3-ubyte.gz"), read_idx(source / "t10k-labels-idx1-ubyte.gz")
    keep = np.sort(np.concatenate([np.flatnonzero(train_y == c)[:PER_CLASS] for c in range(10)]))
    np.savez_compressed(out, train_images=train_x[keep], train_labels=train_y[keep],
                        test_images=test_x, test_labels=test_y, class_names=np.array(FASHION_MNIST_CLASSES))
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    path = pack(src, BUILTIN_DIR / "fashion_mnist.npz")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
