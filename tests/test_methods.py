"""Generic tests that every method under test must pass (see ``tests/methods_under_test.py``):
a bound above the sequence equals full attention, a padded batch equals each prompt alone, and the
cache never holds more than the budget."""

from __future__ import annotations

import pytest
import torch

from adore import DecodingEngine
from adore.methods import available_methods, build_policy
from tests.conftest import random_prompts
from tests.methods_under_test import METHOD_CASES

CASES = [pytest.param(case, id=case.id) for case in METHOD_CASES]
BUDGETED = [pytest.param(case, id=case.id) for case in METHOD_CASES if case.bound_by == "m"]


def test_every_registered_method_is_under_test():
    assert {case.name for case in METHOD_CASES} == set(available_methods())


@pytest.mark.parametrize("case", CASES)
def test_bound_above_the_sequence_equals_full(tiny_model, case):
    prompts, new_tokens = random_prompts([9, 30]), 40
    full = DecodingEngine(tiny_model, build_policy("full")).generate(prompts, new_tokens).tokens
    engine = DecodingEngine(tiny_model, case.build(tiny_model, bound=case.holding(30 + new_tokens)))
    assert engine.generate(prompts, new_tokens).tokens == full


@pytest.mark.parametrize("case", CASES)
def test_padded_batch_equals_each_prompt_alone(tiny_model, case):
    engine = DecodingEngine(tiny_model, case.build(tiny_model, bound=12), pad_token_id=0)
    prompts = random_prompts([7, 19, 12], seed=3)
    alone = [engine.generate([p], 30).tokens[0] for p in prompts]
    assert engine.generate(prompts, 30).tokens == alone


def live_per_head(cache) -> list[int]:
    """Per layer, the live slots of the fullest sequence, averaged over its KV heads (the slots held
    per head for every method but Ada-KV, whose heads hold different counts)."""
    return [int(layer.valid.sum(dim=(1, 2)).max()) // layer.valid.shape[1] for layer in cache.layers]


@pytest.mark.parametrize("case", BUDGETED)
def test_cache_never_exceeds_the_budget(tiny_model, case):
    m = 10
    engine = DecodingEngine(tiny_model, case.build(tiny_model, bound=m))
    cache = engine.new_cache()
    prompt = torch.tensor([random_prompts([25])[0]])
    logits = engine.forward(cache, prompt, torch.arange(25)[None])
    sizes = [live_per_head(cache)]
    for step in range(20):
        token = logits[:, -1].argmax(-1, keepdim=True)
        logits = engine.forward(cache, token, torch.tensor([[25 + step]]))
        sizes.append(live_per_head(cache))
    budgets = [engine.policy.layer_budget(layer) for layer in cache.layers]
    # Held, and reached in every layer: the budget (per layer, with any declared slack) bounds the cache.
    assert [max(s[i] for s in sizes) for i in range(len(budgets))] == budgets
    assert all(layer.seen >= 45 for layer in cache.layers)
