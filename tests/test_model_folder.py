"""A model folder of another family through ``run.py``: a tiny random Mistral (sliding window 16,
shorter than every ACLSum prompt) with SmolLM2's tokenizer, written in the hub's layout by the test.
``task=parity`` equals ``generate``; batch 1 and batch 4 give identical predictions, with and without
eviction; rows are labelled by the folder's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOLLM2
from tests.test_cli import run_cli

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def mistral_folder(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    folder = tmp_path_factory.mktemp("models") / "mistral-tiny"
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
        max_position_embeddings=4096, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(SMOLLM2 / name, folder / name)
    return folder


def predictions(results_dir: Path) -> list[str]:
    (row,) = [json.loads(line) for line in (results_dir / "runs.jsonl").read_text().splitlines()]
    lines = (Path(row["run_dir"]) / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line)["prediction"] for line in lines]


def test_parity_on_a_sliding_window_model(mistral_folder, tmp_path):
    result = run_cli(f"model.path={mistral_folder}", "task=parity", "dataset.limit=2", "max_new_tokens=8",
                     results_dir=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy tokens equal on 2/2 prompts" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert {row["model"] for row in rows} == {"mistral-tiny"}


@pytest.mark.parametrize("method", [["method=full"], ["method=h2o", "method.m=32"]])
def test_batch_4_equals_batch_1_on_a_sliding_window_model(mistral_folder, tmp_path, method):
    runs = {}
    for batch in (1, 4):
        out = tmp_path / f"batch{batch}"
        result = run_cli(f"model.path={mistral_folder}", *method, f"batch_size={batch}", "dataset.limit=4",
                         "max_new_tokens=8", results_dir=out)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[batch] = predictions(out)
    assert runs[1] == runs[4] and len(runs[1]) == 4
