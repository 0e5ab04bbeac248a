"""Key re-rotation for cache-relative positions (StreamingLLM's ``position_mode: cache``).

transformers 5.24 ships no helper for this. RoPE is a rotation, so ``R(a) R(b) = R(a + b)``: a key
cached at position ``p`` is moved to position ``p + delta`` by one rotation by ``delta``. We always
rotate *once* from the key as it was cached (never step after step), in float32, because repeated
small rotations drift badly in bf16 (6.5 % relative error after 256 shifts).
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rerotate(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys by ``delta`` positions.

    Args:
        keys: ``[B, H, S, D]`` keys rotated at some positions.
        delta: ``[B, H, S]`` integer shift per key (new position minus cached position).
        inv_freq: ``[D/2]`` the model's ``rotary_emb.inv_freq`` (not its cos/sin, which may be scaled).
    Returns:
        ``[B, H, S, D]`` keys as if RoPE had been applied at the new positions, in ``keys.dtype``.
    """
    freqs = delta.to(torch.float32)[..., None] * inv_freq.to(device=keys.device, dtype=torch.float32)
    emb = torch.cat([freqs, freqs], dim=-1)
    k = keys.float()
    return (k * emb.cos() + rotate_half(k) * emb.sin()).to(keys.dtype)
