"""neox.kernels.Linear: nn.Linear's numbers whichever kernel a forward takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neox.kernels import SKINNY_MAX_ROWS, Linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 8, SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 1, 40])
def test_matches_f_linear_for_every_row_count(rows, bias):
    torch.manual_seed(rows)
    lin = Linear(96, 200, bias=bias)
    x = torch.randn(rows, 96)
    with torch.no_grad():
        got, want = lin(x), F.linear(x, lin.weight, lin.bias)
    assert got.shape == want.shape == (rows, 200)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_batched_and_strided_inputs():
    """(B, T, K) inputs, and a non-contiguous view (a slice of a wider tensor) as a decode step sees."""
    torch.manual_seed(0)
    lin = Linear(64, 48)
    wide = torch.randn(4, 1, 128)
    for x in (torch.randn(4, 1, 64), torch.randn(2, 3, 64), wide[..., ::2], wide[..., 64:]):
        with torch.no_grad():
            got = lin(x)
        assert got.shape == (*x.shape[:-1], 48)
        torch.testing.assert_close(got, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        assert got.is_contiguous()  # as F.linear's: callers .view() logits and projections


def test_with_autograd_it_is_f_linear_bit_for_bit():
    """Training takes the reference kernel: outputs and gradients identical to nn.Linear's."""
    torch.manual_seed(1)
    ref = nn.Linear(32, 24)
    lin = Linear(32, 24)
    lin.load_state_dict(ref.state_dict())
    x = torch.randn(4, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = lin(x), ref(x2)
    assert torch.equal(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.equal(lin.weight.grad, ref.weight.grad) and torch.equal(x.grad, x2.grad)


def test_is_an_nn_linear_with_its_state_dict():
    lin = Linear(8, 4)
    assert isinstance(lin, nn.Linear)
    assert set(lin.state_dict()) == {"weight", "bias"}
    assert "Linear(in_features=8, out_features=4, bias=True)" == repr(lin)


def test_other_dtypes_take_f_linear():
    """bf16/fp16 take F.linear bit for bit (oneDNN's x·Wᵀ is the faster kernel there); mixed dtypes
    raise as F.linear raises."""
    torch.manual_seed(2)
    for dtype in (torch.bfloat16, torch.float16):
        lin = Linear(64, 32).to(dtype)
        x = torch.randn(4, 64, dtype=dtype)
        with torch.no_grad():
            assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
            with pytest.raises(RuntimeError):
                lin(torch.randn(4, 64))
