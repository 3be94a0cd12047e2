"""Operator settings: every choice validated by name, changes scoped to a block."""

from __future__ import annotations

import pytest

from dccnext_cli import ConfigError
from dccnext_cli.models.settings import OperatorSettings, operator_settings, use_operator_settings


@pytest.mark.parametrize("field, bad", [
    ("compile_impl", "triton"), ("eager_path", "gpu"), ("eager_kernels", "cuda"), ("export_indices", "argsort"),
    ("export_gelu", "tanh"), ("export_cluster_conv", "scatter"), ("block_rows", 0), ("ffn_chunk_bytes", -1),
])
def test_a_bad_setting_is_refused_by_name(field, bad):
    with pytest.raises(ConfigError, match=f"{field} must be"):
        OperatorSettings(**{field: bad})


def test_settings_change_for_a_block_only():
    before = operator_settings()
    with use_operator_settings(export_gelu="erf", export_cluster_conv="gather"):
        assert (operator_settings().export_gelu, operator_settings().export_cluster_conv) == ("erf", "gather")
    assert operator_settings() == before
    with pytest.raises(ConfigError, match="unknown operator setting"):
        before.replace(export_onnx=True)
