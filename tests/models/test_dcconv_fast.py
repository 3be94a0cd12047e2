"""The fast DCConv paths against the plain reference: outputs, gradients, memory kept, chunking, export."""

from __future__ import annotations

import pytest
import torch

from dccnext_cli.models import dcconv
from dccnext_cli.models.dcconv import DCConv, cluster_conv, cluster_conv_reference, cluster_indices


def test_fast_op_equals_reference_outputs_and_gradients():
    tokens = torch.randn(2, 700, 48, requires_grad=True)  # > BLOCK_ROWS rows: several blocks
    idx = cluster_indices(tokens, 9, 4)
    weight = torch.randn(9, 48, requires_grad=True)
    bias = torch.randn(48, requires_grad=True)
    grad = torch.randn(2, 700, 48)
    fast = cluster_conv(tokens, idx, weight, bias)
    fast_grads = torch.autograd.grad(fast, (tokens, weight, bias), grad)
    ref = cluster_conv_reference(tokens, idx, weight, bias)
    ref_grads = torch.autograd.grad(ref, (tokens, weight, bias), grad)
    torch.testing.assert_close(fast, ref)
    for got, want in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fast_op_gradcheck_float64():
    tokens = torch.randn(1, 10, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(10)[:4] for _ in range(10)]).unsqueeze(0)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w, b: cluster_conv(t, idx, w, b), (tokens, weight, bias))


def test_backward_saves_only_input_indices_and_weight():
    tokens = torch.randn(4, 196, 64, requires_grad=True)
    idx = cluster_indices(tokens, 12, 8)
    weight = torch.randn(12, 64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        cluster_conv(tokens, idx, weight, torch.zeros(64, requires_grad=True))
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    allowed = tokens.numel() * 4 + idx.numel() * 8 + weight.numel() * 4
    assert saved_bytes <= allowed, (saved_bytes, allowed)
    assert not any(t.dim() == 3 and t.shape[-1] == 64 and t.shape[1] == 12 for t in saved)


def test_distances_equal_the_definition():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 7, 10, generator=g), torch.randn(2, 9, 10, generator=g)
    want = (queries.double()[:, :, None] - keys.double()[:, None]).pow(2).sum(-1)
    got = dcconv.pairwise_sq_distances(queries, keys)
    assert got.dtype == torch.float32 and got.shape == (2, 7, 9)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


def test_chunked_and_unchunked_indices_are_identical():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (2, 12, 10, 16), generator=g).float()  # many exact ties
    whole = cluster_indices(x, 12, 2)
    chunked = cluster_indices(x, 12, 2, chunk_elements=2 * 120 * 7)  # 7 query rows per chunk
    assert torch.equal(whole, chunked)
    sorted_ref = dcconv._indices_chunked(x.flatten(1, 2)[..., ::2], 12, exact_sort=True, chunk_elements=1 << 30)
    assert torch.equal(whole, sorted_ref)


@pytest.mark.parametrize("shape", [(1, 6, 5, 32), (2, 3, 3, 32)])
def test_torch_export_keeps_the_numbers(shape):
    layer = DCConv(32, cluster_size=12, subvector_interval=4).eval()
    x = torch.randn(*shape)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x))


def test_compiled_op_matches_eager():
    layer = DCConv(16, cluster_size=5, subvector_interval=2)
    x = torch.randn(1, 4, 4, 16)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # no graph break on DCConv
    torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_op_and_model_on_cuda_match_the_cpu():
    from dccnext_cli.models import create_dccnext

    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 300, 32, generator=g)
    idx = cluster_indices(tokens, 9, 4)
    gpu_idx = cluster_indices(tokens.cuda(), 9, 4).cpu()  # near-ties may round the other way: compare distances
    assert torch.equal(gpu_idx[..., 0], torch.arange(300).expand(2, 300)), "the centre comes first"
    sub = tokens[..., ::4].double()
    dist = (sub[:, :, None] - sub[:, None]).pow(2).sum(-1)
    torch.testing.assert_close(dist.gather(2, gpu_idx), dist.gather(2, idx), rtol=1e-4, atol=1e-4)
    weight, bias = torch.randn(9, 32, generator=g), torch.randn(32, generator=g)
    on_gpu = [t.cuda().requires_grad_() for t in (tokens, weight, bias)]
    out = cluster_conv(on_gpu[0], idx.cuda(), on_gpu[1], on_gpu[2])
    out.sum().backward()
    cpu = [t.clone().requires_grad_() for t in (tokens, weight, bias)]
    ref = cluster_conv_reference(cpu[0], idx, cpu[1], cpu[2])
    ref.sum().backward()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(on_gpu, cpu, strict=True):
        torch.testing.assert_close(got.grad.cpu(), want.grad, rtol=1e-4, atol=1e-4)
    model = create_dccnext("b0", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96, generator=g)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), model.cpu()(x), rtol=1e-2, atol=1e-2)
