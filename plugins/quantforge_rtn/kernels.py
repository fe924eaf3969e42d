"""Group-wise round to nearest: quantize and pack a weight, and the inverse."""

from __future__ import annotations

import torch


def quantize_weight(
    weight: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> dict[str, torch.Tensor]:
    """Round ``weight`` [out, in] to ``bits`` per group of ``group_size`` input columns."""
    out_features, in_features = weight.shape
    w = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (w.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-8)
        q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax) + (qmax + 1)
        zero = torch.full_like(scale, qmax + 1)
    else:
        qmax = 2**bits - 1
        lo = w.amin(dim=-1, keepdim=True)
        hi = w.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp(min=1e-8)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    q = q.to(torch.uint8).reshape(out_features, in_features)
    if bits == 4:
        q = q[:, 0::2] | (q[:, 1::2] << 4)
    return {
        "qweight": q.contiguous(),
        "scales": scale.half().squeeze(-1),
        "zeros": zero.half().squeeze(-1),
    }


def dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    if bits == 4:
        q = torch.stack([qweight & 0x0F, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)
    else:
        q = qweight
    out_features, in_features = q.shape
    q = q.reshape(out_features, in_features // group_size, group_size).float()
    w = (q - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return w.reshape(out_features, in_features)
