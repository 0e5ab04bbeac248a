"""ADORE: equality with full attention where it must, the oracle keep-set, rebuild exactness,
matrix slicing, the controller's learning, labels and fine-tuning."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from adore import ConfigError, DecodingEngine
from adore.controller import ControllerConfig, ImportanceController
from adore.finetune import FinetuneExample, LoraConfig, sparse_attention_mask, sparse_finetune
from adore.labels import aggregated_attention, topk_past
from adore.methods import build_policy
from adore.training import LabelledSequence, train_controller
from tests.conftest import random_prompts, tiny_llama
from tests.test_keep_sets import ReferenceAttention


def adore(model, **params):
    torch.manual_seed(0)
    controller = ImportanceController(model.config.hidden_size, ControllerConfig(width=16))
    return build_policy("adore", **params).bind(controller, model.get_input_embeddings())


@pytest.mark.parametrize("R", [0, 8])
def test_budget_above_total_length_equals_full(tiny_model, R):
    """With nothing ever released, rebuilding has nothing to do and ADORE is full attention."""
    prompts = random_prompts([9, 30])
    full = DecodingEngine(tiny_model, build_policy("full")).generate(prompts, 30).tokens
    policy = adore(tiny_model, m=60, R=R, K=8)
    engine = DecodingEngine(tiny_model, policy)
    assert engine.generate(prompts, 30).tokens == full


@pytest.mark.parametrize("slicing,R", [("gather", 3), ("matmul", 3), ("gather", 0)])
def test_batch_equals_alone_and_budget_holds(tiny_model, slicing, R):
    engine = DecodingEngine(tiny_model, adore(tiny_model, m=10, R=R, K=4, slicing=slicing), pad_token_id=0)
    prompts = random_prompts([7, 19, 12], seed=3)
    alone = [engine.generate([p], 25).tokens[0] for p in prompts]
    assert engine.generate(prompts, 25).tokens == alone


def test_gather_equals_matmul(tiny_model):
    runs = {}
    for slicing in ("gather", "matmul"):
        engine = DecodingEngine(tiny_model, adore(tiny_model, m=10, R=4, K=4, slicing=slicing))
        cache = engine.new_cache()
        logits = engine.forward(cache, torch.tensor(random_prompts([20])), torch.arange(20)[None])
        kept, tokens = [], []
        for step in range(20):
            tokens.append(logits[0, -1].argmax().item())
            logits = engine.forward(cache, torch.tensor([[tokens[-1]]]), torch.tensor([[20 + step]]))
            kept.append([cache.stored_positions(layer)[0][0] for layer in range(2)])
        runs[slicing] = tokens, kept, cache.state["rebuilt"]
    assert runs["gather"] == runs["matmul"]
    assert runs["gather"][2] > 0  # tokens were rebuilt


def test_one_keep_set_for_all_layers_and_never_above_m(tiny_model):
    engine = DecodingEngine(tiny_model, adore(tiny_model, m=10, R=4, K=4))
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor(random_prompts([20])), torch.arange(20)[None])
    for step in range(15):
        token = logits[:, -1].argmax(-1, keepdim=True)
        logits = engine.forward(cache, token, torch.tensor([[20 + step]]))
        assert [layer.stored for layer in cache.layers] == [10, 10]
        keep_sets = [cache.stored_positions(layer)[0][h] for layer in range(2) for h in range(2)]
        assert all(k == keep_sets[0] for k in keep_sets)
        assert 20 + step in keep_sets[0]  # the current token always stays


def test_recent_tokens_are_kept_and_the_controller_ranks_the_rest(tiny_model):
    """n_recent=r: the r newest positions always stay; the other m - r are the previous keep-set's (and
    the new token's) top scores, the rule written out here."""
    m, r, prompt = 10, 4, 20
    engine = DecodingEngine(tiny_model, adore(tiny_model, m=m, R=0, K=4, n_recent=r))
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor(random_prompts([prompt])), torch.arange(prompt)[None])
    kept = cache.stored_positions(0)[0][0]
    assert set(range(prompt - r, prompt)) <= set(kept) and len(kept) == m
    for t in range(prompt, prompt + 15):
        logits = engine.forward(cache, logits[:, -1].argmax(-1, keepdim=True), torch.tensor([[t]]))
        scores = cache.state["scores"][0]
        candidates = [*kept, t]
        recent = [p for p in candidates if p > t - r]
        ranked = sorted((p for p in candidates if p <= t - r), key=lambda p: -float(scores[p]))
        expected = sorted(recent + ranked[: m - len(recent)])
        kept = cache.stored_positions(0)[0][0]
        assert kept == expected and all(cache.stored_positions(1)[0][h] == kept for h in range(2))


