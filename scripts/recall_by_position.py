"""Recall@m of ADORE's controller against the true top-K, by position along one long text.

Tells a controller that drifts along a stream (its ranking worsens past the length it was trained
on) from a text that simply gets harder: the current query's true attention (the training-free
scorer's signal) is scored in the same position buckets, over all past tokens of each query.

    python scripts/recall_by_position.py --controller artifacts/adore/smollm2-135m/gutenberg/K32-<hash> \\
        --book othello --tokens 6144
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from adore import load_model
from adore.labels import aggregated_attention, topk_past
from adore.release.artifacts import load_controller
from experiments.data import load_samples


def bucket_recall(scores: torch.Tensor, truth: torch.Tensor, m: int, rows: range) -> float:
    """Hits of each query's top-``m`` past tokens by ``scores`` ``[T, T]`` among its true set ``truth``
    ``[T, T]``, over the query ``rows``, divided by the true count."""
    index = torch.arange(rows.start, rows.stop)
    past = torch.arange(scores.shape[1])[None, :] < index[:, None]
    top = scores[index].masked_fill(~past, float("-inf")).topk(m, dim=-1).indices
    chosen = torch.zeros(len(index), scores.shape[1], dtype=torch.bool).scatter_(1, top, True)
    return float((chosen & truth[index]).sum() / truth[index].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", required=True, type=Path, help="an ADORE artifact folder (controller.pt)")
    parser.add_argument("--model", default="models/smollm2-135m")
    parser.add_argument("--book", default="othello", help="a Gutenberg work the controller did not train on")
    parser.add_argument("--tokens", type=int, default=6144)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--K", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--bucket", type=int, default=1024)
    args = parser.parse_args()
    if not (args.controller / "controller.pt").is_file():
        parser.error(f"no controller.pt in {args.controller}; train one with `python run.py task=train method=adore`")
    loaded = load_model(args.model)
    (sample,) = load_samples("gutenberg", 1, book=args.book)
    ids = loaded.tokenizer(sample.fields["text"])["input_ids"][: args.tokens]
    attention = aggregated_attention(loaded.model, ids)  # [T, T], the labels' source
    truth = topk_past(attention, args.K, args.horizon)
    controller = load_controller(args.controller)
    with torch.no_grad():
        embeddings = loaded.model.get_input_embeddings()(torch.tensor([ids]))
        logits = controller.pair_logits(embeddings, torch.arange(len(ids))[None])[0]
    print(f"recall@{args.m} of the true top-{args.K} (horizon {args.horizon}) on {args.book}, by query position")
    print("| positions | controller | current attention |\n|---|---|---|")
    for start in range(0, len(ids), args.bucket):
        rows = range(max(start, args.m + 1), min(start + args.bucket, len(ids)))  # queries with > m past tokens
        if len(rows):
            print(f"| {rows.start}-{rows.stop} | {bucket_recall(logits, truth, args.m, rows):.3f} "
                  f"| {bucket_recall(attention, truth, args.m, rows):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
