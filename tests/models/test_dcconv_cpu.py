"""What only the native CPU backend (`models/dcconv_cpu.py`, the CPU's default) does: its selection on hostile
distances, its centring, its convolution bit for bit against the reference's, its errors and its build cache.
What it shares with the Inductor backend (indices with ties, gradients, op counts) is in
test_dcconv_cpu_backends.py."""

from __future__ import annotations

import logging

import pytest
import torch
from dcconv_cases import hostile_distances, integer_tokens

from dccnext_cli.models import dcconv_cpu
from dccnext_cli.models.dcconv import select_backend
from dccnext_cli.models.dcconv_reference import (
    cluster_conv_reference,
    cluster_indices_reference,
    nearest_sorted,
    subvector_rows,
)

pytestmark = pytest.mark.skipif(not dcconv_cpu.available(), reason="no C++ compiler")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The kernels built anew into an empty cache under tmp_path; the process's own library afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dcconv_cpu._library.cache_clear()
    yield tmp_path / "cache" / "dccnext" / "kernels"
    monkeypatch.undo()
    dcconv_cpu._library.cache_clear()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 23, 24])
def test_selection_equals_the_stable_sort_on_hostile_distances(seed, k):
    dist = hostile_distances(seed)  # ties, -0.0, negatives, +-inf, NaNs of both signs, the diagonal -inf
    assert torch.equal(dcconv_cpu.nearest_cpu(dist, 0, k), nearest_sorted(dist, k))
    rows = slice(8, 16)  # a chunk of query rows: its own tokens are 8..15
    assert torch.equal(dcconv_cpu.nearest_cpu(dist[:, rows], 8, k), nearest_sorted(dist[:, rows], k))


def test_the_centre_comes_first_whatever_its_distance():
    dist = torch.rand(1, 6, 6) + 1.0
    dist.diagonal(dim1=1, dim2=2).fill_(5.0)  # rounding left the centre's own distance above the others'
    assert torch.equal(dcconv_cpu.nearest_cpu(dist, 0, 3)[..., 0], torch.arange(6).view(1, 6))


def test_a_chunk_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="do not fit 6 tokens"):
        dcconv_cpu.nearest_cpu(torch.rand(1, 4, 6), 3, 2)


@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("batch", [1, 3])  # with two threads: tokens and channels shared out within images and across
def test_centred_rows_equal_the_reference(offset, batch):
    tokens = torch.randn(batch, 130, 160) * 4 + offset  # 130 x 40 sub-vector values an image: the threaded loops
    tokens[0, 7, 0] = float("nan")  # a NaN token: its channel is not shifted, as nan_to_num does
    tokens[-1, 3, 8] = float("inf")
    want_q, want_kt = subvector_rows(tokens, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got_q, got_kt = dcconv_cpu.subvector_rows_cpu(tokens, 4)
    finally:
        torch.set_num_threads(before)
    assert got_kt.shape == want_kt.shape and got_kt.stride() == want_kt.stride(), "the same matmul operand layout"
    torch.testing.assert_close(got_q[..., :-2], want_q[..., :-2], equal_nan=True, rtol=0, atol=0)  # bit for bit
    torch.testing.assert_close(got_q, want_q, equal_nan=True, rtol=1e-6, atol=0)  # |c|^2 summed in another order
    torch.testing.assert_close(got_kt, want_kt, equal_nan=True, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("channels", [64, 24, 72])  # blocks of 32 channels only, a tail only, both
def test_convolution_equals_the_reference(dtype, with_bias, channels):
    """Bit for bit at widths ATen's sum vectorises whole (multiples of 32, as every DCCNeXt width) and up to 17
    slots; at other widths ATen sums its remainder lanes in another order (and 18 slots or more, too). 30 tokens:
    the kernel's groups of four and a remainder of two."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 30, channels, generator=g).to(dtype)
    idx = cluster_indices_reference(tokens, 9, 4, 1 << 21)
    weight = torch.randn(12, channels, generator=g).to(dtype)  # K = 12 slots, K' = 9 used
    bias = torch.randn(channels, generator=g).to(dtype) if with_bias else None
    got = dcconv_cpu.cluster_conv_cpu(tokens, idx, weight, bias)
    want = cluster_conv_reference(tokens, idx, weight, bias)
    assert got.dtype == dtype
    if channels % 32 == 0 or dtype == torch.bfloat16:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_strided_input_and_both_thread_counts_give_the_same_bits():
    x = integer_tokens((2, 128, 160)).add_(torch.randn(2, 128, 160) * 0.01)  # large enough for every threaded loop
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channels not contiguous
    weight, bias = torch.randn(12, 160), torch.randn(160)
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        idx = dcconv_cpu.cluster_indices_cpu(strided, 12, 4, 1 << 21)
        outs.append((idx, dcconv_cpu.cluster_conv_cpu(strided, idx, weight, bias)))
    torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][0], cluster_indices_reference(x, 12, 4, 1 << 21))


def test_an_index_out_of_range_is_refused_not_read():
    tokens, weight = torch.randn(1, 5, 8), torch.randn(3, 8)
    idx = torch.tensor([[[0, 1, 2]] * 4 + [[4, 5, 0]]])
    with pytest.raises(IndexError, match=r"must lie in \[0, 5\): 1 of 5 rows"):
        dcconv_cpu.cluster_conv_cpu(tokens, idx, weight, None)


def test_other_dtypes_go_to_the_inductor_backend():
    tokens = torch.randn(1, 10, 6, dtype=torch.float64)
    idx = cluster_indices_reference(tokens, 4, 1, 1 << 21)
    weight = torch.randn(4, 6, dtype=torch.float64)
    got = dcconv_cpu.cluster_conv_cpu(tokens, idx, weight, None)
    torch.testing.assert_close(got, cluster_conv_reference(tokens, idx, weight, None))


def test_the_build_is_cached_and_loaded_by_later_processes(fresh_build):
    assert dcconv_cpu.available()
    built = list(fresh_build.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built  # no scratch folder left beside it
    stamp = built[0].stat().st_mtime_ns
    dcconv_cpu._library.cache_clear()  # what a new process does
    assert dcconv_cpu.available()
    assert list(fresh_build.iterdir()) == built and built[0].stat().st_mtime_ns == stamp, "loaded, not rebuilt"


def test_a_cache_that_cannot_be_written_builds_for_this_process(fresh_build):
    fresh_build.parent.parent.write_text("a file where the cache folder would go")
    assert dcconv_cpu.available()
    assert dcconv_cpu.cluster_conv_cpu(torch.ones(1, 2, 3), torch.tensor([[[0, 1], [1, 0]]]), torch.ones(2, 3),
                                       None).eq(2).all()


def test_a_compiler_that_fails_leaves_the_reference_with_a_note(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # found on PATH, fails every call
    with caplog.at_level(logging.WARNING):
        assert not dcconv_cpu.available()
        assert select_backend(torch.empty(1)) == "reference"
    notes = [r.message for r in caplog.records if "did not build" in r.message]
    assert len(notes) == 1 and "false" in notes[0], notes
