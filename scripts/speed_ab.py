"""Two of issue 16's step savings, each measured against its own absence in one process, interleaved.

``stack``: window m=128, batch 1, context 1024, one-in/one-out eviction of every layer in one stack
(``adore/core/slots.py`` ``StackedSlots``) against each layer moving its own slots.
``adore``: ADORE R=0 m=128 (a random controller: the cost does not depend on its weights) scoring
only the cached and new tokens against scoring every position.

Both caches of a pair are prefilled once; rounds of decode steps alternate between them, and the
first two steps of every round are dropped.

    python scripts/speed_ab.py stack
    python scripts/speed_ab.py adore [--batch 8] [--context 4096]
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
from adore.release.controller import ControllerConfig, ImportanceController

ROOT = Path(__file__).resolve().parents[1]


def prefilled(engine: DecodingEngine, batch: int, context: int, stack: bool = True):
    cache = engine.new_cache()
    cache._stackable = cache._stackable and stack  # off: the per-layer moves this replaced
    ids = torch.randint(100, 40_000, (batch, context))
    engine.forward(cache, ids, torch.arange(context).expand(batch, context))
    return cache


def rounds(pairs: dict[str, tuple[DecodingEngine, object]], context: int, count: int, steps: int) -> dict[str, list]:
    """Decode ``steps`` tokens with each (engine, cache) in turn, ``count`` times; seconds per step."""
    times: dict[str, list[float]] = {name: [] for name in pairs}
    position = context
    for _ in range(count):
        for name, (engine, cache) in pairs.items():
            batch = cache.layers[0].keys.shape[0]
            for step in range(steps):
                started = time.perf_counter()
                engine.forward(cache, torch.full((batch, 1), 7), torch.full((batch, 1), position + step))
                if step >= 2:
                    times[name].append(time.perf_counter() - started)
        position += steps
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["stack", "adore"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model).model
    if args.which == "stack":
        batch, context = args.batch or 1, args.context or 1024
        engine = DecodingEngine(model, build_policy("window", m=128))
        pairs = {s: (engine, prefilled(engine, batch, context, s == "stacked")) for s in ("stacked", "per-layer")}
        times = rounds(pairs, context, count=8, steps=20)
        label = f"window m=128, batch {batch}, context {context}"
    else:
        batch, context = args.batch or 8, args.context or 4096
        controller = ImportanceController(model.config.hidden_size, ControllerConfig(positions="relative")).eval()
        pairs = {}
        for name in ("cached tokens", "every position"):
            policy = build_policy("adore", m=128, R=0).bind(controller, model.get_input_embeddings())
            if name == "every position":
                scored = policy._score
                policy._score = lambda *a, scored=scored: scored(*a[:5], None)  # the scorer before issue 16
            engine = DecodingEngine(model, policy)
            pairs[name] = (engine, prefilled(engine, batch, context))
        times = rounds(pairs, context, count=6, steps=10)
        label = f"adore R=0 m=128, batch {batch}, context {context}"
    for name, seconds in times.items():
        print(f"{label}, {name}: median step {statistics.median(seconds) * 1e3:.2f} ms over {len(seconds)} steps")


if __name__ == "__main__":
    main()