def test_without_rebuilds_the_cached_tokens_are_scored_as_among_every_position(tiny_model):
    """R=0 scores only the cached tokens (O(m) a step): their scores are the controller's teacher-forced
    logits over the whole sequence, every other position is -inf, and the keep-set is the top m - 1
    of them by those logits, plus the current token (the rule written out here)."""
    m, prompt = 10, 20
    policy = adore(tiny_model, m=m, R=0, K=4)
    engine, embed = DecodingEngine(tiny_model, policy), tiny_model.get_input_embeddings()
    cache = engine.new_cache()
    ids = random_prompts([prompt])[0]
    logits = engine.forward(cache, torch.tensor([ids]), torch.arange(prompt)[None])
    for t in range(prompt, prompt + 15):
        kept = cache.stored_positions(0)[0][0]
        ids.append(int(logits[0, -1].argmax()))
        logits = engine.forward(cache, torch.tensor([ids[-1:]]), torch.tensor([[t]]))
        with torch.no_grad():
            reference = policy.network.pair_logits(embed(torch.tensor([ids])), torch.arange(t + 1)[None])[0, t]
        scores = cache.state["scores"][0]
        assert torch.isfinite(scores).nonzero().flatten().tolist() == kept
        torch.testing.assert_close(scores[kept].float(), reference[kept])
        expected = sorted([*sorted(kept, key=lambda p: -float(reference[p]))[: m - 1], t])
        assert cache.stored_positions(0)[0][0] == expected


def test_without_rebuilds_chunked_feeds_keep_what_scoring_every_position_keeps(tiny_model):
    """Feeds of several tokens after the prefill: the new tokens compete with the cached ones, and
    scoring just those gives the keep-sets and scores of scoring every position."""
    chunks = [25, 7, 1, 13, 1, 1, 40, 3]
    ids = torch.tensor([random_prompts([sum(chunks)])[0]])
    runs = []
    for every_position in (False, True):
        policy = adore(tiny_model, m=10, R=0, K=4, n_sink=1, n_recent=2)
        if every_position:  # the scorer before scoring was restricted to the cache
            scored = policy._score
            policy._score = lambda *args, scored=scored: scored(*args[:5], None)
        engine = DecodingEngine(tiny_model, policy)
        cache, start, kept = engine.new_cache(), 0, []
        for q in chunks:
            engine.forward(cache, ids[:, start : start + q], torch.arange(start, start + q)[None])
            start += q
            positions = cache.stored_positions(0)[0][0]
            kept.append((positions, cache.state["scores"][0, positions]))
        runs.append(kept)
    for (mine, my_scores), (theirs, their_scores) in zip(*runs, strict=True):
        assert mine == theirs
        torch.testing.assert_close(my_scores, their_scores)  # the same logits, up to summation order


def test_reencode_restarts_the_recurrence_over_the_last_n_tokens_every_n_tokens(tiny_model):
    """reencode=N: the rule written out here. The state continues the recurrence token by token, and
    once N tokens have arrived since the last restart it is the recurrence of the last N tokens alone."""
    N, prompt = 8, 20
    policy = adore(tiny_model, m=10, R=2, K=4, reencode=N)
    engine, embed = DecodingEngine(tiny_model, policy), tiny_model.get_input_embeddings()
    encode = policy.network.encode
    ids = random_prompts([prompt])[0]
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor([ids]), torch.arange(prompt)[None])
    _, expected = encode(embed(torch.tensor([ids[-N:]])), torch.arange(prompt - N, prompt)[None], None)
    torch.testing.assert_close(cache.state["recurrent"], expected)  # the prompt's 20 tokens: a restart
    since, restarts = 0, 0
    for t in range(prompt, prompt + 20):
        previous = cache.state["recurrent"].clone()
        ids.append(int(logits[0, -1].argmax()))
        logits = engine.forward(cache, torch.tensor([ids[-1:]]), torch.tensor([[t]]))
        since += 1
        if since >= N:
            since, restarts = 0, restarts + 1
            _, expected = encode(embed(torch.tensor([ids[-N:]])), torch.arange(t + 1 - N, t + 1)[None], None)
        else:
            _, expected = encode(embed(torch.tensor([ids[-1:]])), torch.tensor([[t]]), previous)
        torch.testing.assert_close(cache.state["recurrent"], expected)
    assert restarts == 2


def test_reencode_keeps_a_padded_batch_equal_to_each_prompt_alone(tiny_model):
    engine = DecodingEngine(tiny_model, adore(tiny_model, m=10, R=3, K=4, reencode=6), pad_token_id=0)
    prompts = random_prompts([7, 19, 12], seed=3)
    alone = [engine.generate([p], 25).tokens[0] for p in prompts]
    assert engine.generate(prompts, 25).tokens == alone


