"""Does ``torch.compile`` shorten a decode step of the engine? (issue 16; measured, not adopted)

Decodes the same prompts with a bounded method three ways, in one process: eager; the whole model
compiled (the cache's per-step Python runs inside it, so Dynamo must trace or break around it); and
only each decoder layer's MLP and norms compiled (``Module.compile``: no cache code inside). Prints the
median step time of each and whether the tokens equal the eager ones.

    python scripts/compile_probe.py [--method window] [--m 128] [--context 1024] [--batch 1] [--tokens 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, without PYTHONPATH

from adore.core.engine import DecodingEngine
from adore.core.models import load_model
from adore.methods import build_policy


def decode(engine: DecodingEngine, prompts: list[list[int]], tokens: int) -> tuple[list[list[int]], float]:
    """Greedy tokens and the median decode step in ms."""
    result = engine.generate(prompts, tokens)
    return result.tokens, statistics.median(result.step_s) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m")
    parser.add_argument("--method", default="window")
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model).model
    prompts = torch.randint(100, 40_000, (args.batch, args.context)).tolist()
    engine = DecodingEngine(model, build_policy(args.method, m=args.m))
    decode(engine, prompts, 4)  # warm-up
    eager_tokens, eager_ms = decode(engine, prompts, args.tokens)
    print(f"eager: {eager_ms:.1f} ms a step")

    for name, compile_model in (
        ("whole model compiled", lambda: torch.compile(model)),
        ("MLP and norms compiled per layer", lambda: _compile_layers(model)),
    ):
        started = time.perf_counter()
        compiled = compile_model()
        decode(DecodingEngine(compiled, engine.policy), prompts, 4)  # compiles
        tokens, ms = decode(DecodingEngine(compiled, engine.policy), prompts, args.tokens)
        print(
            f"{name}: {ms:.1f} ms a step (compiling and warm-up {time.perf_counter() - started:.0f} s), "
            f"tokens {'equal' if tokens == eager_tokens else 'DIFFERENT'}"
        )


def _compile_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Compile in place the parts of each decoder layer that hold no cache code."""
    for layer in model.model.layers:
        for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
            part.compile()
    model.model.norm.compile()
    return model


if __name__ == "__main__":
    main()
