"""Dataset loaders on packaged data and on fixture files the tests write (the hub loaders included,
through ``datasets`` reading a local file in the hub's format), their one-line errors, math scoring,
prompts with chat history, and ADORE's training dataset."""

from __future__ import annotations

import json

import pytest

from adore.errors import ConfigError
from experiments.data import Sample, available_datasets, dataset_spec, load_samples
from experiments.data.aclsum import detokenize
from experiments.metrics import exact_match_accuracy, final_number, normalize_number
from experiments.prompting import build_chat_ids, build_prompt_ids


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


# ---- hub loaders on local files in the hub's format ----------------------------------------------


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_samsum_from_a_local_file(tmp_path):
    rows = [
        {"id": "13818513", "dialogue": "Amanda: I baked cookies.\r\nJerry: Sure!", "summary": "Amanda baked cookies."},
        {"id": "x", "dialogue": "", "summary": "skipped: no dialogue"},
    ]
    (sample,) = load_samples("samsum", path=write_jsonl(tmp_path / "samsum.jsonl", rows))
    assert sample.id == "13818513" and sample.reference == "Amanda baked cookies."
    assert sample.fields["dialogue"] == "Amanda: I baked cookies.\nJerry: Sure!" and sample.answer is None
    assert "Summarize the following dialogue" in dataset_spec("samsum").prompt

    import pandas as pd

    pd.DataFrame(rows[:1]).to_parquet(tmp_path / "samsum.parquet")
    assert load_samples("samsum", path=str(tmp_path / "samsum.parquet"))[0].id == "13818513"
    with pytest.raises(ConfigError, match="lack column.*summary"):
        load_samples("samsum", path=write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "dialogue": "A: hi"}]))


def test_ultrachat_from_a_local_file(tmp_path):
    messages = [
        {"role": "user", "content": "What is a KV cache?"},
        {"role": "assistant", "content": "It stores keys and values."},
        {"role": "user", "content": "Why evict?"},
        {"role": "assistant", "content": "To save memory."},
    ]
    rows = [
        {"prompt": "What is a KV cache?", "prompt_id": "p1", "messages": messages},
        {"prompt": "q", "prompt_id": "p2", "messages": messages[:3]},  # ends with a user turn: skipped
    ]
    (sample,) = load_samples("ultrachat", path=write_jsonl(tmp_path / "u.jsonl", rows))
    assert sample.id == "p1" and sample.fields == {"text": "Why evict?"} and sample.reference == "To save memory."
    assert sample.history == (("user", "What is a KV cache?"), ("assistant", "It stores keys and values."))
    (short,) = load_samples("ultrachat", path=str(tmp_path / "u.jsonl"), max_prompt_chars=15)
    assert short.history == ()  # the older turns did not fit