def test_rebuilt_tokens_have_their_original_layer0_states(tiny_model):
    """A rebuilt token is re-fed at its original position: in layer 0 its K/V are exactly the originals."""
    policy = adore(tiny_model, m=8, R=4, K=4)
    engine = DecodingEngine(tiny_model, policy)
    cache = engine.new_cache()
    prompt = random_prompts([24])[0]
    logits = engine.forward(cache, torch.tensor([prompt]), torch.arange(24)[None])
    sequence = list(prompt)
    for step in range(12):
        sequence.append(logits[0, -1].argmax().item())
        logits = engine.forward(cache, torch.tensor([[sequence[-1]]]), torch.tensor([[24 + step]]))
    assert cache.state["rebuilt"] > 0
    reference = DecodingEngine(tiny_model, build_policy("full"))
    full = reference.new_cache()
    reference.forward(full, torch.tensor([sequence]), torch.arange(len(sequence))[None])
    layer, original = cache.layers[0], full.layers[0]
    positions = layer.positions[0, 0]
    assert not bool((positions[:-1].diff() > 0).all()), "rebuilt tokens are stored out of position order"
    torch.testing.assert_close(layer.keys[0], original.keys[0][:, positions], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.values[0], original.values[0][:, positions], atol=1e-5, rtol=1e-5)


def test_oracle_scorer_keeps_the_top_m_of_the_true_aggregated_attention():
    """R=0 with the oracle scorer: after every step the cache is the top-m set (by the current token's
    attention, averaged over layers and heads) of what was cached plus the current token."""
    m, prompt_len, steps = 8, 20, 15
    prompt = random_prompts([prompt_len], seed=7)[0]
    engine = DecodingEngine(tiny_llama(), build_policy("adore", m=m, R=0, K=4, scorer="oracle"))
    cache = engine.new_cache()
    logits = engine.forward(cache, torch.tensor([prompt]), torch.arange(prompt_len)[None])
    ours, tokens = [cache.stored_positions(0)[0][0]], []
    for step in range(steps):
        tokens.append(logits[0, -1].argmax().item())
        logits = engine.forward(cache, torch.tensor([[tokens[-1]]]), torch.tensor([[prompt_len + step]]))
        ours.append(cache.stored_positions(0)[0][0])

    # Reference: eager attention over a full cache, evicted tokens hidden, keep-set chosen in Python.
    attention = ReferenceAttention()
    AttentionInterface.register("reference_masked", attention)
    AttentionMaskInterface.register("reference_masked", sdpa_mask)
    model = tiny_llama("reference_masked")
    from transformers import DynamicCache

    dynamic = DynamicCache()
    ids, positions, keep, reference = torch.tensor([prompt]), list(range(prompt_len)), set(), []
    with torch.no_grad():
        for step in range(steps + 1):
            model(input_ids=ids, position_ids=torch.tensor([positions]), cache=dynamic)
            current = positions[-1]
            mass = sum(attention.probs[layer][:, -1].sum(0) for layer in range(2))  # [K]
            candidates = (keep | set(positions)) - {current}
            best = sorted(candidates, key=lambda p: -mass[p].item())[: m - 1]
            keep = {current, *best}
            reference.append(sorted(keep))
            if step == steps:
                break
            position = prompt_len + step
            visible = torch.tensor([k in keep or k == position for k in range(position + 1)])
            for layer in range(2):
                attention.visible[layer] = visible[None].expand(2, -1)
            ids, positions = torch.tensor([[tokens[step]]]), [position]
    assert ours == reference


