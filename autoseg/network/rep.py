"""Structurally re-parameterized convolution (RepVGG, Ding et al. 2021) for our conv blocks.

In training, `RepConv` runs parallel linear branches on the same input and sums them:

    KxK conv (stride s, dilation d)  +  1x1 conv (stride s)  +  identity (only when in == out and s == 1)

The norm of the conv block comes AFTER the sum (we use instance normalization, which has no running
statistics to fold into the branches as RepVGG folds BatchNorm), so the sum is one linear map and
`fuse_rep_blocks` replaces each `RepConv` by a single plain `nn.Conv2d` / `nn.Conv3d` computing the same
function: the 1x1 kernel is added at the centre tap of the KxK kernel, the identity as a 1 at the centre
of each channel's own filter. The fused network has exactly the modules, state-dict keys and cost of the
plain network with the same architecture.

Kernels must be odd per axis (padding d * (k // 2) then keeps the centre tap aligned with the 1x1 branch).
"""

from __future__ import annotations

import torch
from torch import nn


class RepConv(nn.Module):
    """The training form of a KxK conv: KxK + 1x1 (+ identity) branches, summed. Same input and output
    shapes as `conv_class(in, out, kernel, stride, padding=dilation * (kernel // 2), dilation)`."""

    def __init__(self, conv_class: type[nn.Module], in_channels: int, out_channels: int, kernel_size: list[int],
                 stride: list[int], dilation: int = 1):
        super().__init__()
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(f"a rep block needs odd kernel sizes, got {kernel_size}")
        padding = [dilation * (k // 2) for k in kernel_size]
        self.kxk = conv_class(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=True)
        self.pointwise = conv_class(in_channels, out_channels, 1, stride, 0, bias=False)
        self.has_identity = in_channels == out_channels and all(s == 1 for s in stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = self.kxk(x) + self.pointwise(x)
        return summed + x if self.has_identity else summed

    def fused(self) -> nn.Module:
        """One plain conv with the same hyper-parameters as `kxk` computing the sum of the branches."""
        kxk = self.kxk
        conv = type(kxk)(kxk.in_channels, kxk.out_channels, kxk.kernel_size, kxk.stride, kxk.padding,
                         kxk.dilation, bias=True).to(device=kxk.weight.device, dtype=kxk.weight.dtype)
        with torch.no_grad():
            weight = kxk.weight.clone()
            centre = (slice(None), slice(None), *(k // 2 for k in kxk.kernel_size))
            weight[centre] += self.pointwise.weight.flatten(1)
            if self.has_identity:
                channels = torch.arange(kxk.out_channels)
                weight[(channels, channels, *(k // 2 for k in kxk.kernel_size))] += 1.0
            conv.weight.copy_(weight)
            conv.bias.copy_(kxk.bias)
        return conv


def fuse_rep_blocks(module: nn.Module) -> nn.Module:
    """Replace every `RepConv` inside `module` (in place) by its fused plain conv; returns `module`.
    A module without rep blocks is returned unchanged, so inference may call this on any network."""
    for name, child in module.named_children():
        if isinstance(child, RepConv):
            setattr(module, name, child.fused())
        else:
            fuse_rep_blocks(child)
    return module