def test_math_from_a_local_file(tmp_path):
    rows = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7 apples.\n#### 7"}]
    (sample,) = load_samples("math", path=write_jsonl(tmp_path / "gsm8k.jsonl", rows))
    assert sample.reference == "3+4=7 apples.\n#### 7" and sample.answer == "7"
    assert sample.fields == {"question": rows[0]["question"]}
    with pytest.raises(ConfigError, match="no final '#### <number>' line"):
        load_samples("math", path=write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no number"}]))


def test_pg19_from_a_local_file(tmp_path):
    rows = [{"short_book_title": "A", "publication_date": 1900, "url": "u", "text": "It was a dark night."},
            {"short_book_title": "B", "publication_date": 1901, "url": "u", "text": "Call me Ishmael."}]  # fmt: skip
    path = write_jsonl(tmp_path / "pg19.jsonl", rows)
    (sample,) = load_samples("pg19", path=path, book=1)
    assert sample.id == "B" and sample.fields["text"] == "Call me Ishmael." and dataset_spec("pg19").task == "stream"
    with pytest.raises(ConfigError, match="has no book 2"):
        load_samples("pg19", path=path, book=2)


@pytest.mark.parametrize(
    ("name", "standin"), [("samsum", "aclsum"), ("ultrachat", "sharegpt"), ("math", "gsm8k"), ("pg19", "gutenberg")]
)
def test_hub_loaders_offline_name_their_standin(monkeypatch, name, standin):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast, never wait on the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as error:
        load_samples(name)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{name} needs the Hugging Face hub (offline here")
    assert f"use dataset={standin}, or dataset.path=<{name if name != 'math' else 'gsm8k'}-format" in message


def test_hub_loaders_reject_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_samples("samsum", path=str(tmp_path / "missing.json"))
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_samples("math", path=str(tmp_path / "empty.json"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown format"):
        load_samples("ultrachat", path=str(tmp_path / "data.txt"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="could not be read as json"):
        load_samples("samsum", path=str(tmp_path / "broken.json"))


# ---- ShareGPT: a truncated JSON file, recovered conversation by conversation ---------------------


def conversation(cid: str, *turns: tuple[str, str]) -> dict:
    return {"id": cid, "conversations": [{"from": role, "value": text} for role, text in turns]}


def test_sharegpt_recovers_a_truncated_file(tmp_path):
    from experiments.data.sharegpt import recover_conversations

    items = [
        conversation("a_0", ("human", "Hi"), ("gpt", 'Hello! {not a brace problem} "quoted"')),
        conversation("b_0", ("human", "Ünïcödé ✓ 中文"), ("gpt", "ok")),
        conversation("c_0", ("human", "cut"), ("gpt", "this one is cut off")),
    ]
    text = json.dumps(items, indent=2, ensure_ascii=False)
    path = tmp_path / "sharegpt.json"
    path.write_text(text[: text.index("this one is cut")], encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())
    for chunk in (7, 1 << 20):  # small chunks exercise the refills
        assert list(recover_conversations(path, chunk_chars=chunk)) == items[:2]
    path.write_text(text, encoding="utf-8")  # a complete file reads whole
    assert list(recover_conversations(path, chunk_chars=5)) == items
    path.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="not a JSON list"):
        list(recover_conversations(path))


def test_sharegpt_loader_turns_splits_and_skips(tmp_path):
    from experiments.data.chat import hash_split

    items = [conversation(f"id{i}_0", ("human", f"question {i}"), ("gpt", f"answer {i}")) for i in range(40)]
    items += [
        conversation("multi_0", ("human", "first"), ("gpt", "reply"), ("human", "second"), ("gpt", "final")),
        conversation("endsuser_0", ("human", "q"), ("gpt", "a"), ("human", "unanswered")),
        conversation("empty_0"),
        conversation("blank_0", ("human", "q"), ("gpt", " ")),
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(items)[:-1])  # truncated: the closing bracket is missing
    by_split = {split: load_samples("sharegpt", split=split, path=str(path)) for split in ("train", "val", "test")}
    ids = [s.id for samples in by_split.values() for s in samples]
    assert sorted(ids) == sorted([f"id{i}_0" for i in range(40)] + ["multi_0"])  # each once, skips skipped
    for split, samples in by_split.items():
        assert all(hash_split(s.id.rsplit("_", 1)[0]) == split for s in samples)
    assert len(by_split["train"]) > len(by_split["test"])
    (multi,) = [s for samples in by_split.values() for s in samples if s.id == "multi_0"]
    assert multi.history == (("user", "first"), ("assistant", "reply"))
    assert multi.fields == {"text": "second"} and multi.reference == "final"
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_samples("sharegpt", path=str(tmp_path / "empty.json"))
    with pytest.raises(ConfigError, match="run `make setup`"):
        load_samples("sharegpt", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="dataset.split must be one of"):
        load_samples("sharegpt", split="dev", path=str(path))


def test_chat_sample_rules():
    from experiments.data.chat import chat_sample

    turns = [("system", "Be brief."), ("human", "a" * 10), ("gpt", "b" * 10), ("human", "c" * 10), ("gpt", "d")]
    assert chat_sample("x", turns, None).history == (
        ("system", "Be brief."),
        ("user", "a" * 10),
        ("assistant", "b" * 10),
    )
    assert chat_sample("x", turns, 25).history == ()  # 10 + 10 + 10 > 25: the oldest turns go, with their reply
    assert chat_sample("x", turns, 9) is None  # the final user turn alone is too long
    assert chat_sample("x", [("gpt", "a"), ("gpt", "b")], None) is None  # no user turn before the answer
    assert chat_sample("x", [("human", "a"), ("alien", "b")], None) is None


# ---- math: GSM8K TOML files, gsm_symbolic, exact-match scoring -------------------------------------

TOML = '''question = "Benny saw a 10-foot shark with 2 6-inch remoras. What percentage?"

answer = """
Combined: 6 * 2 = <<6*2=12>>12 inches = 1 foot.
1 / 10 * 100% = 10%

#### 10
"""

id_orig = 473
'''


def test_gsm8k_reads_toml_problems(tmp_path):
    (tmp_path / "0000.toml").write_text(TOML)
    (tmp_path / "0001.toml").write_text(TOML.replace("#### 10", "#### 1,250").replace("473", "12"))
    (tmp_path / "manifest.json").write_text("{}")
    first, second = load_samples("gsm8k", data_dir=str(tmp_path))
    assert first.id == "gsm8k-473" and first.answer == "10" and second.answer == "1250"
    assert first.reference == "Combined: 6 * 2 = 12 inches = 1 foot.\n1 / 10 * 100% = 10%\n\n#### 10"
    assert first.fields == {"question": "Benny saw a 10-foot shark with 2 6-inch remoras. What percentage?"}
    assert '"#### <number>"' in dataset_spec("gsm8k").prompt
    (tmp_path / "0002.toml").write_text('question = "unterminated')
    with pytest.raises(ConfigError, match="0002.toml is not valid TOML"):
        load_samples("gsm8k", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no GSM8K problems in .*run `make setup`"):
        load_samples("gsm8k", data_dir=str(tmp_path / "nowhere"))


def test_gsm_symbolic_is_seeded_and_splits_differ():
    first = load_samples("gsm_symbolic", size=3, seed=5)
    assert [s.id for s in first] == [s.id for s in load_samples("gsm_symbolic", size=3, seed=5)]
    assert [s.reference for s in first] == [s.reference for s in load_samples("gsm_symbolic", size=3, seed=5)]
    train = load_samples("gsm_symbolic", split="train", size=3, seed=5)
    assert {s.fields["question"] for s in train}.isdisjoint(s.fields["question"] for s in first)
    for sample in first:
        assert sample.answer is not None and "####" in sample.reference
        assert final_number(sample.reference) == sample.answer
    assert [s.id for s in load_samples("gsm8k", split="train", train_size=2)] == [
        "gsm_symbolic-1000-0",
        "gsm_symbolic-1000-1",
    ]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so she has 18 eggs.\n#### 18", "18"),
        ("The answer is $1,234.50.", "1234.5"),
        ("#### 1,000", "1000"),
        ("It is 7.0 in the end", "7"),
        ("10-5 = 5", "5"),
        ("she owes -3 dollars", "-3"),
        ("#### $ 42\nthen 7 more", "42"),
        ("no number at all", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_exact_match_accuracy():
    predictions = ["... #### 18", "The total is 1,000 dollars.", "I think 17", "nothing", "#### 2.50"]
    assert exact_match_accuracy(predictions, ["18", "1000", "18", "3", "2.5"]) == pytest.approx(60.0)
    assert normalize_number("$1,000.00") == "1000"


# ---- prompts: chat history as messages, aclsum unchanged -------------------------------------------


class PlainTokenizer:
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def test_history_without_a_chat_template():
    spec = dataset_spec("sharegpt")
    sample = Sample("x", {"text": "second"}, "final", history=(("user", "first"), ("assistant", "reply")))
    text = "".join(map(chr, build_prompt_ids(PlainTokenizer(), spec, sample)))
    assert text == "User: first\n\nAssistant: reply\n\nUser: second\n\nAssistant:"
    single = Sample("y", {"title": "T", "text": "body"}, "ref")
    aclsum = dataset_spec("aclsum")
    assert "".join(map(chr, build_prompt_ids(PlainTokenizer(), aclsum, single))) == aclsum.prompt.format(
        **single.fields
    )


@pytest.mark.model
def test_chat_prompts_in_the_chat_template():
    from transformers import AutoTokenizer

    from tests.conftest import SMOLLM2

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    spec, sample = dataset_spec("aclsum"), load_samples("aclsum", limit=1)[0]
    before = tokenizer.apply_chat_template(  # how the prompt was built before chat history existed
        [{"role": "user", "content": spec.prompt.format(**sample.fields)}], add_generation_prompt=True, tokenize=True
    )
    before = list(before["input_ids"] if hasattr(before, "keys") else before)
    assert build_prompt_ids(tokenizer, spec, sample) == before
    chat = Sample("x", {"text": "second"}, "final", history=(("user", "first"), ("assistant", "reply")))
    text = tokenizer.decode(build_prompt_ids(tokenizer, dataset_spec("sharegpt"), chat))
    assert text.endswith(
        "<|im_start|>user\nfirst<|im_end|>\n<|im_start|>assistant\nreply<|im_end|>\n"
        "<|im_start|>user\nsecond<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = build_chat_ids(tokenizer, dataset_spec("sharegpt"), chat)
    assert ids[: len(build_prompt_ids(tokenizer, dataset_spec("sharegpt"), chat))] == build_prompt_ids(
        tokenizer, dataset_spec("sharegpt"), chat
    )
    assert tokenizer.decode(ids).rstrip().endswith("final<|im_end|>")


# ---- ADORE's training dataset ---------------------------------------------------------------------


def adore_cfg(dataset: str, **dataset_options) -> dict:
    return {"dataset": {"name": dataset, "limit": None, **dataset_options},
            "model": {"name": "smollm2-135m", "path": "models/smollm2-135m"}, "method": {"name": "adore"}}  # fmt: skip


def test_adore_train_dataset_keys_the_artifacts():
    from adore.methods import build_policy
    from adore.release.artifacts import artifact_dir, training_dataset
    from experiments.infra.runtime import HarnessTrainingData, run_context

    policy = build_policy("adore")
    aclsum = artifact_dir(policy, "smollm2-135m", training_dataset(policy, run_context(adore_cfg("aclsum"))))
    assert aclsum.parts[:4] == ("artifacts", "adore", "smollm2-135m", "aclsum")
    on_stream = build_policy("adore", train_dataset="aclsum")
    context = run_context(adore_cfg("gutenberg", book="hamlet"))
    assert artifact_dir(on_stream, "smollm2-135m", training_dataset(on_stream, context)) == aclsum
    data = HarnessTrainingData(adore_cfg("gutenberg"))
    data.check_trainable("gutenberg")  # a stream with a train split (other works)
    with pytest.raises(ConfigError, match=r"dataset 'text' has none; set method.train_dataset=aclsum"):
        data.check_trainable("text")
    with pytest.raises(ConfigError, match="method.train_dataset"):
        data.check_trainable("streameval")
    data.check_trainable("sharegpt")
    samples = HarnessTrainingData(adore_cfg("gutenberg", book="hamlet")).samples("aclsum", "train", 2)
    assert len(samples) == 2 and samples == load_samples("aclsum", 2, split="train")  # aclsum's own defaults


def test_config_hash_of_rows_written_before_adore_settings_moved():
    """Rows hashed the old layout (a top-level ``adore:`` section); the new layout hashes the same."""
    from adore.release.settings import HASHED_DEFAULTS, SETTINGS_DEFAULTS
    from experiments.infra.results import config_hash

    legacy_block = {k: v for k, v in HASHED_DEFAULTS.items() if k != "train_dataset"}
    old_full = {**adore_cfg("aclsum"), "method": {"name": "full", "m": None}, "adore": legacy_block}
    new_full = {**adore_cfg("aclsum"), "method": {"name": "full", "m": None}}
    assert config_hash(new_full) == config_hash(old_full)
    old_adore = {**adore_cfg("aclsum"), "method": {"name": "adore", "m": 64, "R": 4, "K": 32, "n_sink": 0,
                 "scorer": "controller"}, "adore": {**legacy_block, "finetune": True}}  # fmt: skip
    new_adore = {**adore_cfg("aclsum"), "method": {**old_adore["method"], **HASHED_DEFAULTS, "finetune": True}}
    assert config_hash(new_adore) == config_hash(old_adore)
    assert config_hash({**new_adore, "method": {**new_adore["method"], "finetune": False}}) != config_hash(old_adore)
    # a setting added later (controller.positions) is hash-neutral at its default only
    absolute = {**new_adore["method"], "controller": {**HASHED_DEFAULTS["controller"], "positions": "absolute"}}
    assert config_hash({**new_adore, "method": absolute}) == config_hash(old_adore)
    relative = {**absolute, "controller": {**absolute["controller"], "positions": "relative"}}
    assert config_hash({**new_adore, "method": relative}) != config_hash(old_adore)
    # today's defaults are another configuration, but other methods' rows keep their hash
    today = {**new_adore, "method": {**old_adore["method"], **SETTINGS_DEFAULTS, "finetune": True}}
    assert config_hash(today) != config_hash(old_adore)
    assert SETTINGS_DEFAULTS["controller"]["positions"] == "relative"
    # labels.target arrived after rows were written: at "current" it leaves their hash as it was
    labels = {k: v for k, v in SETTINGS_DEFAULTS["labels"].items() if k != "target"}
    before_target = {**today, "method": {**today["method"], "labels": labels}}
    assert config_hash(today) == config_hash(before_target)
    accumulated = {**today, "method": {**today["method"], "labels": {**labels, "target": "accumulated"}}}
    assert config_hash(accumulated) != config_hash(before_target)


def test_accuracy_is_an_optional_row_key():
    from experiments.results import ROW_KEYS, make_row

    assert tuple(make_row(rougeL=1.0)) == ROW_KEYS  # rows without it are unchanged
    assert list(make_row(accuracy=50.0))[-1] == "accuracy" and make_row(accuracy=50.0)["accuracy"] == 50.0
    with pytest.raises(KeyError, match="not result-row keys"):
        make_row(exact_match=1.0)


def test_batch_sizes_fixed_and_auto_fit_the_kv_budget():
    from experiments.tasks.generation import MAX_AUTO_BATCH, batch_sizes

    lengths = [10, 10, 20, 30, 100]  # sorted, shortest first
    assert batch_sizes(lengths, 3, 10, 1, 0) == [3, 2]
    # auto, budget 60 token-bytes: [10, 10] costs 2 x 20 = 40; adding 20 would cost 3 x 30 = 90;
    # [20] alone; [20, 30] would cost 2 x 40 = 80; a prompt over the budget still runs, alone.
    assert batch_sizes(lengths, "auto", 10, 1, 60) == [2, 1, 1, 1]
    assert batch_sizes([5] * 100, "auto", 5, 1, 10**9) == [MAX_AUTO_BATCH, 100 - MAX_AUTO_BATCH]
    for sizes, budget in ((batch_sizes(lengths, "auto", 10, 4, b), b) for b in (100, 400, 1000)):
        assert sum(sizes) == len(lengths)
        start = 0
        for size in sizes:  # every batch of more than one prompt fits the budget
            assert size == 1 or size * (lengths[start + size - 1] + 10) * 4 <= budget
            start += size


# ---- streams as training data (issue 13) ------------------------------------------------------


def _works(folder, names):
    folder.mkdir()
    for name in names:
        (folder / f"{name}.txt").write_text(f"{name} " * 50)


def test_gutenberg_splits_are_disjoint_whole_works(tmp_path):
    from experiments.data.gutenberg import EVALUATED, VALIDATION

    names = ["hamlet", "lear", "othello", "tempest", "comus", "sonnets", "pericles"]
    _works(tmp_path / "g", names)
    ids = {split: [s.id for s in load_samples("gutenberg", data_dir=str(tmp_path / "g"), split=split)]
           for split in ("train", "val", "test")}  # fmt: skip
    assert ids["test"] == ["hamlet"]
    assert ids["val"] == [n for n in sorted(names) if n in VALIDATION]
    # the plain rule: train is every work neither evaluated nor validation
    assert ids["train"] == sorted(n for n in names if n not in EVALUATED and n not in VALIDATION)
    assert not set(ids["train"]) & (set(ids["val"]) | set(ids["test"]))
    # streaming a validation work: it leaves val
    val = load_samples("gutenberg", book="othello", data_dir=str(tmp_path / "g"), split="val")
    assert [s.id for s in val] == ["tempest"]
    with pytest.raises(ConfigError, match="dataset.book=comus is one of the works ADORE's controller trains on"):
        load_samples("gutenberg", book="comus", data_dir=str(tmp_path / "g"), split="train")
    with pytest.raises(ConfigError, match="dataset.split must be one of train, val, test, got 'dev'"):
        load_samples("gutenberg", data_dir=str(tmp_path / "g"), split="dev")


class _CharTokenizer:
    """One token per character (ids = code points): windows are easy to check by hand."""

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def test_stream_windows_round_robin_over_works():
    from experiments.data import Sample
    from experiments.infra.runtime import stream_windows

    works = [
        Sample("a", {"text": "a" * 25}, ""),
        Sample("b", {"text": "b" * 7}, ""),
        Sample("c", {"text": "c" * 12}, ""),
    ]
    windows = stream_windows(_CharTokenizer(), works, limit=5, length=6)
    text = ["".join(map(chr, w)) for w in windows]
    # every work's first window, then every second window, ... (b has one, c two, a four)
    assert text == ["aaaaaa", "bbbbbb", "cccccc", "aaaaaa", "cccccc"]
    assert all(len(w) == 6 for w in windows)
    assert len(stream_windows(_CharTokenizer(), works, limit=100, length=6)) == 4 + 1 + 2


def test_a_stream_trains_on_its_train_works(tmp_path):
    from experiments.infra.runtime import HarnessTrainingData

    _works(tmp_path / "g", ["hamlet", "othello", "comus", "sonnets"])
    cfg = adore_cfg("gutenberg", book="hamlet", data_dir=str(tmp_path / "g"), max_tokens=4)
    sequences = HarnessTrainingData(cfg).sequences(_CharTokenizer(), "gutenberg", "train", 3, 10)
    assert ["".join(map(chr, ids)) for ids, _ in sequences] == ["comus comu", "sonnets so", "s comus co"]
    assert all(prompt == 0 for _, prompt in sequences)


def test_adore_settings_defaults_equal_its_yaml():
    import yaml

    from adore.release.settings import SETTINGS_DEFAULTS
    from tests.conftest import ROOT

    conf = yaml.safe_load((ROOT / "conf" / "method" / "adore.yaml").read_text())
    assert {k: conf[k] for k in SETTINGS_DEFAULTS} == SETTINGS_DEFAULTS
