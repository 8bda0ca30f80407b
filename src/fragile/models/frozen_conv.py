"""Convolutions with frozen weights whose derivatives compute no weight gradient.

An attack on a propagation map (LRP) differentiates, in its second backward, through the convolutions that made the
map. PyTorch's double backward of a convolution (torch 2.13, CPU) computes a weight-gradient convolution even when
the weight requires no gradient, so every such layer pays for one convolution nobody uses. For weights that are
constants (the BatchNorm-merged layers of the canonizer, a frozen model) the derivative of ``y = conv(x, W) + b``
with respect to ``x`` is the transposed convolution of the incoming gradient with ``W``, itself a differentiable
op whose derivative is one convolution:

    dy -> conv_transpose(dy, W)        d(conv_transpose(dy, W)) -> conv(ddx, W)

:func:`conv` computes ``y`` so; :func:`conv_transpose` is that transposed convolution, the vector-Jacobian product
``J^T s`` of a convolution without a forward pass. The same function and the same derivatives as
``module(x)`` up to float rounding; used only where neither weight nor bias requires a gradient and the padding is
zeros given as numbers (else the module's own forward, so weight gradients stay available).
"""

from __future__ import annotations

import torch
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def zero_padded(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution with zero padding given as numbers (what :func:`conv_transpose` handles)."""
    return isinstance(module, CONV) and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def applies(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`conv` stands in for ``module`` with these parameters: :func:`zero_padded`, and neither
    ``weight`` nor ``bias`` requiring a gradient."""
    return zero_padded(module) and not weight.requires_grad and (bias is None or not bias.requires_grad)


def output_padding(module: nn.Module, out_shape, in_shape) -> list[int]:
    """The ``output_padding`` that makes the transposed convolution of ``module``'s output (shape ``out_shape``) as
    large as its input (``in_shape``): ``in - ((out - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1)`` per
    spatial dimension (non-zero only after a strided convolution whose input size the stride does not divide)."""
    return [in_shape[2 + d] - ((out_shape[2 + d] - 1) * module.stride[d] - 2 * module.padding[d]
                               + module.dilation[d] * (module.kernel_size[d] - 1) + 1)
            for d in range(len(in_shape) - 2)]


def conv_transpose(module: nn.Module, s: torch.Tensor, weight: torch.Tensor, in_shape) -> torch.Tensor:
    """``J^T s`` of ``module``'s convolution with ``weight`` (any weight, with or without a gradient): the transposed
    convolution of ``s: (N, C_out, ...)``, shaped ``in_shape`` ``(N, C_in, ...)``."""
    return torch.ops.aten.convolution(s, weight, None, module.stride, module.padding, module.dilation, True,
                                      output_padding(module, s.shape, in_shape), module.groups)


class _FrozenConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, weight, bias):
        ctx.module, ctx.in_shape = module, x.shape
        ctx.save_for_backward(weight)
        return torch.ops.aten.convolution(x, weight, bias, module.stride, module.padding, module.dilation, False,
                                          [0] * (x.dim() - 2), module.groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return None, conv_transpose(ctx.module, grad, weight, ctx.in_shape), None, None


def conv(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``module``'s convolution of ``x: (N, C_in, ...)`` with constant ``weight`` and ``bias`` (:func:`applies`), its
    derivative with respect to ``x`` the transposed convolution (module docstring): ``(N, C_out, ...)``."""
    return _FrozenConv.apply(module, x, weight, bias)