def test_controller_learns_a_synthetic_importance_pattern():
    """Tokens with ids below 4 are the important ones; the controller must find them from embeddings."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(40, 24, generator=generator)

    def sequence():
        ids = torch.randint(0, 40, (48,), generator=generator)
        important = (ids < 4)[None].expand(48, 48)
        return LabelledSequence(table[ids], important & torch.ones(48, 48, dtype=torch.bool).tril(-1))

    train = [sequence() for _ in range(40)]
    held_out = [sequence() for _ in range(8)]
    result = train_controller(train, held_out, ControllerConfig(width=32), K=4, m=8, epochs=6, lr=1e-2, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert result.recall > 0.9 and result.recall > 3 * result.chance_recall
    assert int(result.controller.trained_positions) == 48  # the longest training sequence


def test_positions_beyond_training_share_the_last_trained_embedding():
    controller = ImportanceController(24, ControllerConfig(width=16)).eval()
    controller.trained_positions.fill_(8)
    embeddings = torch.randn(1, 3, 24)
    beyond, _ = controller.encode(embeddings, torch.tensor([[7, 50, 900]]))
    last, _ = controller.encode(embeddings, torch.tensor([[7, 7, 7]]))
    inside, _ = controller.encode(embeddings, torch.tensor([[6, 6, 6]]))
    assert torch.equal(beyond, last) and not torch.equal(inside, last)


def test_relative_positions_score_a_shifted_sequence_alike():
    """Without p_i, only order and distance matter: the same tokens 5000 positions later (past any
    training length) get the same logits; with the absolute table they do not."""
    torch.manual_seed(0)
    embeddings, positions = torch.randn(1, 6, 24), torch.arange(6)[None]
    relative = ImportanceController(24, ControllerConfig(width=16, positions="relative")).eval()
    absolute = ImportanceController(24, ControllerConfig(width=16)).eval()
    assert relative.position is None
    for controller, same in ((relative, True), (absolute, False)):
        with torch.no_grad():
            torch.nn.init.normal_(controller.distance_bias.weight)
            if controller.position is not None:
                torch.nn.init.normal_(controller.position.weight)
            near = controller.pair_logits(embeddings, positions)
            far = controller.pair_logits(embeddings, positions + 5000)
        assert torch.allclose(near, far, atol=1e-5) is same
    with pytest.raises(ConfigError, match="method.controller.positions must be one of absolute, relative"):
        ControllerConfig(positions="rotary")


def plain_pair_logits(controller: ImportanceController, embeddings: torch.Tensor) -> torch.Tensor:
    """The query-aware logits ``[T, T]`` written out: ``MLP(u_i) + <W_q u_t, W_k u_i> / sqrt(W) + b(t - i)``,
    the distance bias an ordinary embedding lookup of the logarithmic bucket."""
    from adore.release.controller import distance_bucket

    T, width = embeddings.shape[0], controller.config.width
    u = controller.encode(embeddings[None], torch.arange(T)[None])[0][0]
    distance = torch.arange(T)[:, None] - torch.arange(T)[None]
    buckets = distance_bucket(distance, controller.config.distance_buckets)
    bias = torch.nn.functional.embedding(buckets, controller.distance_bias.weight)[..., 0]
    return controller.token_mlp(u)[:, 0][None] + controller.query(u) @ controller.key(u).T / width**0.5 + bias


def test_chunked_sequence_loss_equals_the_whole_matrix_loss():
    """Row chunks with recomputation, mask weights instead of selection, and the bucket lookup with its
    bincount gradient give the loss and gradients of the plain class-weighted BCE."""
    from adore.release.training import sequence_loss

    torch.manual_seed(0)
    T, K = 600, 4  # distances past the last bucket's first (431 of 32 buckets)
    labels = torch.rand(T, T).lt(0.05) & torch.ones(T, T, dtype=torch.bool).tril(-1)
    sequence = LabelledSequence(torch.randn(T, 24), labels)
    controller = ImportanceController(24, ControllerConfig(width=16, positions="relative"))
    torch.nn.init.normal_(controller.distance_bias.weight)
    # the reference: every informative pair at once
    mask = torch.ones(T, T, dtype=torch.bool).tril(-1)
    mask[: K + 1] = False
    logits = plain_pair_logits(controller, sequence.embeddings)[mask]
    target = labels[mask].float()
    weight = (target.numel() - target.sum()) / target.sum()
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    expected = torch.autograd.grad(reference, controller.parameters())
    for row_chunk in (T, 70):
        loss = sequence_loss(controller, sequence, K, row_chunk=row_chunk)
        grads = torch.autograd.grad(loss, controller.parameters())
        assert torch.allclose(loss, reference, atol=1e-6)
        assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected, strict=True))


@pytest.mark.parametrize("start", ["zeros", "given"])
def test_the_gru_layers_backward_equals_autograds_through_nn_gru(start):
    """The recomputed-gate backward gives nn.GRU's outputs and autograd's gradients for every input
    and weight (float64, a batch of two, a nonzero starting state)."""
    from adore.release.gru_backward import gru_layer

    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 5, batch_first=True).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True) if start == "given" else None
    weights = torch.randn(2, 11, 5, dtype=torch.float64)
    inputs = [x, *([h0] if h0 is not None else []), *gru.parameters()]
    reference = gru(x, h0)[0]
    expected = torch.autograd.grad((reference * weights).sum(), inputs)
    out = gru_layer(gru, x, h0)
    assert torch.equal(out, reference)
    got = torch.autograd.grad((out * weights).sum(), inputs)
    assert all(torch.allclose(g, e, atol=1e-12) for g, e in zip(got, expected, strict=True))


@pytest.mark.parametrize("buckets", [1, 5, 8, 9, 16, 32, 40, 64])
def test_the_bucket_table_gives_every_distances_logarithmic_bucket(buckets):
    from adore.release.controller import bucket_table, distance_bucket

    table, distance = bucket_table(buckets), torch.arange(-3, 200_000)
    assert torch.equal(table[distance.clamp(0, len(table) - 1)], distance_bucket(distance, buckets))


def test_a_controller_with_buckets_past_the_table_scores_by_the_formula():
    """100 buckets would need a table of ~56M distances: none is built, and the logits are the plain ones."""
    torch.manual_seed(0)
    controller = ImportanceController(24, ControllerConfig(width=16, distance_buckets=100, positions="relative"))
    torch.nn.init.normal_(controller.distance_bias.weight)
    assert controller.bucket_of_distance is None
    embeddings = torch.randn(50, 24)
    expected = plain_pair_logits(controller, embeddings)
    assert torch.allclose(controller.pair_logits(embeddings[None], torch.arange(50)[None])[0], expected, atol=1e-6)


def test_an_interrupted_training_resumes_to_the_controller_of_an_uninterrupted_one(tmp_path):
    """The per-epoch state (weights, Adam moments, both generators, the shuffled order) restores the
    exact run; a state cut short is ignored and the run starts over from the seed."""
    torch.manual_seed(1)
    sequences = [LabelledSequence(torch.randn(30, 12), topk_past(torch.rand(30, 30), K=3, horizon=2)) for _ in range(4)]
    config = ControllerConfig(width=8, positions="relative")

    def train(epochs: int, state=None):
        return train_controller(sequences, sequences[:1], config, K=3, m=6, epochs=epochs, progress=False,
                                state_path=state)  # fmt: skip

    whole, state = train(3), tmp_path / "state.pt"
    assert train(1, state).resumed_after_epoch == 0 and state.is_file()
    torch.manual_seed(99)  # the resumed run does not depend on the generator it finds
    resumed = train(3, state)
    assert resumed.resumed_after_epoch == 1
    assert resumed.losses == whole.losses and resumed.step_losses == whole.step_losses
    assert resumed.recall == whole.recall
    weights = whole.controller.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in resumed.controller.state_dict().items())
    state.write_bytes(b"cut short")
    again = train(3, state)
    assert again.resumed_after_epoch == 0 and again.losses == whole.losses
    # a state another seed wrote, or one without its generators, is not resumed either
    train(1, state)
    other_seed = train_controller(sequences, [], config, K=3, m=6, epochs=3, seed=1, progress=False, state_path=state)
    fresh_seed = train_controller(sequences, [], config, K=3, m=6, epochs=3, seed=1, progress=False)
    assert other_seed.resumed_after_epoch == 0 and other_seed.losses == fresh_seed.losses != whole.losses
    train(1, state)
    incomplete = torch.load(state, weights_only=True)
    del incomplete["python_rng"]
    torch.save(incomplete, state)
    assert train(3, state).losses == whole.losses


def test_label_cache_serves_the_topk_of_the_model_it_was_computed_with(tmp_path):
    """A second labelling reads the picks back (a different model's labels would differ), applies its
    own horizon to them, and recomputes a file that does not load."""
    from adore import LoadedModel
    from adore.release.artifacts import _labelled
    from adore.release.label_cache import LabelCache

    ids = list(range(3, 40))
    first, second = (LoadedModel(tiny_llama(seed=s), None, "tiny", torch.device("cpu"), torch.float32) for s in (0, 5))
    truth = {seed: aggregated_attention(loaded.model, ids) for seed, loaded in ((0, first), (5, second))}
    assert not torch.equal(topk_past(truth[0], K=4), topk_past(truth[5], K=4))
    cache = LabelCache(tmp_path, "mean", "current", K=4)
    for loaded, horizon in ((first, 1), (second, 3)):  # the second model is served the first one's picks
        (labelled,) = _labelled(loaded, [ids], cache, horizon, "labels")
        assert torch.equal(labelled.labels, topk_past(truth[0], K=4, horizon=horizon))
        assert torch.equal(labelled.embeddings, loaded.model.get_input_embeddings()(torch.tensor(ids)))
    cache.path(ids).write_bytes(b"cut short")
    (labelled,) = _labelled(second, [ids], cache, 1, "labels")
    assert torch.equal(labelled.labels, topk_past(truth[5], K=4))
    assert LabelCache(tmp_path, "mean", "current", K=5).path(ids) != cache.path(ids)
    assert LabelCache(tmp_path, "mean", "accumulated", K=4).path(ids) != cache.path(ids)


def test_label_caches_are_named_by_model_dtype_and_the_adapters_weights(tmp_path):
    from adore import LoadedModel
    from adore.release.artifacts import label_cache

    policy = build_policy("adore", m=8, R=0, K=4, artifacts_dir=str(tmp_path))
    fp32, bf16 = (
        LoadedModel(None, None, "tiny", torch.device("cpu"), dtype) for dtype in (torch.float32, torch.bfloat16)
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of one fine-tune")
    folders = [
        label_cache(policy, fp32).folder,
        label_cache(policy, bf16).folder,
        label_cache(policy, fp32, adapter).folder,
    ]
    (adapter / "adapter_model.safetensors").write_bytes(b"weights of a rerun")
    folders.append(label_cache(policy, fp32, adapter).folder)
    assert len(set(folders)) == 4 and all(f.is_relative_to(tmp_path / "adore" / "tiny") for f in folders)


def test_label_size_defaults_to_half_the_budget_up_to_32():
    assert [build_policy("adore", m=m, R=0).K for m in (1, 2, 32, 64, 128, 192)] == [1, 1, 16, 32, 32, 32]
    assert build_policy("adore", m=32, R=0, K=32).K == 32  # given: kept


def test_recall_of_a_scorer_against_a_hand_count():
    """The training-free scorer's recall: ranking by the very attention the horizon-1 labels come
    from finds every true token once m >= K, and m of K when m < K; a reversed ranking finds none
    while the past is no longer than m + K."""
    from adore.release.labels import topk_past
    from adore.release.training import scores_recall_at_m

    torch.manual_seed(0)
    attention = torch.rand(12, 12)
    labels = topk_past(attention, K=3)
    assert scores_recall_at_m([attention], [labels], m=3) == (1.0, scores_recall_at_m([attention], [labels], 3)[1])
    assert scores_recall_at_m([attention], [labels], m=2)[0] == 2 / 3
    recall, chance = scores_recall_at_m([-attention], [labels], m=3)
    rows = range(4, 12)  # queries with more than m past tokens
    hand = sum(len(set((-attention[t, :t]).topk(3).indices.tolist()) & set(labels[t].nonzero().flatten().tolist()))
               for t in rows) / (3 * len(rows))  # fmt: skip
    assert recall == hand and recall < 1.0
    assert chance == pytest.approx(sum(3 / t * 3 for t in rows) / (3 * len(rows)))


def test_labels_are_the_topk_of_mean_attention_over_layers_and_heads():
    prompt = random_prompts([16], seed=2)[0]
    ours = aggregated_attention(tiny_llama(), prompt)
    eager = tiny_llama("eager")
    with torch.no_grad():
        attentions = eager(torch.tensor([prompt]), output_attentions=True).attentions
    expected = torch.stack([a[0] for a in attentions]).mean(dim=(0, 1))  # layers, heads
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)

    labels = topk_past(expected, K=3)
    for t in range(16):
        past = expected[t, :t]
        want = set(past.topk(min(3, t)).indices.tolist()) if t else set()
        assert set(labels[t].nonzero().flatten().tolist()) == want


def test_sparse_mask_and_lora_finetune(tmp_path):
    labels = topk_past(aggregated_attention(tiny_llama(), list(range(3, 15))), K=2)
    mask = sparse_attention_mask(labels, torch.float32)[0, 0]
    assert ((mask == 0) == (labels | torch.eye(12, dtype=torch.bool))).all()
    assert (mask[5] == 0).sum() == 3  # two past tokens and itself

    model = tiny_llama()
    before = model(torch.tensor([list(range(3, 15))])).logits
    example = FinetuneExample(list(range(3, 15)), prompt_length=6, labels=labels)
    losses = sparse_finetune(model, [example] * 3, LoraConfig(r=4, lr=1e-2), tmp_path / "adapter")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    torch.testing.assert_close(model(torch.tensor([list(range(3, 15))])).logits, before)  # base untouched


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"m": 8, "K": 4, "R": 9}, "method.R=9 must not exceed method.m=8"),
        ({"m": 8, "K": 4, "R": -1}, "method.R must be a non-negative integer"),
        ({"m": 8, "K": 0}, r"method.K must be an integer in \[1, m=8\]"),
        ({"m": 8, "K": 9}, r"method.K must be an integer in \[1, m=8\]"),
        ({"m": 0}, "method.m must be a positive integer"),
        ({"m": 8, "K": 4, "slicing": "index"}, "method.slicing must be one of gather, matmul"),
        ({"m": 8, "K": 4, "R": 2, "scorer": "oracle"}, "scorer=oracle scores only cached tokens"),
        ({"m": 8, "K": 4, "n_sink": 2, "n_recent": 7}, r"method.n_recent must be in \[0, m - n_sink\], got 7"),
        ({"m": 8, "K": 4, "reencode": -1}, "method.reencode must be 0 .off. or a positive number of tokens"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        build_policy("adore", **params)


def test_unbound_controller_is_a_clear_error(tiny_model):
    with pytest.raises(ConfigError, match="adore has no controller"):
        DecodingEngine(tiny_model, build_policy("adore", m=8, R=0, K=4)).generate(random_prompts([5]), 2)


def test_label_horizon_is_the_union_over_the_next_queries():
    attention = torch.rand(12, 12, generator=torch.Generator().manual_seed(0))
    one, three = topk_past(attention, K=2), topk_past(attention, K=2, horizon=3)
    for t in range(12):
        expected = one[t].clone()
        for later in range(t + 1, min(t + 3, 12)):
            expected |= one[later] & (torch.arange(12) < t)
        assert torch.equal(three[t], expected)
    with pytest.raises(ConfigError, match="horizon must be >= 1"):
        topk_past(attention, K=2, horizon=0)


def test_accumulated_labels_rank_by_attention_summed_over_queries_so_far():
    attention = torch.rand(10, 10, generator=torch.Generator().manual_seed(1)).tril()
    labels = topk_past(attention, K=3, target="accumulated")
    for t in range(10):
        totals = {i: sum(float(attention[s, i]) for s in range(t + 1)) for i in range(t)}  # H2O's score
        expected = set(sorted(totals, key=totals.get, reverse=True)[:3])
        assert set(labels[t].nonzero().flatten().tolist()) == expected
    assert not torch.equal(labels, topk_past(attention, K=3))  # a different target on this fixture
    with pytest.raises(ConfigError, match="labels.target must be one of current, accumulated"):
        topk_past(attention, K=3, target="summed")
    with pytest.raises(ConfigError, match="labels.target must be one of current, accumulated"):
        build_policy("adore", m=8, R=0, K=4, labels={"aggregate": "mean", "horizon": 1, "target": "summed"})


def test_label_target_keys_a_controller_folder_only_when_not_the_paper():
    from adore.release.artifacts import artifact_dir

    current = build_policy("adore", m=64, R=4)
    before = build_policy("adore", m=64, R=4, labels={"aggregate": "mean", "horizon": 8})
    accumulated = build_policy("adore", m=64, R=4, labels={"aggregate": "mean", "horizon": 8, "target": "accumulated"})
    assert current.labels["target"] == "current"
    assert artifact_dir(current, "m", "aclsum") == artifact_dir(before, "m", "aclsum")
    assert artifact_dir(accumulated, "m", "aclsum") != artifact_dir(before, "m", "aclsum")


# ---- fixed bugs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"scorer": "query_free"},  # no per-token keys; decoding used to index ``None`` (a fixed bug)
        {"cell": "lstm"},  # (h, c) stacked, sliced per row like the GRU's state
        {"cell": "mlp"},  # an empty state
    ],
)
def test_every_controller_variant_decodes_a_padded_batch_like_alone(tiny_model, settings):
    torch.manual_seed(0)
    controller = ImportanceController(tiny_model.config.hidden_size, ControllerConfig(width=16, **settings))
    policy = build_policy("adore", m=10, R=3, K=4).bind(controller, tiny_model.get_input_embeddings())
    engine = DecodingEngine(tiny_model, policy, pad_token_id=0)
    prompts = random_prompts([7, 19], seed=3)
    alone = [engine.generate([p], 12).tokens[0] for p in prompts]
    assert engine.generate(prompts, 12).tokens == alone


@pytest.mark.parametrize("cell", ["lstm", "mlp"])
def test_incremental_encoding_equals_one_pass_for_every_cell(cell):
    """Decoding feeds tokens one at a time with the carried state: the same ``u`` as one pass."""
    torch.manual_seed(0)
    controller = ImportanceController(24, ControllerConfig(width=16, cell=cell)).eval()
    embeddings, positions = torch.randn(2, 5, 24), torch.arange(5)[None].expand(2, -1)
    with torch.no_grad():
        whole, _ = controller.encode(embeddings, positions)
        state, steps = None, []
        for t in range(5):
            u, state = controller.encode(embeddings[:, t : t + 1], positions[:, t : t + 1], state)
            steps.append(u)
    assert torch.allclose(torch.cat(steps, 1), whole, atol=1e-6)
    with pytest.raises(ConfigError, match="method.controller.cell must be one of gru, lstm, mlp"):
        ControllerConfig(cell="transformer")


def test_attention_labels_allocate_one_aggregate_per_forward(tiny_model, monkeypatch):
    """The [B, T, T] float32 aggregate is allocated once, not once per layer (``setdefault`` evaluated
    its default for every layer: about 256 MB per layer at T = 8192)."""
    ids = random_prompts([20])[0]
    sizes: list[tuple] = []
    new_zeros = torch.Tensor.new_zeros

    def spy(self, *size, **kwargs):
        sizes.append(tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size))
        return new_zeros(self, *size, **kwargs)

    monkeypatch.setattr(torch.Tensor, "new_zeros", spy)
    aggregated_attention(tiny_model, ids)
    assert tiny_model.config.num_hidden_layers > 1
    assert sizes.count((1, 20, 20)) == 1


def _fake_artifacts(model, folder) -> None:
    """A controller checkpoint and a LoRA adapter where ADORE looks for them (no training)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    config = ControllerConfig(width=16)
    controller = ImportanceController(model.config.hidden_size, config)
    torch.save({"config": config.to_dict(), "state_dict": controller.state_dict()}, folder / "controller.pt")
    peft = get_peft_model(tiny_llama(), PeftLoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(folder / "adapter")


def test_two_finetuned_adore_entries_share_one_merge_and_one_controller(tmp_path):
    """A throughput run prepares every entry on one model: the second ADORE entry used to look for its
    controller under the name the first had renamed the model to (and trained and fine-tuned again)."""
    from adore import LoadedModel, RunContext
    from adore.release.artifacts import artifact_dir

    loaded = LoadedModel(tiny_llama(), None, "tiny", torch.device("cpu"), torch.float32)
    settings = {"m": 10, "R": 0, "K": 4, "finetune": True, "train_if_missing": False,
                "artifacts_dir": str(tmp_path), "controller": {**ControllerConfig(width=16).to_dict()}}  # fmt: skip
    context = RunContext({"dataset": {"name": "aclsum"}, "method": {"name": "adore"}}, "tiny")
    first, second = build_policy("adore", **settings), build_policy("adore", **settings)
    _fake_artifacts(loaded.model, artifact_dir(first, "tiny", "aclsum"))
    first.prepare(context, loaded)
    merged_model, merged_name = loaded.model, loaded.name
    assert merged_name != "tiny"  # the fine-tune is merged and named
    second.prepare(context, loaded)  # finds the same controller; merges and renames nothing again
    assert loaded.model is merged_model and loaded.name == merged_name
    assert second.network is not None
    other = build_policy("adore", **{**settings, "finetune": False})
    with pytest.raises(ConfigError, match="already has ADORE's sparse fine-tune"):
        other.prepare(context, loaded)


def test_the_resume_check_keeps_adores_controller_settings(tmp_path):
    """The described checkpoint was keyed "controller" like the parameter, so the sweep's canonical
    config took the parameter for an ignored one and set it to None (training then crashed)."""
    from experiments.infra.sweep import canonical_config
    from tests.test_sweeps import composed

    config = composed("method=adore", f"results_dir={tmp_path}")
    assert canonical_config(config)["method"]["controller"] == config["method"]["controller"] != None  # noqa: E711


def test_rows_from_before_the_checkpoint_key_was_renamed_read_as_new_ones():
    from experiments.reporting.report import method_params

    old = {"method": "adore", "method_params": {"m": 64, "scorer": "controller", "controller": "K32-abc"}}
    assert method_params(old) == {"m": 64, "scorer": "controller", "controller_checkpoint": "K32-abc",
                                  "labels_horizon": 1, "positions": "absolute", "scored_by": "gru",
                                  "n_recent": 0, "reencode": 0}  # fmt: skip
    oracle = {"method": "adore", "method_params": {"m": 64, "scorer": "oracle"}}
    assert method_params(oracle) == {"m": 64, "scorer": "oracle", "scored_by": "attention", "n_recent": 0,
                                     "reencode": 0}  # fmt: skip


def test_a_completed_row_and_a_new_one_of_one_controller_are_one_configuration():
    """Backfilled rows gained the training amount at their end; new rows carry it before recall_at_m:
    both read as the same parameters, in the same order."""
    from experiments.reporting.report import method_params

    base = {"m": 128, "scorer": "controller", "controller_checkpoint": "K32-a", "train_length": 8192}
    completed = {**base, "recall_at_m": 0.7, "train_sequences": 32, "train_epochs": 32}
    new = {**base, "train_sequences": 32, "train_epochs": 32, "recall_at_m": 0.7}
    rows = [{"method": "adore", "method_params": params} for params in (completed, new)]
    assert str(method_params(rows[0])) == str(method_params(rows[1]))
    assert list(method_params(rows[1]))[-2:] == ["train_sequences", "train_epochs"]


def test_recall_by_position_counts_hits_of_each_querys_top_m_among_its_true_set(monkeypatch):
    """scripts/recall_by_position.py's bucket recall against a hand count on a 5-token sequence."""
    import runpy

    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as `python scripts/...` puts it on the path
    bucket_recall = runpy.run_path(str(ROOT / "scripts" / "recall_by_position.py"))["bucket_recall"]
    scores = torch.tensor([[0, 0, 0, 0, 0], [5, 0, 0, 0, 0], [1, 3, 0, 0, 0], [4, 1, 2, 0, 0], [0, 9, 8, 7, 0]])
    truth = torch.zeros(5, 5, dtype=torch.bool)
    truth[3, [0, 1]] = True  # query 3's top-2 by score is {0, 2}: one hit of two
    truth[4, [1, 3]] = True  # query 4's top-2 is {1, 2}: one hit of two
    assert bucket_recall(scores.float(), truth, 2, range(3, 5)) == pytest.approx(2 / 4)
    assert bucket_recall(scores.float(), truth, 2, range(4, 5)) == pytest.approx(1 / 2)
    # Future keys never count, however high they score.
    future = torch.ones(5, 5).triu(0) * 100  # the query itself and later tokens
    assert bucket_recall(scores.float() + future, truth, 2, range(3, 4)) == pytest.approx(1 / 2)


def test_controller_study_names_the_missing_folder_among_several_before_loading_the_model(
    monkeypatch, tmp_path, capsys
):
    """scripts/recall_by_position.py compares several controllers; a folder without controller.pt
    is one line (exit 2) before the model loads, whichever position it has."""
    import runpy

    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    study = runpy.run_path(str(ROOT / "scripts" / "controller_study.py"))
    present, missing = tmp_path / "K32-present", tmp_path / "K32-missing"
    present.mkdir()
    (present / "controller.pt").touch()
    parser = study["study_arguments"]("recall", book="othello", tokens=16, several=True)
    args = parser.parse_args(["--controller", str(present), str(missing), "--model", str(tmp_path / "no-model")])
    assert args.controller == [present, missing]
    with pytest.raises(SystemExit) as exit_info:
        study["load_study"](parser, args)  # the model path does not exist: reaching it would raise otherwise
    assert exit_info.value.code == 2
    assert f"no controller.pt in {missing}" in capsys.readouterr().err
    single = study["study_arguments"]("keep set", book="hamlet", tokens=16).parse_args(["--controller", str(present)])
    assert single.controller == present  # one folder where the script studies one controller
