"""Streaming perplexity: exact for full attention, and window streaming equals a masked single pass."""

from __future__ import annotations

import math

import pytest
import torch

from adore import ConfigError, DecodingEngine
from adore.methods import build_policy
from experiments.data import load_samples
from experiments.streaming import stream_nll, window_perplexities
from tests.conftest import random_prompts


def teacher_forced_nll(model, tokens: list[int], mask: torch.Tensor | None = None) -> list[float]:
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").tolist()


def test_full_streaming_equals_one_teacher_forced_pass(tiny_model):
    tokens = random_prompts([60])[0]
    nll, times, _ = stream_nll(DecodingEngine(tiny_model, build_policy("full")), tokens)
    assert len(nll) == len(times) == 59
    assert nll == pytest.approx(teacher_forced_nll(tiny_model, tokens), abs=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_chunks_are_exact_for_full_attention(tiny_model, chunk):
    tokens = random_prompts([40], seed=4)[0]
    engine = DecodingEngine(tiny_model, build_policy("full"))
    token_by_token, _, _ = stream_nll(engine, tokens, chunk=1)
    chunked, _, _ = stream_nll(engine, tokens, chunk=chunk)
    assert chunked == pytest.approx(token_by_token, abs=1e-4)


def test_window_streaming_equals_a_sliding_window_mask(tiny_model):
    """Attend-then-evict with window m: query t sees keys t-m .. t (m cached plus itself)."""
    m, tokens = 8, random_prompts([40], seed=6)[0]
    nll, _, kv = stream_nll(DecodingEngine(tiny_model, build_policy("window", m=m)), tokens)
    t = torch.arange(len(tokens))
    visible = (t[None, :] <= t[:, None]) & (t[None, :] >= t[:, None] - m)
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
    assert nll == pytest.approx(teacher_forced_nll(tiny_model, tokens, mask), abs=1e-4)
    assert nll != pytest.approx(teacher_forced_nll(tiny_model, tokens), abs=1e-2)  # eviction did something
    assert kv > 0


def test_window_perplexities():
    nll = [math.log(2.0)] * 4 + [math.log(8.0)] * 2
    windows = window_perplexities(nll, 4)
    assert [(w["start"], w["tokens"]) for w in windows] == [(0, 4), (4, 2)]
    assert [w["perplexity"] for w in windows] == pytest.approx([2.0, 8.0])


def test_bad_streams_give_clear_errors(tiny_model, tmp_path):
    engine = DecodingEngine(tiny_model, build_policy("full"))
    with pytest.raises(ConfigError, match="shorter than two tokens"):
        stream_nll(engine, [5])
    with pytest.raises(ConfigError, match="task.chunk must be positive"):
        stream_nll(engine, [5, 6, 7], chunk=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_samples("text", path=str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        load_samples("text", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="needs a file"):
        load_samples("text")
    (tmp_path / "book.txt").write_text("It was the best of times.")
    (sample,) = load_samples("text", path=str(tmp_path / "book.txt"))
    assert sample.id == "book" and sample.fields["text"].startswith("It was")


def test_gutenberg_loader_on_a_fixture_folder(tmp_path):
    from experiments.data.gutenberg import strip_gutenberg

    (tmp_path / "hamlet.txt").write_text("HAMLET\n\nWho's there?")
    (tmp_path / "sonnets.txt").write_text("From fairest creatures")
    (sample,) = load_samples("gutenberg", book="hamlet", data_dir=str(tmp_path))
    assert sample.id == "hamlet" and "Who's there?" in sample.fields["text"]
    with pytest.raises(ConfigError, match="unknown dataset.book 'lear'; choose one of: hamlet, sonnets"):
        load_samples("gutenberg", book="lear", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="run `make setup`"):
        load_samples("gutenberg", data_dir=str(tmp_path / "missing"))
    wrapped = "licence\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nBody.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore"
    assert strip_gutenberg(wrapped) == "Body."
