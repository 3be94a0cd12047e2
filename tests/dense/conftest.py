"""Fixtures of the dense-task tests: the data sets of dense_synthetic, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from dense_synthetic import make_ade20k, make_coco


@pytest.fixture(scope="session")
def coco_json(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    make_ade20k(root, split="training")
    make_ade20k(root, split="validation")
    return root
