"""The paper's throughput setting on a GPU: Llama-2-7B's shape with random weights in bf16 (nothing is
downloaded), full attention against ADORE (R = 0 and 8) and window attention at m = 192 and 128.

For every context length each method runs the largest batch that fits the device's memory (batches
of 1 to 64 are tried in order; the first out-of-memory ends the search), and the gain is the paper's
``(thr_method / thr_full - 1) x 100%`` at those batches. Random weights decode the same number of
tokens at the same cost as trained ones (no stop at EOS), so tokens/s is the real engine's.

    python scripts/paper_throughput.py --device cuda --out results/paper_throughput   # on the GPU machine
    python scripts/paper_throughput.py --toy --device cpu --out /tmp/toy              # a CPU check (tested)

Writes ``rows.jsonl`` (one row per method, context and batch that ran), ``table.md`` and
``throughput.png`` into ``--out``, naming the device. ADORE's controller is a seeded, untrained one:
its keep-sets are arbitrary, its cost is the real controller's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adore import LoadedModel, kv_bytes_per_token
from adore.core.attention import register
from adore.core.plotting import new_figure, save_figure
from adore.methods import build_policy
from adore.release.controller import ControllerConfig, ImportanceController
from experiments.tasks.throughput import MethodSpec, measure, prompts_for

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192)  # fmt: skip
TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=512)  # fmt: skip
METHODS = [
    MethodSpec("full"),
    *(MethodSpec("window", {"m": m}) for m in (192, 128)),
    *(MethodSpec("adore", {"m": m, "R": r, "K": 64}) for m in (192, 128) for r in (0, 8)),
]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
CONTEXTS = [1024, 2048, 4096, 8192]


def random_llama(shape: dict, device: str, dtype: torch.dtype) -> LoadedModel:
    config = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype=dtype).eval()
    model.set_attn_implementation(register())
    tokenizer = SimpleNamespace(pad_token_id=0)
    return LoadedModel(model, tokenizer, "llama2-7b-shape-random", torch.device(device), dtype)


def policy_for(loaded: LoadedModel, spec: MethodSpec):
    policy = build_policy(spec.name, **spec.params)
    if spec.name == "adore":
        torch.manual_seed(0)
        controller = ImportanceController(loaded.model.config.hidden_size, ControllerConfig(width=128))
        policy.bind(controller.to(loaded.device, loaded.dtype), loaded.model.get_input_embeddings())
    return policy


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def largest_batches(loaded: LoadedModel, spec: MethodSpec, context: int, batches: list[int], new_tokens: int,
                    vocab: int) -> list[dict]:  # fmt: skip
    """A row per batch that ran, in increasing order, until the device runs out of memory."""
    policy = policy_for(loaded, spec)
    generator = torch.Generator().manual_seed(context)
    bank = torch.randint(3, vocab, (context * max(batches) + context,), generator=generator).tolist()
    rows = []
    for batch in batches:
        try:
            point = measure(loaded, spec, policy, prompts_for(bank, context, batch), new_tokens, 2, 1)
        except Exception as error:  # only running out of memory ends the search
            if not _out_of_memory(error):
                raise
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            break
        rows.append({"method": spec.label, "context_length": context, "batch_size": batch,
                     "decode_tok_s": round(point.decode_tok_s, 2), "kv_decode_mb": round(point.kv_decode_bytes / 2**20, 1),
                     "kv_cache_mb": round(point.kv_bytes / 2**20, 1), "peak_mem_mb": round(point.peak_mem_mb, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def gains(rows: list[dict]) -> list[dict]:
    """Per context: each method at its largest batch, and the paper's gain over full at its own."""
    out = []
    for context in sorted({r["context_length"] for r in rows}):
        best = {}
        for row in rows:
            if row["context_length"] == context:
                best[row["method"]] = row  # rows come in increasing batch order: the last is the largest
        full = best.get("full")
        for row in best.values():
            gain = None if full is None else round((row["decode_tok_s"] / full["decode_tok_s"] - 1) * 100, 1)
            out.append({**row, "gain_percent": gain})
    return out


def write(out: Path, rows: list[dict], device: str, shape: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps({**r, "device": device}) + "\n" for r in rows))
    best = gains(rows)
    lines = [f"Device: {device}. Model: Llama-2-7B shape ({shape['num_hidden_layers']} layers, hidden "
             f"{shape['hidden_size']}), random weights. Each method at the largest batch that fits.", "",
             "| context | method | batch | decode tok/s | decode KV MB | gain over full |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in best:
        gain = "-" if r["gain_percent"] is None else f"{r['gain_percent']:+.1f}%"
        lines.append(f"| {r['context_length']} | {r['method']} | {r['batch_size']} | {r['decode_tok_s']} | "
                     f"{r['kv_decode_mb']} | {gain} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    figure, axis = new_figure()
    for method in dict.fromkeys(r["method"] for r in best):
        points = [(r["context_length"], r["decode_tok_s"]) for r in best if r["method"] == method]
        axis.plot(*zip(*points, strict=True), marker="o", label=method)
    axis.set(xscale="log", xlabel="context length", ylabel="decode tokens/s at the largest batch", title=device)
    axis.legend(fontsize=7)
    save_figure(figure, out / "throughput.png")
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true", help="a 2-layer model, short contexts and small batches (CPU)")
    parser.add_argument("--out", type=Path, default=Path("results/paper_throughput"))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--contexts", type=int, nargs="*")
    parser.add_argument("--batches", type=int, nargs="*")
    args = parser.parse_args(argv)
    shape = TOY if args.toy else LLAMA2_7B
    contexts = args.contexts or ([64, 128] if args.toy else CONTEXTS)
    batches = args.batches or ([1, 2] if args.toy else BATCHES)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    loaded = random_llama(shape, args.device, dtype)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device}: KV {kv_bytes_per_token(loaded.model.config, dtype) / 2**10:.0f} KiB per token", flush=True)
    rows = [row for context in contexts for spec in METHODS
            for row in largest_batches(loaded, spec, context, batches, args.new_tokens, shape["vocab_size"])]  # fmt: skip
    table = write(args.out, rows, device, shape)
    print(table)
    return table


if __name__ == "__main__":
    main()
