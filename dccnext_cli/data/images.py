"""The one image-loading path: files -> RGB PIL images -> normalised tensors.

`eval`, `predict`, the figures and the export checks all read images here, so that a grayscale or
RGBA file is converted the same way everywhere and a bad file fails with the same clear line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError

__all__ = ["load_image", "decode_image", "eval_transform", "load_image_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully and return it as RGB (grayscale, palette and RGBA are converted)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    return decode_image(path, str(path))


def decode_image(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """Decode a file or in-memory bytes (a parquet or webdataset cell) to RGB; bad data raises ImageError."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGB", rgba.size, (255, 255, 255))
                background.paste(rgba, mask=rgba.getchannel("A"))
                return background
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file Pillow can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is a corrupt or truncated image ({e}); re-save or re-download it") from None


def eval_transform(
        resolution: tuple[int, int],
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
):
    """timm's eval transform (resize the short side to size/crop_pct, centre crop, normalise)."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, *resolution),
        is_training=False,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def load_image_tensor(path: str | os.PathLike, resolution: tuple[int, int], **transform_kwargs) -> torch.Tensor:
    """One image as a (3, H, W) float tensor, ready for the model."""
    return eval_transform(resolution, **transform_kwargs)(load_image(path))
