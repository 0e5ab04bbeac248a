"""ADORE's lightweight controller: a GRU over the frozen LLM's input embeddings that scores, for the
current token ``t``, the importance ``sigma_{t,i}`` of every past token ``i``.

Verified from the paper: a GRU-based controller predicts the importance of all input and generated
tokens for the current token. From the summary in ``shared/seed``: ``z_i = GRU(x_i, z_{i-1})`` and
``sigma_i = sigmoid(MLP(p_i + z_i))``. Our reading (README, "our reading of ADORE"):

* ``x_i`` is the frozen LLM input embedding, projected down to ``width`` before the GRU;
  ``p_i`` is a learned position embedding (``positions="absolute"``, the paper's reading), or absent
  (``positions="relative"``): then position enters only through the GRU's order and the distance
  bias ``b(t - i)``, both of which extrapolate to streams longer than any training sequence, while
  rows of an absolute table past the training length were never trained.
* ``scorer="query_aware"`` (default) conditions the score on the current token, so a released token
  can become important again, which is what makes rebuilding meaningful:
  ``logit_{t,i} = MLP(u_i) + <W_q u_t, W_k u_i> / sqrt(width) + b(bucket(t - i))``, ``u = z + p``.
* ``scorer="query_free"`` is the literal ``sigma_i = sigmoid(MLP(p_i + z_i))``.

Per decoding step the cost is one GRU cell update plus ``O(t * width)`` for the scores, or
``O(m * width)`` without rebuilds, where only cached tokens can be kept (the per-token terms
``MLP(u_i)`` and ``W_k u_i`` are computed once, when token ``i`` arrives).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from adore import ConfigError

from .gru_backward import gru_layer

SCORERS = ("query_aware", "query_free")
POSITIONS = ("absolute", "relative")
CELLS = ("gru", "lstm", "mlp")  # the paper's GRU; an LSTM; a per-token MLP without recurrence (ablation)


@dataclass(frozen=True)
class ControllerConfig:
    width: int = 128
    scorer: str = "query_aware"
    max_positions: int = 8192
    distance_buckets: int = 32
    # At their behaviour before they existed, so that older checkpoints load as what they were;
    # today's defaults come from conf/method/adore.yaml (positions: relative).
    positions: str = "absolute"
    cell: str = "gru"

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ConfigError(f"adore.controller.scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if self.cell not in CELLS:
            raise ConfigError(f"method.controller.cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.positions not in POSITIONS:
            raise ConfigError(
                f"method.controller.positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"
            )
        if self.width <= 0:
            raise ConfigError(f"adore.controller.width must be positive, got {self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


def distance_bucket(distance: torch.Tensor, buckets: int) -> torch.Tensor:
    """Exact buckets for distances 1..8, then logarithmic (T5-style), capped at ``buckets - 1``."""
    distance = distance.clamp(min=1)
    exact = distance - 1
    log = 8 + (torch.log2(distance.float() / 8).clamp(min=0) * 4).long()
    return torch.where(distance <= 8, exact, log).clamp(max=buckets - 1)


TABLE_LIMIT = 1 << 17  # entries: the last bucket starts at distance 431 for 32 buckets, 110,218 for 64


def bucket_table(buckets: int) -> torch.Tensor | None:
    """``distance_bucket`` of distances ``0 .. D``, where ``D`` is the first distance in the last bucket:
    every longer distance shares it, so ``table[d.clamp(0, D)]`` is the bucket of any ``d`` (a lookup
    instead of a logarithm over every pair of a training sequence). ``None`` past ``TABLE_LIMIT``
    entries: the last bucket starts exponentially far away as buckets are added."""
    saturation = buckets if buckets <= 8 else math.ceil(8 * 2 ** ((buckets - 9) / 4)) + 1
    if saturation > TABLE_LIMIT:
        return None
    table = distance_bucket(torch.arange(saturation + 1), buckets)
    return table[: int((table < buckets - 1).sum()) + 1]


class _GatherByBincount(torch.autograd.Function):
    """``values[index]`` for a short ``values`` and a large ``index``, whose gradient is a weighted
    ``bincount``: an embedding's backward over the millions of pairs of a training sequence sorts
    them, ten times slower for the same sums."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.size = values.shape[0]
        return values[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        return torch.bincount(index.flatten(), grad.flatten(), minlength=ctx.size).to(grad.dtype), None


class ImportanceController(nn.Module):
    """Scores past tokens for the current one.

    Shapes: ``E`` LLM embedding size, ``W`` controller width, ``T`` tokens, ``B`` batch.
    """

    def __init__(self, embed_dim: int, config: ControllerConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.project = nn.Linear(embed_dim, width)
        # The recurrence over tokens (module names keep GRU checkpoints loadable).
        if config.cell == "gru":
            self.gru = nn.GRU(width, width, batch_first=True)
        elif config.cell == "lstm":
            self.lstm = nn.LSTM(width, width, batch_first=True)
        else:
            self.token_cell = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.position = nn.Embedding(config.max_positions, width) if config.positions == "absolute" else None
        # Positions at or beyond the longest training sequence share its last trained embedding: rows
        # past it were never trained and would score tokens at random (set by train_controller).
        self.register_buffer("trained_positions", torch.tensor(config.max_positions))
        self.token_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        if config.scorer == "query_aware":
            self.query = nn.Linear(width, width, bias=False)
            self.key = nn.Linear(width, width, bias=False)
            self.distance_bias = nn.Embedding(config.distance_buckets, 1)
            nn.init.zeros_(self.distance_bias.weight)
            self.register_buffer("bucket_of_distance", bucket_table(config.distance_buckets), persistent=False)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(
        self, embeddings: torch.Tensor, positions: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence over new tokens.

        Args:
            embeddings: ``[B, T, E]`` frozen LLM input embeddings of the new tokens.
            positions: ``[B, T]`` their positions.
            state: ``[S, B, W]`` recurrent state after the previous tokens (``None``: start); ``S`` is 1
                for the GRU, 2 for the LSTM (``h`` and ``c`` stacked) and 0 for the MLP, so callers
                slice and concatenate batch rows of any cell alike.
        Returns:
            ``u [B, T, W]`` (cell output, plus the position embedding when absolute) and the new state.
        """
        x = self.project(embeddings.to(self.project.weight.dtype))
        if self.config.cell == "gru" and torch.is_grad_enabled():  # training: the same outputs, a faster backward
            z = gru_layer(self.gru, x, state)
            state = z[:, -1][None]
        elif self.config.cell == "gru":
            z, state = self.gru(x, state)
        elif self.config.cell == "lstm":
            z, (h, c) = self.lstm(x, None if state is None else (state[:1].contiguous(), state[1:].contiguous()))
            state = torch.cat([h, c])
        else:
            z, state = self.token_cell(x), x.new_zeros(0, x.shape[0], x.shape[2])
        if self.position is None:
            return z, state
        return z + self.position(torch.minimum(positions, self.trained_positions - 1)), state

    def token_terms(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token terms, computed once per token: ``MLP(u) [B, T]`` and key ``[B, T, W]`` (or None)."""
        static = self.token_mlp(u).squeeze(-1)
        key = self.key(u) if self.config.scorer == "query_aware" else None
        return static, key

    def logits(
        self,
        query_u: torch.Tensor,
        query_positions: torch.Tensor,
        static: torch.Tensor,
        keys: torch.Tensor | None,
        key_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Importance logits of every key token for every query token.

        Args:
            query_u: ``[B, Q, W]`` states of the query (current) tokens.
            query_positions: ``[B, Q]``; static: ``[B, T]``; keys: ``[B, T, W]``; key_positions: ``[B, T]``.
        Returns:
            ``[B, Q, T]`` logits (no masking: the caller masks ``i >= t``).
        """
        logits = static[:, None, :].expand(-1, query_u.shape[1], -1)
        if self.config.scorer == "query_aware":
            similarity = torch.einsum("bqw,btw->bqt", self.query(query_u), keys) / math.sqrt(self.config.width)
            distance = query_positions[:, :, None] - key_positions[:, None, :]
            table = self.bucket_of_distance
            if table is None:
                bucket = distance_bucket(distance, self.config.distance_buckets)
            else:
                bucket = table[distance.clamp(0, len(table) - 1)]
            bias = _GatherByBincount.apply(self.distance_bias.weight[:, 0], bucket)
            logits = logits + similarity + bias
        return logits

    def pair_logits(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of all pairs of one batch of sequences: ``[B, T, T]`` (training)."""
        u, _ = self.encode(embeddings, positions)
        static, keys = self.token_terms(u)
        return self.logits(u, positions, static, keys, positions)
