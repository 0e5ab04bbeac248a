"""The ``parity`` task: the engine's ``full`` against Hugging Face ``generate`` on the same prompts.

Checks greedy token-for-token equality and compares decode speed, both timed per step in the same
process (HF through a streamer that timestamps every token, so prefill is excluded from both).
Appends one row per side (``method`` = ``full`` / ``hf_generate``, ``task`` = ``parity``).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

from adore import DecodingEngine, StepTimer
from adore.methods import build_policy
from experiments.data import dataset_options, dataset_spec, load_samples
from experiments.infra.results import clean_number
from experiments.infra.runtime import PeakMemory, Run, model_from_config
from experiments.infra.tasks import register_task
from experiments.metrics import latency_percentiles
from experiments.prompting import build_prompt_ids


class _StampEachPut(BaseStreamer):
    """Stamps the step timer at every ``put``: the first is the prompt, then one per generated token."""

    def __init__(self, timer: StepTimer):
        self.timer = timer

    def put(self, value: torch.Tensor) -> None:
        self.timer.stamp()

    def end(self) -> None:
        pass


def _parity_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per side, each with its own method in the hashed config."""
    return [{**config, "method": {"name": name}} for name in ("hf_generate", "full")]


@register_task("parity", resumable=_parity_rows, title="parity (engine full against hf_generate)")
def run_parity(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    spec = dataset_spec(cfg["dataset"]["name"])
    samples = load_samples(spec.name, cfg["dataset"].get("limit"), **dataset_options(cfg["dataset"]))
    loaded = model_from_config(cfg)
    tokenizer, model = loaded.tokenizer, loaded.model
    engine = DecodingEngine(model, build_policy("full"), eos_token_ids=[tokenizer.eos_token_id],
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    steps: dict[str, list[float]] = {"hf_generate": [], "full": []}
    equal = 0
    with PeakMemory(loaded.device) as memory:
        for sample in tqdm(samples, desc="engine vs generate", unit="sample"):
            prompt = build_prompt_ids(tokenizer, spec, sample)
            ids = torch.tensor([prompt], device=loaded.device)
            timer = StepTimer(loaded.device)
            reference = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg["max_new_tokens"], do_sample=False,
                streamer=_StampEachPut(timer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :].tolist()  # fmt: skip
            steps["hf_generate"] += timer.seconds[1:]  # the first interval is the prefill
            ours = engine.generate([prompt], cfg["max_new_tokens"])
            steps["full"] += ours.step_s
            equal += ours.tokens[0] == reference[: len(ours.tokens[0])] and len(ours.tokens[0]) == len(reference)
    rows = []
    for method, times in steps.items():
        run = Run({**cfg, "method": {"name": method}}, task="parity")
        p50, p90 = latency_percentiles(times)
        rows.append(
            run.finish(
                build_policy("full"),
                loaded,
                n_samples=len(samples),
                decode_tok_s=clean_number(len(times) / sum(times), 2),
                ms_per_token_p50=clean_number(p50, 2),
                ms_per_token_p90=clean_number(p90, 2),
                peak_mem_mb=clean_number(memory.mb, 1),
            )
        )
    hf, ours = rows[0]["decode_tok_s"], rows[1]["decode_tok_s"]
    print(
        f"greedy tokens equal on {equal}/{len(samples)} prompts; decode tok/s: engine full {ours:.2f}, "
        f"HF generate {hf:.2f} (ratio {ours / hf:.3f}); device {loaded.device}, threads {torch.get_num_threads()}"
    )
    return rows
