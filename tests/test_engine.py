"""The engine equals Hugging Face generation where it must and catches a policy over its budget.

The generic method tests (every method: equal to full above the sequence, batches, budget held) are
in ``test_methods.py``."""

from __future__ import annotations

import pytest
import torch

from adore import BudgetViolation, DecodingEngine, PolicyCache
from adore.core.errors import ConfigError
from adore.methods import build_policy
from baselines.window import WindowAttention
from tests.conftest import random_prompts, tiny_llama
from tests.methods_under_test import bind_random_controller


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


@pytest.mark.parametrize(
    ("method", "params", "prefill_slots", "decode_slots"),
    [
        # Reserved slots summed over the 2 layers (prompt 20, 6 new tokens, m = 8).
        ("full", {}, 2 * (20 + 6), 2 * (20 + 6)),  # once, for prompt + new tokens
        ("window", {"m": 8}, 2 * 20, 2 * (8 + 1)),  # one plan after the forward: the prompt in both layers
        ("h2o", {"m": 8}, 20 + (8 + 1), 2 * (8 + 1)),  # evicts layer by layer: the prompt in one at a time
        ("adore", {"m": 8, "R": 3, "K": 4}, 2 * 20, 2 * (8 + 1 + 3)),  # m + the current token + R rebuilt
    ],
)
def test_kv_bytes_are_the_most_reserved_at_any_moment(tiny_model, method, params, prefill_slots, decode_slots):
    """One memory figure: the high-water mark of the KV bytes the cache reserves, the prefill included
    (``kv_peak_bytes``), and the same over the decode steps (``kv_decode_peak_bytes``): a bounded layer
    reserves its budget plus one step's tokens, whatever it holds at the end."""
    per_slot = 2 * 2 * 16 * 4  # keys and values x 2 KV heads x head dim 16 x fp32
    policy = build_policy(method, **params)
    if method == "adore":
        policy = bind_random_controller(policy, tiny_model)
    result = DecodingEngine(tiny_model, policy).generate(random_prompts([20]), 6)
    assert result.kv_peak_bytes == max(prefill_slots, decode_slots) * per_slot
    assert result.kv_decode_peak_bytes == decode_slots * per_slot


def test_move_last_into_is_one_in_one_out():
    """SlotStore's in-place one-in/one-out equals the plain rule: in each (sequence, head) the victim
    slot takes the last slot's contents, and the last slot is dropped; the buffers stay."""
    from adore.core.slots import SlotStore

    torch.manual_seed(0)
    B, H, S, D = 2, 3, 6, 4
    tensors = {"keys": torch.randn(B, H, S, D), "positions": torch.arange(B * H * S).view(B, H, S)}
    store = SlotStore()
    store.append(tensors, capacity=S + 1)
    buffer = store.buffers["keys"].data_ptr()
    victim = torch.tensor([[[0], [5], [2]], [[4], [1], [3]]])  # [B, H, 1]; 5 is the last slot itself
    store.move_last_into(victim)
    assert store.length == S - 1 and store.buffers["keys"].data_ptr() == buffer
    for name, before in tensors.items():
        expected = before.clone()
        for b in range(B):
            for h in range(H):
                expected[b, h, int(victim[b, h, 0])] = before[b, h, S - 1]
        assert torch.equal(store.view(name), expected[:, :, : S - 1]), name


def test_a_stacked_move_equals_each_layers_own_move():
    """StackedSlots moves every layer's victim slot in one scatter per name: the same contents as each
    store moving its own; a store that reallocates leaves the stack."""
    from adore.core.slots import SlotStore, StackedSlots

    torch.manual_seed(0)
    B, H, S, D = 2, 3, 6, 4

    def stores() -> list[SlotStore]:
        torch.manual_seed(1)
        made = []
        for _ in range(3):
            store = SlotStore()
            store.append({"keys": torch.randn(B, H, S, D), "valid": torch.rand(B, H, S) > 0.3}, capacity=S + 1)
            made.append(store)
        return made

    victim = torch.tensor([[[0], [5], [2]], [[4], [1], [3]]])
    alone, stacked = stores(), stores()
    assert StackedSlots.fits(stacked)
    stack = StackedSlots(stacked)
    assert stack.intact()
    assert len({s.buffers["keys"].untyped_storage().data_ptr() for s in stacked}) == 1  # one buffer
    for store in alone:
        store.move_last_into(victim)
    stack.move_last_into(victim)
    for mine, theirs in zip(stacked, alone, strict=True):
        assert mine.length == theirs.length == S - 1
        for name in ("keys", "valid"):
            assert torch.equal(mine.view(name), theirs.view(name)), name
    stacked[1].append({"keys": torch.randn(B, H, 3, D), "valid": torch.ones(B, H, 3, dtype=torch.bool)}, S + 2)
    assert not stack.intact()  # it outgrew its row: moved to buffers of its own
    assert stack.members() == [stacked[0], stacked[2]]
    before = [store.view("keys").clone() for store in stacked]
    stack.release()  # the others get buffers of their own, with the same contents
    assert len({store.buffers["keys"].untyped_storage().data_ptr() for store in stacked}) == 3
    assert all(torch.equal(store.view("keys"), kept) for store, kept in zip(stacked, before, strict=True))
    other = SlotStore()
    other.append({"keys": torch.randn(B, H, S, D + 1), "valid": torch.ones(B, H, S, dtype=torch.bool)}, S + 1)
    assert not StackedSlots.fits([alone[0], other])  # shapes differ


