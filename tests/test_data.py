"""The ACLSum loader on the packaged data and on a fixture file in the same format."""

from __future__ import annotations

import json

import pytest

from adore.errors import ConfigError
from experiments.data import available_datasets, dataset_spec, load_samples
from experiments.data.aclsum import detokenize
from experiments.prompting import build_prompt_ids


def test_packaged_test_split():
    samples = load_samples("aclsum")
    assert len(samples) == 100
    first = samples[0]
    assert first.id == "E09-1056"
    assert first.reference.startswith("Existing machine translation systems")
    assert first.reference.endswith("language pairs in different scripts.")
    assert " ," not in first.fields["text"] and "(MT)" in first.fields["text"]
    assert len(load_samples("aclsum", limit=3)) == 3


def test_fixture_file_in_aclsum_format(tmp_path):
    row = {
        "id": "X1",
        "title": "T",
        "summary": {"challenge": "C.", "approach": "A.", "outcome": "O."},
        "sentences": {"abstract": ["We study x .", "It works ( mostly ) ."], "introduction": ["Intro ."]},
    }
    path = tmp_path / "mini.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (sample,) = load_samples("aclsum", path=str(path), sections=["abstract", "introduction"])
    assert sample.reference == "C. A. O."
    assert sample.fields["text"] == "We study x. It works (mostly). Intro."


def test_detokenize():
    assert detokenize("a , b ( c ) d 's e .") == "a, b (c) d's e."


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; choose one of: .*aclsum"):
        load_samples("nope")
    with pytest.raises(ConfigError, match="dataset.split must be one of"):
        load_samples("aclsum", split="dev")
    with pytest.raises(ConfigError, match="does not exist"):
        load_samples("aclsum", path=str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="produced no samples"):
        load_samples("aclsum", path=str(empty))
    with pytest.raises(ConfigError, match="dataset.limit must be positive"):
        load_samples("aclsum", limit=0)
    assert "aclsum" in available_datasets()


@pytest.mark.model
def test_prompt_is_the_template_inside_the_chat_template(smollm2):
    spec = dataset_spec("aclsum")
    sample = load_samples("aclsum", limit=1)[0]
    text = smollm2.tokenizer.decode(build_prompt_ids(smollm2.tokenizer, spec, sample))
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_start|>assistant")
    assert spec.prompt.format(**sample.fields) in text
