"""cnn_dailymail and everythinglm from local files in the hub's layout, written here; samsum's hub id;
offline errors in one line naming the stand-in."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from adore.errors import ConfigError
from experiments.data import dataset_spec, load_samples
from experiments.data.samsum import HUB_ID as SAMSUM_HUB_ID


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


ARTICLE = "LONDON (CNN) -- " + " ".join(f"word{i}" for i in range(400))


def test_cnn_dailymail_from_a_parquet_file_is_truncated_at_a_word(tmp_path):
    rows = [
        {"article": ARTICLE, "highlights": "First point .\nSecond point .", "id": "abc123"},
        {"article": "", "highlights": "no article", "id": "empty"},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    (sample,) = load_samples("cnn_dailymail", path=str(tmp_path / "test.parquet"), max_prompt_chars=100)
    assert sample.id == "abc123" and sample.reference == "First point .\nSecond point ."
    text = sample.fields["article"]
    assert len(text) <= 100 and ARTICLE.startswith(text) and ARTICLE[len(text)] == " "
    assert "news article" in dataset_spec("cnn_dailymail").prompt
    whole = load_samples("cnn_dailymail", path=str(tmp_path / "test.parquet"), max_prompt_chars=10**6)
    assert whole[0].fields["article"] == ARTICLE
    with pytest.raises(ConfigError, match="max_prompt_chars"):
        load_samples("cnn_dailymail", path=str(tmp_path / "test.parquet"), max_prompt_chars=0)
    with pytest.raises(ConfigError, match="highlights"):
        load_samples("cnn_dailymail", path=write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "article": "x"}]))


def test_everythinglm_from_a_jsonl_file(tmp_path):
    rows = [
        {"instruction": "Explain photosynthesis.", "output": "Plants turn light into sugar."},
        {"instruction": "  ", "output": "dropped: empty instruction"},
        {"instruction": "Write a haiku.", "output": "Autumn moonlight"},
    ]
    samples = load_samples("everythinglm", path=write_jsonl(tmp_path / "everythinglm.jsonl", rows))
    assert [s.fields["instruction"] for s in samples] == ["Explain photosynthesis.", "Write a haiku."]
    assert [s.reference for s in samples] == ["Plants turn light into sugar.", "Autumn moonlight"]
    assert [s.id for s in samples] == ["0", "2"]
    with pytest.raises(ConfigError, match="output"):
        load_samples("everythinglm", path=write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x"}]))


def test_samsum_defaults_to_a_parquet_copy():
    assert SAMSUM_HUB_ID == "knkarthick/samsum"  # Samsung/samsum is gone and was a loading script


@pytest.mark.parametrize(("name", "standin"), [("cnn_dailymail", "aclsum"), ("everythinglm", "sharegpt")])
def test_offline_names_the_standin(monkeypatch, name, standin):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as error:
        load_samples(name)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{name} needs the Hugging Face hub (offline here")
    assert f"use dataset={standin}, or dataset.path=<{name}-format" in message
