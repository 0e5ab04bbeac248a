"""Trace ADORE's keep-set along a stream: every ``--every`` tokens, the perplexity of the last
``--every`` predictions, the sink tokens still cached, the oldest cached positions and how many of the
``m`` cached tokens are among the last ``m`` positions (the evidence behind README, "Streaming on
held-out text").

    python scripts/stream_keep_set.py --controller artifacts/adore/smollm2-135m/gutenberg/K32-<hash> \\
        --tokens 4096 --R 0 --n-sink 0 [--n-recent 32]
"""

from __future__ import annotations

import math

import torch
from controller_study import load_study, study_arguments  # scripts/, beside this file

from adore import DecodingEngine
from adore.methods import build_policy


def main() -> None:
    parser = study_arguments(__doc__.splitlines()[0], book="hamlet", tokens=4096)
    parser.add_argument("--R", type=int, default=0)
    parser.add_argument("--n-sink", type=int, default=0)
    parser.add_argument("--n-recent", type=int, default=0)
    parser.add_argument("--every", type=int, default=512)
    args = parser.parse_args()
    loaded, (controller,), ids = load_study(parser, args)
    policy = build_policy("adore", m=args.m, R=args.R, K=args.K, n_sink=args.n_sink, n_recent=args.n_recent)
    policy.bind(controller, loaded.model.get_input_embeddings())
    engine = DecodingEngine(loaded.model, policy)
    cache = engine.new_cache()
    tokens = torch.tensor([ids])
    nll: list[float] = []
    with torch.inference_mode():
        for step in range(len(ids) - 1):
            logits = engine.forward(cache, tokens[:, step : step + 1], torch.tensor([[step]]), logits_to_keep=1)
            nll.append(torch.nn.functional.cross_entropy(logits[0].float(), tokens[0, step + 1 : step + 2]).item())
            if (step + 1) % args.every == 0:
                layer = cache.layers[0]
                cached = sorted(layer.positions[0, 0][layer.valid[0, 0]].tolist())
                recent = sum(p > step - args.m for p in cached)
                print(f"token {step + 1}: perplexity of the last {args.every} {math.exp(sum(nll[-args.every:]) / args.every):.1f}; "
                      f"first 8 positions cached {[p for p in cached if p < 8]}; oldest {cached[:6]}; "
                      f"{recent} of {len(cached)} cached among the last {args.m} positions", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
