"""Where a decode step's time goes, beyond the weight matmuls (issue 16).

Prefills the prompts unprofiled, then profiles ``steps`` greedy decode steps of the engine alone.
Prints the median step, then per step: the operators by self time (``torch.profiler``) and the
Python functions of the engine and the cache by cumulative time (``cProfile``, which slows Python
a little).

    python scripts/step_breakdown.py [--method window] [--m 128] [--context 1024] [--batch 1] [--steps 20]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, without PYTHONPATH

from adore.core.engine import DecodingEngine
from adore.core.models import load_model
from adore.methods import build_policy
from experiments.tasks.throughput import decode_steps

ROOT = Path(__file__).resolve().parents[1]


def operator_times(run: Callable[[], object]) -> dict[str, tuple[int, float]]:
    """``{operator: (calls, self seconds)}`` over one call of ``run``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return {e.key: (e.count, e.self_cpu_time_total / 1e6) for e in prof.key_averages()}


def python_times(run: Callable[[], object]) -> dict[tuple, tuple[int, float]]:
    """``{(file, line, function): (calls, cumulative seconds)}`` over one call of ``run``."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    return {key: (value[1], value[3]) for key, value in pstats.Stats(profiler).stats.items()}


def per_step(totals: dict, steps: int) -> dict:
    return {k: (calls / steps, seconds / steps) for k, (calls, seconds) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m"))
    parser.add_argument("--method", default="window")
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model).model
    prompts = torch.randint(100, 40_000, (args.batch, args.context))
    params = {} if args.method == "full" else {"m": args.m}
    engine = DecodingEngine(model, build_policy(args.method, **params))
    engine.generate(prompts.tolist(), 4)  # warm-up
    timed = [s for _ in range(3) for s in engine.generate(prompts.tolist(), 24).step_s]
    print(
        f"{args.method}, batch {args.batch}, context {args.context}: median step {statistics.median(timed) * 1e3:.2f} ms"
    )

    ops = per_step(operator_times(decode_steps(engine, prompts, args.steps)), args.steps)
    print(f"\noperators, self time per step (sum {sum(v[1] for v in ops.values()) * 1e3:.2f} ms):")
    for name, (calls, seconds) in sorted(ops.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"  {seconds * 1e3:7.3f} ms  {calls:7.1f} calls  {name}")

    calls = per_step(python_times(decode_steps(engine, prompts, args.steps)), args.steps)
    ours = {k: v for k, v in calls.items() if str(ROOT / "adore") in k[0] or str(ROOT / "baselines") in k[0]}
    print("\nengine and cache functions, cumulative time per step (cProfile):")
    for (file, line, function), (count, seconds) in sorted(ours.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"  {seconds * 1e3:7.3f} ms  {count:7.1f} calls  {Path(file).relative_to(ROOT)}:{line} {function}")


if __name__ == "__main__":
    main()
