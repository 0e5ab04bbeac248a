"""One-shot check of the engine on a CUDA GPU (run on the lent GPU machine; CPU works too, slowly).

1. fp32, a tiny random Llama: engine ``full`` equals HF ``generate`` token for token; every evicting
   method with a budget above the sequence equals ``full``; a padded batch equals each prompt alone.
2. bf16, a mid-size random Llama (8 layers, hidden 1024, GQA 16/4 heads), batch 8, context 2048:
   every method decodes 64 tokens within its budget; decode tokens/s from the engine's per-step
   timers (``torch.cuda.synchronize`` around each step).

Writes a JSON report: ``python scripts/gpu_check.py --device cuda --out gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adore import DecodingEngine
from adore.attention import register
from adore.controller import ControllerConfig, ImportanceController
from adore.methods import build_policy

METHODS = [
    ("full", {}),
    ("window", {"m": 256}),
    ("streaming_llm", {"m": 256}),
    ("h2o", {"m": 256}),
    ("kv_compression", {"m": 256}),
    ("topk", {"K": 256}),
    ("adore", {"m": 256, "R": 0, "K": 64}),
    ("adore", {"m": 256, "R": 8, "K": 64}),
]


def llama(device: str, dtype: torch.dtype, **sizes) -> LlamaForCausalLM:
    config = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=8192, **sizes)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.set_attn_implementation(register())
    return model


def policy(model, name: str, params: dict):
    built = build_policy(name, **params)
    if name == "adore":
        controller = ImportanceController(model.config.hidden_size, ControllerConfig(width=128))
        built.bind(controller.to(next(model.parameters()).device), model.get_input_embeddings())
    return built


def prompts(lengths: list[int], vocab: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def exactness(device: str) -> dict:
    model = llama(device, torch.float32, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)  # fmt: skip
    batch = prompts([7, 19, 30], 256)
    full = DecodingEngine(model, policy(model, "full", {}), pad_token_id=0)
    report = {"full_equals_generate": []}
    for p in batch:
        ids = torch.tensor([p], device=device)
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                            eos_token_id=None)[0, len(p):].tolist()  # fmt: skip
        report["full_equals_generate"].append(full.generate([p], 40).tokens[0] == hf)
    reference = full.generate(batch, 40).tokens
    for name, params in METHODS[1:]:
        big = {k: (80 if k == "m" else v) for k, v in params.items()}
        big = {**big, "K": 80} if name == "topk" else big
        engine = DecodingEngine(model, policy(model, name, big), pad_token_id=0)
        small = {k: (12 if k == "m" else v) for k, v in params.items()}
        small = {**small, "K": 6} if name in ("topk", "adore") else small
        evicting = DecodingEngine(model, policy(model, name, small), pad_token_id=0)
        alone = [evicting.generate([p], 30).tokens[0] for p in batch]
        key = f"{name}{'_R' + str(params['R']) if 'R' in params else ''}"
        report[key] = {
            "large_budget_equals_full": engine.generate(batch, 40).tokens == reference,
            "batch_equals_alone": evicting.generate(batch, 30).tokens == alone,
        }
    return report


def throughput(device: str, context: int, batch: int, new_tokens: int) -> dict:
    model = llama(device, torch.bfloat16, vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4)  # fmt: skip
    batch_prompts = prompts([context] * batch, 32000, seed=2)
    out = {}
    # A first pass over every method warms up CUDA (lazy init, kernel selection); the second is timed.
    for name, params in METHODS:
        DecodingEngine(model, policy(model, name, params), pad_token_id=0).generate(batch_prompts, 8)
    for name, params in METHODS:
        engine = DecodingEngine(model, policy(model, name, params), pad_token_id=0)
        engine.generate(batch_prompts, 4)  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = engine.generate(batch_prompts, new_tokens)
        key = f"{name}{'_R' + str(params['R']) if 'R' in params else ''}"
        out[key] = {
            "decode_tok_s": round(batch * len(result.step_s) / sum(result.step_s), 1),
            "prefill_s": round(result.prefill_s, 3),
            "kv_cache_mb": round(result.kv_peak_bytes / 2**20, 1),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
            "wall_s": round(time.perf_counter() - start, 2),
        }
        print(key, out[key], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "exactness_fp32": exactness(args.device),
    }
    print(json.dumps(report, indent=1), flush=True)
    report["throughput_bf16"] = {
        "context": args.context, "batch": args.batch, "new_tokens": args.new_tokens,
        "methods": throughput(args.device, args.context, args.batch, args.new_tokens),
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