@pytest.mark.parametrize(("prompt", "stacked"), [(20, True), (17, False)])
def test_a_uniform_policy_evicts_every_layer_through_one_stack(tiny_model, prompt, stacked):
    """After the prefill's eviction a uniform policy's layers live in one buffer per name, and the
    decode steps keep them there; unless filling the stack (beside the layers' own 2 x (m + 1) slots)
    would reserve more than the prompt did: then each layer moves its own slots, to the same keep-set."""
    engine = DecodingEngine(tiny_model, build_policy("window", m=8))
    cache = engine.new_cache()
    engine.forward(cache, torch.tensor([random_prompts([prompt])[0]]), torch.arange(prompt)[None])
    peak = cache.peak_kv_bytes
    if stacked:  # the layers' keys are views of the stack already, before any decode step
        assert len({layer.keys.untyped_storage().data_ptr() for layer in cache.layers}) == 1
    for step in range(4):
        engine.forward(cache, torch.tensor([[7]]), torch.tensor([[prompt + step]]))
        assert (cache._stacked is not None) == stacked
        assert len({layer.keys.untyped_storage().data_ptr() for layer in cache.layers}) == (1 if stacked else 2)
        expected = [list(range(prompt - 7 + step, prompt + 1 + step))] * 2
        assert cache.stored_positions(0) == cache.stored_positions(1) == [expected]
    assert cache.peak_kv_bytes == peak == 2 * prompt * 2 * 2 * 16 * 4  # the prompt in both layers


def test_a_stream_fed_in_chunks_leaves_the_stack_and_equals_per_layer_moves(tiny_model):
    """A step that feeds several tokens after the stack exists would move each layer out of it while
    the stack still held its row: the layers get buffers of their own for good, every keep-set and
    key equals a cache that never stacked, and the memory figures are the same."""
    chunks = [40, 30, 1, 1, 30, 1]
    ids = torch.tensor([random_prompts([sum(chunks)])[0]])
    engine = DecodingEngine(tiny_model, build_policy("window", m=8))
    stacked, alone = engine.new_cache(), engine.new_cache()
    alone._stackable = False
    start = 0
    for step, q in enumerate(chunks):
        positions = torch.arange(start, start + q)[None]
        for cache in (stacked, alone):
            engine.forward(cache, ids[:, start : start + q], positions)
        start += q
        assert (stacked._stacked is not None) == (step == 0)  # built after the first chunk, then gone
        assert stacked.stored_positions(0) == alone.stored_positions(0)
        for mine, theirs in zip(stacked.layers, alone.layers, strict=True):
            order, reference = mine.positions.argsort(-1), theirs.positions.argsort(-1)
            torch.testing.assert_close(
                mine.keys.gather(2, order[..., None].expand_as(mine.keys)),
                theirs.keys.gather(2, reference[..., None].expand_as(theirs.keys)),
            )
        assert stacked.held_bytes == alone.held_bytes and stacked.peak_kv_bytes == alone.peak_kv_bytes


def test_storage_is_written_in_place(tiny_model):
    """A bounded cache keeps one buffer per layer from the first decode step on (no per-step copy of
    the cache); full attention allocates once for the announced length."""
    for method, params in (("h2o", {"m": 8}), ("window", {"m": 8}), ("full", {})):
        engine = DecodingEngine(tiny_model, build_policy(method, **params))
        cache = engine.new_cache()
        cache.expected_length = 20 + 6
        prompt = torch.tensor([random_prompts([20])[0]])
        engine.forward(cache, prompt, torch.arange(20)[None])
        buffers = [layer.slots.buffers["keys"].data_ptr() for layer in cache.layers]
        for step in range(5):
            engine.forward(cache, torch.tensor([[7]]), torch.tensor([[20 + step]]))
            assert [layer.slots.buffers["keys"].data_ptr() for layer in cache.layers] == buffers, (method, step)
            assert all(layer.keys.data_ptr() == buffer for layer, buffer in zip(cache.layers, buffers, strict=True))


def test_reorders_that_would_strand_slot_positions_are_refused(tiny_model):
    """transformers' beam search and assisted decoding move keys and values only: a filled policy
    cache refuses them with one line, an empty one lets them pass (nothing to move)."""
    engine = DecodingEngine(tiny_model, build_policy("h2o", m=8))
    cache = engine.new_cache()
    cache.reorder_cache(torch.tensor([0]))  # empty: a no-op, as in DynamicCache
    engine.forward(cache, torch.tensor([random_prompts([12])[0]]), torch.arange(12)[None])
    for call in (lambda: cache.reorder_cache(torch.tensor([0])), lambda: cache.batch_select_indices(torch.tensor([0])),
                 lambda: cache.batch_repeat_interleave(2), lambda: cache.crop(-2)):  # fmt: skip
        with pytest.raises(ConfigError, match="not supported with a KV policy cache"):
            call()
