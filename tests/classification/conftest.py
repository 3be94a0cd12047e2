"""Fixtures: the small real data sets of engine_data.py, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_data import write_imagefolder, write_parquet


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def imagefolder_corrupt(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder_corrupt"), corrupt=True)


@pytest.fixture(scope="session")
def parquet_corrupt(tmp_path_factory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("parquet_corrupt"), corrupt=True)
