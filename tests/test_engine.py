"""The engine equals Hugging Face generation where it must and catches a policy over its budget.

The generic method tests (every method: equal to full above the sequence, batches, budget held) are
in ``test_methods.py``."""

from __future__ import annotations

import pytest
import torch

from adore import BudgetViolation, DecodingEngine, PolicyCache
from adore.methods import build_policy
from baselines.window import WindowAttention
from tests.conftest import random_prompts, tiny_llama


def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),  # without it, generate masks every id equal to pad_token_id
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
    )
    return out[0, len(prompt) :].tolist()


def test_full_equals_hf_generate_on_tiny_llama(tiny_model):
    engine = DecodingEngine(tiny_model, build_policy("full"))
    for prompt in random_prompts([5, 13, 31]):
        assert engine.generate([prompt], 40).tokens[0] == hf_greedy(tiny_model, prompt, 40)


@pytest.mark.model
def test_full_equals_hf_generate_on_smollm2(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain why the sky is blue in two sentences."}],
        add_generation_prompt=True,
        tokenize=True,
    )["input_ids"]
    engine = DecodingEngine(smollm2.model, build_policy("full"), pad_token_id=tokenizer.pad_token_id)
    assert engine.generate([prompt], 24).tokens[0] == hf_greedy(smollm2.model, prompt, 24)


@pytest.mark.model
@pytest.mark.parametrize("name", ["h2o", "streaming_llm"])
def test_budget_at_least_total_length_equals_full_on_smollm2(smollm2, name):
    prompt = smollm2.tokenizer("The history of the printing press begins")["input_ids"]
    full = DecodingEngine(smollm2.model, build_policy("full")).generate([prompt], 16).tokens
    assert DecodingEngine(smollm2.model, build_policy(name, m=64)).generate([prompt], 16).tokens == full


@pytest.mark.model
def test_batch_equals_alone_on_smollm2_with_eviction(smollm2):
    tokenizer = smollm2.tokenizer
    texts = ["Once upon a time", "The three laws of thermodynamics state that energy", "Paris is"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    engine = DecodingEngine(smollm2.model, build_policy("h2o", m=8), pad_token_id=tokenizer.pad_token_id)
    alone = [engine.generate([p], 12).tokens[0] for p in prompts]
    assert engine.generate(prompts, 12).tokens == alone


def test_a_policy_that_keeps_too_much_is_caught(tiny_model):
    class Leaky(WindowAttention):
        def target_size(self, stored: int) -> int:
            return self.m + 1

    engine = DecodingEngine(tiny_model, Leaky(m=8))
    with pytest.raises(BudgetViolation, match="holds 9 > m=8"):
        engine.generate(random_prompts([20]), 4)


def test_model_without_kv_policy_attention_is_caught():
    model = tiny_llama(attn_implementation="sdpa")
    with pytest.raises(BudgetViolation, match="attn_implementation='kv_policy'"):
        DecodingEngine(model, build_policy("window", m=8)).generate(random_prompts([20]), 4)


def test_tokens_fed_at_earlier_positions_equal_one_by_one(tiny_model):
    """The rebuild primitive: several tokens at chosen old positions in one pass, causal by position."""
    ids = torch.tensor([random_prompts([30])[0]])
    policy = build_policy("full")
    engine = DecodingEngine(tiny_model, policy)

    def cache_without_10_to_19() -> PolicyCache:
        cache = engine.new_cache()
        engine.forward(cache, ids, torch.arange(30)[None])
        keep = torch.tensor([*range(10), *range(20, 30)])
        for layer in cache.layers:
            layer.gather(keep.view(1, 1, -1).expand(1, layer.keys.shape[1], -1))
        return cache

    positions = [12, 15, 30]
    new_ids = torch.tensor([[ids[0, 12].item(), ids[0, 15].item(), 7]])
    together = engine.forward(cache_without_10_to_19(), new_ids, torch.tensor([positions]), logits_to_keep=3)
    cache = cache_without_10_to_19()
    one_by_one = [
        engine.forward(cache, new_ids[:, i : i + 1], torch.tensor([[p]]))[:, -1] for i, p in enumerate(positions)
    ]
    torch.testing.assert_close(together[0], torch.cat(one_by_one), atol=1e-4, rtol=1e-4)
    # And it differs from ignoring positions (the index-causal mask would let token@12 see 20..29).
    plain = tiny_model(input_ids=new_ids, cache=cache_without_10_to_19(), logits_to_keep=3).logits
    assert (plain[0, 0] - together[0, 0]).abs().max() > 1e-3
