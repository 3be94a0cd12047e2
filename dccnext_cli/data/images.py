"""The one image-loading path: files -> RGB PIL images -> normalised tensors.

`eval`, `predict`, training, the figures and the export checks all read images here, so that a grayscale or
RGBA file is converted the same way everywhere, a phone photo is turned upright by its EXIF orientation
everywhere (as every viewer shows it), and a bad file fails with the same clear line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

if TYPE_CHECKING:  # torch loads with the model, not with an image check (commands check images first)
    import torch

__all__ = ["load_image", "decode_image", "upright", "eval_transform", "load_image_tensor"]

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
            img = upright(img)
            if img.mode in WIDE_MODES:
                return _from_wide(img, name)
            if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGB", rgba.size, (255, 255, 255))
                background.paste(rgba, mask=rgba.getchannel("A"))
                return background
            return img.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has more pixels than Pillow's decompression-bomb limit "
                         f"({2 * Image.MAX_IMAGE_PIXELS:,}); resize it if it is a real image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file Pillow can read (JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is a corrupt or truncated image ({e}); re-save or re-download it") from None


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation (a phone held sideways) applied, the tag dropped."""
    orientation = img.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # one channel, more than 8 bits


def _from_wide(img: Image.Image, name: str) -> Image.Image:
    """16-bit (and 32-bit integer) grayscale scaled to 8 bits: Pillow's convert("RGB") would clip it white."""
    if img.mode == "F":
        raise ImageError(f"{name} is a floating-point image; save it as 8- or 16-bit PNG/TIFF")
    values = np.asarray(img, dtype=np.float64)
    if values.min() < 0 or values.max() > 65535:
        raise ImageError(f"{name} has pixel values outside 0..65535; save it as an 8- or 16-bit image")
    gray = np.rint(values / 257.0).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def eval_transform(
        resolution: tuple[int, int],
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
):
    """timm's eval transform (resize the short side to size/crop_pct, centre crop, normalise). A model trained
    with `random` interpolation is evaluated with bicubic, as timm's own evaluation does."""
    from timm.data import create_transform

    if interpolation == "random":
        interpolation = "bicubic"

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
