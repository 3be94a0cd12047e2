"""Fixtures of the shared-engine tests: a small image folder from the embedded Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
from fashion_images import write_image_folder


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """2 classes x 16 training images, 2 x 4 validation images, 28x28 PNGs."""
    return write_image_folder(tmp_path_factory.mktemp("images"), 16, 4)
