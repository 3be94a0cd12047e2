"""A folder of ImageNet-sized JPEGs to time the input pipeline on, made offline from smooth random pictures.

    python -m benchmarks.jpeg_folder /tmp/jpegs --count 1000    # then --data imagefolder:/tmp/jpegs

Decoding cost depends on pixel count and JPEG quality, not on content: 500x375 (ImageNet's typical size) at
quality 90, two classes under train/ (the layout `imagefolder:` reads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpeg_folder(root: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """`count` JPEGs of `size` (width, height) under root/train/class_{0,1}/; returns root."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        folder = root / "train" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noise = rng.integers(-12, 13, (height, width, 3))
        pixels = np.clip(np.asarray(picture, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    make_jpeg_folder(args.root, args.count)
    print(f"imagefolder:{args.root}")


if __name__ == "__main__":
    main()
