"""A GRU layer whose backward pass is a short recurrence plus batched matrix products.

Training the controller on an 8,192-token window spent ~2 s a step in autograd's per-token graph of
``nn.GRU`` on CPU (dozens of small operators per token). The forward here *is* ``nn.GRU`` (the same
kernel, so the same outputs); the backward recomputes every gate at once from the outputs, and only
the part that truly runs in sequence stays in a loop: ``dh_{t-1} = g_{t-1} + dh_t * z_t +
((dh_t, dh_t, dh_t) * G_t) @ W_hh``, three operators per token.

PyTorch's GRU (``torch.nn.GRU``), gates in the order ``r, z, n``:

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import torch
from torch import nn


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        """``x [B, T, I]``, ``h0 [B, W]`` -> outputs ``[B, T, W]`` (``nn.GRU``'s own kernel)."""
        out, _ = torch.gru(x, h0[None], (w_ih, w_hh, b_ih, b_hh), True, 1, 0.0, False, False, True)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, h0, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
        T = x.shape[1]
        previous = torch.cat([h0[:, None], out[:, :-1]], dim=1)  # h_{t-1}  [B, T, W]
        gi_r, gi_z, gi_n = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
        gh_r, gh_z, gh_n = (previous @ w_hh.T + b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        # d(pre-activations)/dh per gate, all tokens at once: dn_pre = dh * a, dr_pre = dh * a * b,
        # dz_pre = dh * c; the hidden-side gradients are (dr_pre, dz_pre, dn_pre * r).
        a = (1 - z) * (1 - n * n)
        b = gh_n * r * (1 - r)
        c = (previous - n) * z * (1 - z)
        to_input = torch.cat([a * b, c, a], dim=-1)  # [B, T, 3W]
        to_hidden = torch.cat([a * b, c, a * r], dim=-1)
        dh = torch.empty_like(out)
        carry = torch.zeros_like(h0)
        for t in range(T - 1, -1, -1):  # the one sequential part
            current = grad_out[:, t] + carry
            dh[:, t] = current
            carry = current * z[:, t] + (current.repeat(1, 3) * to_hidden[:, t]) @ w_hh
        dh3 = dh.repeat(1, 1, 3)
        d_gi, d_gh = dh3 * to_input, dh3 * to_hidden
        grad_x = d_gi @ w_ih
        grad_w_ih = d_gi.flatten(0, 1).T @ x.flatten(0, 1)
        grad_w_hh = d_gh.flatten(0, 1).T @ previous.flatten(0, 1)
        return grad_x, carry, grad_w_ih, grad_w_hh, d_gi.sum(dim=(0, 1)), d_gh.sum(dim=(0, 1))


def gru_layer(gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """``gru(x, h0)[0]`` of a one-layer, unidirectional, batch-first ``nn.GRU`` with biases, with the
    backward above: ``x [B, T, I]``, ``h0 [1, B, W]`` or ``None`` -> ``[B, T, W]``."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias or gru.proj_size:
        raise ValueError("gru_layer covers a one-layer, unidirectional, batch-first GRU with biases")
    if h0 is None:
        h0 = x.new_zeros(1, x.shape[0], gru.hidden_size)
    return _GRULayer.apply(x, h0[0], gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
