"""Operator settings: every choice validated by name, changes scoped to a block."""

from __future__ import annotations

import pytest

from dccnext_cli import ConfigError
from dccnext_cli.models.settings import OperatorSettings, operator_settings, use_operator_settings


@pytest.mark.parametrize("field, bad", [
    ("backend", "cuda"), ("export_target", "tflite"), ("distance_chunk_elements", 0), ("device_distance_elements", -1),
])
def test_a_bad_setting_is_refused_by_name(field, bad):
    with pytest.raises(ConfigError, match=f"{field} must be"):
        OperatorSettings(**{field: bad})


def test_settings_change_for_a_block_only():
    before = operator_settings()
    with use_operator_settings(export_target="onnx", backend="reference"):
        assert (operator_settings().export_target, operator_settings().backend) == ("onnx", "reference")
    assert operator_settings() == before
    with pytest.raises(ConfigError, match="unknown operator setting"):
        before.replace(export_onnx=True)
