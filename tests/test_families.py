"""Every decoder family the engine serves is served exactly; the others are refused with one line.

:data:`FAMILIES` is the one list. Each family is a tiny random model built here from its transformers
config (2 layers, grouped-query attention where the family has it, sliding window 8 where it has
one), so prompts of 11 to 30 tokens cross the window. Per family:

* ``full`` through the engine equals ``model.generate`` with the family's native attention (sdpa, or
  eager where the family needs it), token for token, alone and in a left-padded batch;
* every method under test (``tests/methods_under_test.py``) with a bound above the sequence equals
  ``full``;
* every budgeted method holds its budget at a small ``m``, and its padded batch equals each prompt
  alone (masks by position, sliding windows included);
* where every layer is a sliding-window layer, evicting exactly what the window hides changes nothing;
* re-rotated keys equal keys recomputed at the new positions, or ``position_mode=cache`` is refused.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import transformers

from adore import ConfigError, DecodingEngine, load_model
from adore.core.attention import register
from adore.core.dropin import evicting
from adore.core.rope import layer_rotations
from adore.methods import build_policy
from tests.conftest import random_prompts
from tests.methods_under_test import METHOD_CASES, holds_as_declared

WINDOW = 8
PROMPTS = [11, 30, 19]  # lengths; all cross the window
NEW_TOKENS = 12
SMALL_M = 6

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,  # large logits: no near-ties in greedy argmax
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
SLIDING = dict(sliding_window=WINDOW)
MIXED = ["sliding_attention", "full_attention"]  # one layer of each kind
# Gemma scales its (tied) embeddings by sqrt(hidden): in a tiny random model the current token alone
# then decides the next, and neither the window nor softcapping would change a token.
GEMMA = dict(head_dim=16, query_pre_attn_scalar=1, tie_word_embeddings=False)


@dataclass(frozen=True)
class Family:
    """One model family under test.

    Attributes:
        name: test id.
        config: the transformers config class name.
        params: its parameters beyond :data:`COMMON` (``None`` drops a common one).
        all_sliding: every layer is a sliding-window layer.
        refused: the one-line error the engine gives this family (it then runs nothing).
        cache_mode_refused: the error for ``streaming_llm`` with ``position_mode=cache``.
    """

    name: str
    config: str
    params: dict[str, Any] = field(default_factory=dict)
    all_sliding: bool = False
    refused: str | None = None
    cache_mode_refused: str | None = None

    def build(self) -> torch.nn.Module:
        params = {**COMMON, **self.params}
        config = getattr(transformers, self.config)(**{k: v for k, v in params.items() if v is not None})
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():  # norms start at exactly one: with QK-norm (Qwen3, OLMo2) every key would
            for parameter in model.parameters():  # have the same norm, a tie for knorm
                if parameter.ndim == 1:
                    parameter.add_(0.2 * torch.randn_like(parameter))
        return model


FAMILIES = [
    Family("llama", "LlamaConfig"),
    Family("mistral", "MistralConfig", SLIDING, all_sliding=True),
    Family("qwen2", "Qwen2Config", {**SLIDING, "use_sliding_window": True, "max_window_layers": 1}),
    Family("qwen3", "Qwen3Config", {**SLIDING, "use_sliding_window": True, "max_window_layers": 1, "head_dim": 16}),
    Family("phi3", "Phi3Config", {**SLIDING, "partial_rotary_factor": 0.5}, all_sliding=True),
    Family("gemma2", "Gemma2Config", {**SLIDING, **GEMMA, "layer_types": MIXED, "attn_logit_softcapping": 2.0}),
    Family("gemma3", "Gemma3TextConfig", {**SLIDING, **GEMMA, "layer_types": MIXED}),
    Family("olmo2", "Olmo2Config"),
    Family("olmo3", "Olmo3Config", {**SLIDING, "layer_types": MIXED}),
    Family("gpt_neox", "GPTNeoXConfig", {"num_key_value_heads": None}),
    Family("starcoder2", "Starcoder2Config", SLIDING, all_sliding=True),
    Family("cohere", "CohereConfig"),
    Family("cohere2", "Cohere2Config", {**SLIDING, "layer_types": MIXED}),
    Family("smollm3", "SmolLM3Config", {"no_rope_layers": [1, 0]}),
    Family("stablelm", "StableLmConfig"),
    Family("phi", "PhiConfig"),
    Family("gemma", "GemmaConfig", GEMMA),
    Family("granite", "GraniteConfig"),
    Family(
        "gpt_oss",
        "GptOssConfig",
        {**SLIDING, "layer_types": MIXED, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    Family(
        "llama_dynamic_rope",
        "LlamaConfig",
        {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
        cache_mode_refused="position_mode=cache is refused for model family 'llama': its 'dynamic' RoPE",
    ),
    Family(
        "falcon",
        "FalconConfig",
        {"num_key_value_heads": None, "intermediate_size": None},
        refused="model family 'falcon' (FalconForCausalLM) computes attention in its own code",
    ),
]
# Keep-sets that rounding decides: knorm ranks keys by norm, and a repeated token's first-layer keys
# differ only by a rotation, so their norms are equal up to rounding, which padding changes.
ILL_CONDITIONED = {"knorm"}
SERVED = [pytest.param(f, id=f.name) for f in FAMILIES if f.refused is None]
BUDGETED = [pytest.param(case, id=case.id) for case in METHOD_CASES if case.bound_by == "m"]


class Served:
    """A family's model (kv_policy attention) and its ``full`` tokens, built once per family."""

    def __init__(self, family: Family):
        self.family = family
        self.model = family.build()
        self.native = self.model.config._attn_implementation  # what transformers picked for the family
        self.model.set_attn_implementation(register())
        self.prompts = random_prompts(PROMPTS, seed=5)
        self.full = DecodingEngine(self.model, build_policy("full")).generate(self.prompts, NEW_TOKENS).tokens

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """``model.generate`` with the family's native attention on a left-padded batch."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        self.model.set_attn_implementation(self.native)
        try:
            out = self.model.generate(
                ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        finally:
            self.model.set_attn_implementation(register())
        return out[:, width:].tolist()


_SERVED: dict[str, Served] = {}


def skip_if_refused(served: Served, case) -> None:
    cache_mode = case.name == "streaming_llm" and case.params.get("position_mode") == "cache"
    if cache_mode and served.family.cache_mode_refused:
        pytest.skip("position_mode=cache is refused for this family (tested below)")


@pytest.fixture(scope="module")
def served(request) -> Served:
    family = request.param
    if family.name not in _SERVED:
        _SERVED[family.name] = Served(family)
    return _SERVED[family.name]


@pytest.mark.parametrize("served", SERVED, indirect=True)
def test_full_equals_native_generate_alone_and_in_a_padded_batch(served):
    alone = [served.generate([p])[0] for p in served.prompts]
    assert served.full == alone
    assert served.generate(served.prompts) == alone


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in METHOD_CASES])
@pytest.mark.parametrize("served", SERVED, indirect=True)
def test_every_method_with_a_bound_above_the_sequence_equals_full(served, case):
    skip_if_refused(served, case)
    bound = max(PROMPTS) + NEW_TOKENS
    engine = DecodingEngine(served.model, case.build(served.model, bound=case.holding(bound)), pad_token_id=0)
    assert engine.generate(served.prompts, NEW_TOKENS).tokens == served.full


@pytest.mark.parametrize("case", BUDGETED)
@pytest.mark.parametrize("served", SERVED, indirect=True)
def test_every_method_holds_its_budget_and_a_padded_batch_equals_alone(served, case):
    skip_if_refused(served, case)
    engine = DecodingEngine(served.model, case.build(served.model, bound=SMALL_M), pad_token_id=0)
    caches = []
    new_cache = engine.new_cache
    engine.new_cache = lambda: caches.append(new_cache()) or caches[-1]
    prompts = served.prompts[:2]
    alone = [engine.generate([p], NEW_TOKENS).tokens[0] for p in prompts]
    batch = engine.generate(prompts, NEW_TOKENS).tokens
    # The engine asserts the budget after every forward; here: it was reached, in every layer.
    assert all(holds_as_declared(engine.policy, layer) for cache in caches for layer in cache.layers)
    if case.name not in ILL_CONDITIONED:
        assert batch == alone


@pytest.mark.parametrize("served", [p for p in SERVED if p.values[0].all_sliding], indirect=True)
def test_evicting_only_what_the_window_hides_changes_nothing(served):
    """Every layer sees its last ``WINDOW`` positions: a ``window`` cache of ``WINDOW - 1`` (plus the
    current token) drops only hidden keys, with one-in/one-out slot overwrites scrambling slot order."""
    engine = DecodingEngine(served.model, build_policy("window", m=WINDOW - 1), pad_token_id=0)
    assert engine.generate(served.prompts, NEW_TOKENS).tokens == served.full


@pytest.mark.parametrize(
    ("served", "change"),
    [
        pytest.param(f, {"sliding_window": 10_000}, id=f"{f.name}-window")
        for f in FAMILIES
        if "sliding_window" in f.params
    ]
    + [
        pytest.param(f, {"attn_logit_softcapping": None}, id=f"{f.name}-softcap")
        for f in FAMILIES
        if f.name == "gemma2"
    ],
    indirect=["served"],
)
def test_the_tests_have_teeth(served, change):
    """The equalities above would miss a dropped sliding window or softcap unless they change tokens."""
    other = Family(served.family.name, served.family.config, {**served.family.params, **change}).build()
    other.set_attn_implementation(register())
    tokens = DecodingEngine(other, build_policy("full")).generate(served.prompts, NEW_TOKENS).tokens
    assert tokens != served.full


@pytest.mark.parametrize("served", SERVED, indirect=True)
def test_rerotated_keys_equal_keys_computed_at_the_new_positions(served):
    """Shifting every position by the same amount leaves the hidden states unchanged, so each layer's
    keys at the shifted positions must equal its keys re-rotated by the shift."""
    if served.family.cache_mode_refused:
        with pytest.raises(ConfigError, match=re.escape(served.family.cache_mode_refused)):
            layer_rotations(served.model)
        with pytest.raises(ConfigError, match=re.escape(served.family.cache_mode_refused)):
            DecodingEngine(served.model, build_policy("streaming_llm", m=8, position_mode="cache"))
        return
    rotations = layer_rotations(served.model)
    ids, shift = torch.tensor([served.prompts[1]]), 41

    def keys_at(start: int) -> list[torch.Tensor]:
        cache = transformers.DynamicCache()
        positions = torch.arange(start, start + ids.shape[1])[None]
        with torch.no_grad():
            served.model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
        return [layer.keys for layer in cache.layers]

    for rotation, before, after in zip(rotations, keys_at(0), keys_at(shift), strict=True):
        moved = rotation.rotate(before, torch.full(before.shape[:3], shift))
        torch.testing.assert_close(moved, after, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", [pytest.param(f, id=f.name) for f in FAMILIES if f.refused], indirect=False)
def test_refused_families_say_so_in_one_line(family, tmp_path):
    model = family.build()
    with pytest.raises(ConfigError, match=re.escape(family.refused)) as error:
        DecodingEngine(model, build_policy("full"))
    assert "\n" not in str(error.value)
    model.config.save_pretrained(tmp_path)  # load_model refuses before loading any weights
    with pytest.raises(ConfigError, match=re.escape(family.refused)):
        load_model(str(tmp_path))


DROP_IN_FAMILIES = [p for p in SERVED if p.values[0].name in ("llama", "mistral", "gpt_neox", "gemma2")]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in METHOD_CASES])
@pytest.mark.parametrize("served", DROP_IN_FAMILIES, indirect=True)
def test_drop_in_cache_in_plain_generate_equals_the_engine(served, case):
    """``model.generate(..., cache=cache)`` under ``evicting`` gives the engine's tokens on a padded
    batch at a small budget, and the budget holds."""
    prompts = served.prompts[:2]
    policy = case.build(served.model, bound=SMALL_M)
    engine_tokens = DecodingEngine(served.model, policy, pad_token_id=0).generate(prompts, NEW_TOKENS).tokens
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with evicting(served.model, case.build(served.model, bound=SMALL_M)) as cache:
        out = served.model.generate(
            ids, attention_mask=mask, cache=cache, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
        )
    assert out[:, width:].tolist() == engine_tokens
    if case.bound_by == "m":
        assert all(holds_as_declared(cache.policy, layer) for layer in cache.layers)


@pytest.mark.model
def test_the_drop_in_example_runs(smollm2, monkeypatch):
    """The example in ``adore/core/dropin.py``'s docstring (and the README), executed as written."""
    import adore.core.dropin as dropin

    example = textwrap.dedent(dropin.__doc__.split("::\n", 1)[1].split("\nA cache serves", 1)[0])
    monkeypatch.setattr("adore.load_model", lambda path: smollm2)  # the session's copy, loaded once
    printed = []
    monkeypatch.setattr("builtins.print", lambda *values: printed.append(values))
    exec(compile(example, "dropin example", "exec"), {})
    (texts,), (stored,) = printed
    assert len(texts) == 2 and all(texts) and stored == 16
