"""Policy parameters, the registry, and key re-rotation."""

from __future__ import annotations

import pytest
import torch

from adore import ConfigError
from adore.methods import available_methods, build_policy
from adore.rope import rerotate
from tests.conftest import tiny_llama


def test_registry_lists_every_builtin_method():
    assert {"full", "window", "streaming_llm", "h2o", "kv_compression", "topk"} <= set(available_methods())
    with pytest.raises(ConfigError, match=r"unknown method 'h3o' \(did you mean 'h2o'\?\); choose one of"):
        build_policy("h3o")
    with pytest.raises(ConfigError, match="has no parameter 'budget'; its parameters are: heavy_ratio, m"):
        build_policy("h2o", budget=3)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("window", {"m": 0}, "method.m must be a positive integer"),
        ("h2o", {"m": 8, "heavy_ratio": 1.5}, "heavy_ratio must be in"),
        ("streaming_llm", {"m": 4}, "larger than the 4 sink tokens"),
        ("streaming_llm", {"m": 8, "position_mode": "relative"}, "'cache' or 'original'"),
        ("kv_compression", {"m": 8, "recent": 8}, "method.recent must be in"),
        ("kv_compression", {"m": 8, "drop_amount": 0}, "drop_amount must be in"),
        ("topk", {"K": -1}, "method.K must be a positive integer"),
    ],
)
def test_bad_parameters_are_rejected(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_policy(name, **params)


def test_repr_is_a_complete_description():
    assert repr(build_policy("h2o", m=64)) == "H2O(m=64, heavy_ratio=0.5)"
    assert build_policy("kv_compression", m=64).describe()["recent"] == 16


def test_rerotation_equals_rope_at_the_new_position():
    """Keys computed at positions p, rotated by delta, equal keys computed at p + delta."""
    model = tiny_llama()
    rotary, attention = model.model.rotary_emb, model.model.layers[0].self_attn
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hidden = torch.randn(1, 6, model.config.hidden_size)
    keys = attention.k_proj(hidden).view(1, 6, -1, attention.head_dim).transpose(1, 2)  # [1, H, 6, D]

    def rope_at(positions: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary(keys, positions[None])
        return apply_rotary_pos_emb(keys, keys, cos, sin)[1]

    positions = torch.tensor([0, 3, 4, 9, 10, 11])
    delta = torch.tensor([500, -3, 7, 0, 1, 1000]).expand(1, keys.shape[1], 6)
    rotated = rerotate(rope_at(positions), delta, rotary.inv_freq)
    torch.testing.assert_close(rotated, rope_at(positions + delta[0, 0]), atol=1e-5, rtol=1e-4)


def test_full_and_topk_ignore_a_budget_so_sweeps_can_include_them():
    assert build_policy("full", m=64).budget is None
    assert build_policy("topk", m=64, K=8).budget is None
    assert build_policy("full", m=64).describe() == {"m": None}
