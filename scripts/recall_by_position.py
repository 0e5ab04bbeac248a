"""Recall@m of ADORE's controllers against the true top-K, by position along one long text.

Tells a controller that drifts along a stream (its ranking worsens past the length it was trained
on) from a text that simply gets harder: the current query's true attention (the training-free
scorer's signal) is scored in the same position buckets, over all past tokens of each query. Several
controllers share one pass of the model (the labels' attention is the costly part): one column each,
headed by its folder and the longest sequence it trained on.

    python scripts/recall_by_position.py --controller artifacts/adore/smollm2-135m/gutenberg/K32-<hash> \\
        [more folders] --book othello --tokens 6144
"""

from __future__ import annotations

import torch
from controller_study import load_study, study_arguments  # scripts/, beside this file

from adore.labels import aggregated_attention, topk_past


def bucket_recall(scores: torch.Tensor, truth: torch.Tensor, m: int, rows: range) -> float:
    """Hits of each query's top-``m`` past tokens by ``scores`` ``[T, T]`` among its true set ``truth``
    ``[T, T]``, over the query ``rows``, divided by the true count."""
    index = torch.arange(rows.start, rows.stop)
    past = torch.arange(scores.shape[1])[None, :] < index[:, None]
    top = scores[index].masked_fill(~past, float("-inf")).topk(m, dim=-1).indices
    chosen = torch.zeros(len(index), scores.shape[1], dtype=torch.bool).scatter_(1, top, True)
    return float((chosen & truth[index]).sum() / truth[index].sum())


def main() -> None:
    parser = study_arguments(__doc__.splitlines()[0], book="othello", tokens=6144, several=True)
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--bucket", type=int, default=1024)
    args = parser.parse_args()
    loaded, controllers, ids = load_study(parser, args)
    attention = aggregated_attention(loaded.model, ids)  # [T, T], the labels' source
    truth = topk_past(attention, args.K, args.horizon)
    with torch.no_grad():
        embeddings = loaded.model.get_input_embeddings()(torch.tensor([ids]))
        scorers = [c.pair_logits(embeddings, torch.arange(len(ids))[None])[0] for c in controllers] + [attention]
    names = [
        f"{folder.name} (trained on {int(c.trained_positions)})"
        for folder, c in zip(args.controller, controllers, strict=True)
    ]
    print(f"recall@{args.m} of the true top-{args.K} (horizon {args.horizon}) on {args.book}, by query position")
    print(f"| positions | {' | '.join(names)} | current attention |\n|{'---|' * (len(scorers) + 1)}")
    for start in range(0, len(ids), args.bucket):
        rows = range(max(start, args.m + 1), min(start + args.bucket, len(ids)))  # queries with > m past tokens
        if len(rows):
            cells = " | ".join(f"{bucket_recall(scores, truth, args.m, rows):.3f}" for scores in scorers)
            print(f"| {rows.start}-{rows.stop} | {cells} |")


if __name__ == "__main__":
    main()
