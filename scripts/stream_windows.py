"""Perplexity per window of N tokens of stream runs, from each run folder's per-token NLL (``nll.txt``).

python scripts/stream_windows.py --window 1024 results/reference/runs/<run_id> [...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python scripts/...` from anywhere

from experiments.tasks.streaming import window_perplexities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="stream run folders (results/<dir>/runs/<run_id>)")
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args()
    if args.window <= 0:
        parser.error(f"--window must be positive, got {args.window}")
    for run in args.runs:
        if not (run / "nll.txt").is_file():
            parser.error(f"no nll.txt in {run}; give the folder of a task=stream run")
        config = json.loads((run / "config.json").read_text())
        nll = [float(value) for value in (run / "nll.txt").read_text().split()]
        label = f"{config['method']['name']} on {config['dataset'].get('book', config['dataset']['name'])}"
        values = " / ".join(f"{w['perplexity']:.1f}" for w in window_perplexities(nll, args.window))
        print(f"{label} ({run.name}), per {args.window} tokens: {values}")


if __name__ == "__main__":
    main()
