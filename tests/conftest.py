"""Shared fixtures: a tiny random Llama built in place (fast, no download) and the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adore.attention import register

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = Path(os.environ.get("ADORE_MODELS_DIR", ROOT / "models")) / "smollm2-135m"


def conf_choices(group: str) -> str:
    """The files of a config group, as an unknown-name error lists them: a new file must show up there."""
    return ", ".join(sorted(path.stem for path in (ROOT / "conf" / group).glob("*.yaml")))


METHOD_FILES = conf_choices("method")


def tiny_llama(attn_implementation: str | None = None, seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 KV heads), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,  # large logits: no near-ties in greedy argmax
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn_implementation or register())
    return model


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="session")
def smollm2():
    """The embedded model, converted by `make setup` (a missing folder is a setup error, not a skip)."""
    from adore import load_model

    if not (SMOLLM2 / "config.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: run `make setup` before the tests")
    return load_model(str(SMOLLM2))


def random_prompts(lengths: list[int], seed: int = 1, vocab: int = 256) -> list[list[int]]:
    """Prompts of random ids avoiding the special ids 0-2."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]
