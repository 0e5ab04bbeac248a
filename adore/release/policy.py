"""ADORE: adaptive token release with KV-state rebuild (Zhang et al., Findings of ACL 2024).

Each decoding step, for the current token ``t``:

1. the controller takes ``t`` and scores every past token, cached or released;
2. the ``R`` released tokens of highest score are *rebuilt*: fed again, together with ``t``, in one
   forward pass at their original positions, causal by position, so their KV states are recomputed
   in every layer;
3. the new KV states are appended, then the cache is released down to ``m``, keeping the tokens of
   highest score (the current token always stays);
4. one keep-set serves all layers and heads (the paper's uniform scheduling; it is also what makes
   rebuilding by re-feeding token ids possible).

The prompt is prefilled with full attention, then released to the top ``m`` by the controller's
scores for the last prompt token. Released tokens cost only their id and the controller's per-token
terms (``width + 1`` floats); their KV states are gone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from adore import (
    ADAPTER_SCHEMES,
    AttentionView,
    ConfigError,
    PolicyCache,
    PolicyLayer,
    RunContext,
    ScoredPolicy,
    register_method,
)

from .artifacts import (
    TRAINING_AMOUNT,
    artifact_dir,
    check_controller_available,
    prepare_adore,
    train_summary,
    training_dataset,
)
from .controller import ImportanceController
from .labels import check_target
from .settings import HASHED_DEFAULTS, SETTINGS_DEFAULTS

if TYPE_CHECKING:
    from adore import LoadedModel

SLICINGS = ("gather", "matmul")


def _copy_of(key: str):
    return lambda: copy.deepcopy(SETTINGS_DEFAULTS[key])


SCORERS = ("controller", "oracle")
DEFAULT_K = 32  # labels' size unless m // 2 is smaller
_GROWTH = 256  # positions allocated at a time for the per-position state


def _valid_coordinates(positions: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every valid new token, for writing per-position state."""
    rows = torch.arange(positions.shape[0], device=positions.device)[:, None].expand_as(positions)
    return rows[valid], positions[valid]


@register_method("adore")
@dataclass
class ADORE(ScoredPolicy):
    """ADORE's release-and-rebuild cache.

    Attributes:
        m: cache budget (tokens kept after every step, in every layer).
        R: released tokens rebuilt per step (0: release only).
        K: size of the ideal top-K set the controller was trained to find (its labels); ``None``:
            ``min(32, m // 2)`` (at m=32, K=m left the controller nothing to rank below its labels:
            README, "Small budgets").
        slicing: ``gather`` (indexing) or ``matmul`` (the paper's pre-built 0/1 selection matrices).
        n_sink: first tokens always kept (0: none, as in the paper).
        n_recent: most recent tokens always kept, the current one included (0 or 1: only the current
            one, as in the paper); the controller ranks the rest.
        reencode: 0 (the paper: one recurrence over the whole sequence), or ``N``: every ``N`` tokens
            the controller's recurrent state is rebuilt from scratch over the last ``N`` tokens, so it
            never summarises more than ``2N`` tokens. A controller trained on ``2N``-token sequences
            then never runs past its training length, however long the stream (README, streams).
        scorer: ``controller`` (the trained GRU), or ``oracle``: the current token's true attention,
            aggregated over layers and heads (an upper bound for analysis; needs ``R=0``).
        artifacts_dir, train_dataset, train_if_missing, finetune, controller, labels, train, lora:
            where the controller is kept, what it is trained on and how (``conf/method/adore.yaml``).
    """

    m: int = 64
    R: int = 4
    K: int | None = None
    slicing: str = "gather"
    n_sink: int = 0
    n_recent: int = 0
    reencode: int = 0
    scorer: str = "controller"
    artifacts_dir: str = "artifacts"
    train_dataset: str | None = None
    train_if_missing: bool = True
    finetune: bool = False
    controller: dict = field(default_factory=_copy_of("controller"), repr=False)
    labels: dict = field(default_factory=_copy_of("labels"), repr=False)
    train: dict = field(default_factory=_copy_of("train"), repr=False)
    lora: dict = field(default_factory=_copy_of("lora"), repr=False)

    uniform = True
    moved_settings = ("adore", HASHED_DEFAULTS)

    @classmethod
    def row_params(cls, params: dict) -> dict:
        params = dict(params)
        if "controller" in params and "controller_checkpoint" not in params:  # rows before the rename
            params["controller_checkpoint"] = params.pop("controller")
        # Rows from before method.labels.horizon existed were trained on next-step labels (horizon 1).
        if params.get("scorer") == "controller" and params.get("labels_horizon") is None:
            params["labels_horizon"] = 1
        if params.get("scorer") == "controller" and params.get("positions") is None:  # before relative positions
            params["positions"] = "absolute"
        params.setdefault("n_recent", 0)  # rows before it existed kept only the current token
        params.setdefault("reencode", 0)  # and ran one recurrence over the whole sequence
        if "scored_by" not in params and params.get("scorer") in SCORERS:  # rows before the cells existed: GRU
            params["scored_by"] = "attention" if params["scorer"] == "oracle" else "gru"
        # Last, in one order: rows completed later (scripts/backfill_rows.py) gained these at their end,
        # and a row's parameters in another order would read as another configuration.
        for key in TRAINING_AMOUNT:
            if key in params:
                params[key] = params.pop(key)
        return params

    def __post_init__(self) -> None:
        super().__post_init__()
        self.network: ImportanceController | None = None  # the bound, trained controller
        self.embedding: torch.nn.Module | None = None
        self.checkpoint = ""
        self.training: dict = {}  # how the bound controller was trained (recorded in result rows)

    def validate(self) -> None:
        super().validate()
        if self.m is None:
            raise ConfigError("method.m is required for adore; set e.g. method.m=64")
        if not isinstance(self.R, int) or self.R < 0:
            raise ConfigError(f"method.R must be a non-negative integer, got {self.R!r}")
        if self.R > self.m:
            raise ConfigError(f"method.R={self.R} must not exceed method.m={self.m}; lower R or raise m")
        if self.K is None:
            self.K = min(DEFAULT_K, max(1, self.m // 2))
        if not isinstance(self.K, int) or not 1 <= self.K <= self.m:
            raise ConfigError(f"method.K must be an integer in [1, m={self.m}], got {self.K!r}")
        if self.slicing not in SLICINGS:
            raise ConfigError(f"method.slicing must be one of {', '.join(SLICINGS)}, got {self.slicing!r}")
        if not 0 <= self.n_sink < self.m:
            raise ConfigError(f"method.n_sink must be in [0, m), got {self.n_sink}")
        if not 0 <= self.n_recent <= self.m - self.n_sink:
            raise ConfigError(f"method.n_recent must be in [0, m - n_sink], got {self.n_recent}")
        if not isinstance(self.reencode, int) or self.reencode < 0:
            raise ConfigError(f"method.reencode must be 0 (off) or a positive number of tokens, got {self.reencode!r}")
        if self.scorer not in SCORERS:
            raise ConfigError(f"method.scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        check_target(self.labels.get("target", "current"))
        if self.scorer == "oracle" and self.R:
            raise ConfigError("method.scorer=oracle scores only cached tokens; set method.R=0")

    @property
    def needs_scores(self) -> bool:  # type: ignore[override]
        return self.scorer == "oracle"

    def bind(self, controller: ImportanceController, embedding: torch.nn.Module, checkpoint: str = "") -> ADORE:
        """Attach the trained controller and the LLM's (frozen) input embedding; ``checkpoint`` names it in rows."""
        self.network, self.embedding, self.checkpoint = controller.eval(), embedding, checkpoint
        return self

    def describe(self) -> dict:
        params = {k: v for k, v in super().describe().items() if k not in SETTINGS_DEFAULTS or k == "slicing"}
        # What ranks the tokens, in one word (the controller ablation's axis): the network's cell, or
        # the training-free current-query attention.
        params["scored_by"] = self.controller.get("cell", "gru") if self.scorer == "controller" else "attention"
        if self.scorer == "oracle":
            params.update(self.training)  # its recall@m on held-out data, where measured
        if self.scorer == "controller":
            # Not "controller": that is the parameter (the network's settings), and a described
            # parameter that reads None counts as ignored by the sweep's canonical config.
            params["controller_checkpoint"] = self.checkpoint or None
            params["controller_scorer"] = self.network.config.scorer if self.network is not None else None
            params.update(self.training)
        return params

    # ---- per step: score, pick tokens to rebuild ----------------------------------------------
    @torch.no_grad()
    def prepare_step(
        self, cache: PolicyCache, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        state = cache.state
        valid_new = valid if valid is not None else torch.ones_like(input_ids, dtype=torch.bool)
        self._record_tokens(state, input_ids, positions, valid_new)
        current = positions[:, -1]  # left padding: the last column is each sequence's current token
        if self.scorer == "oracle":
            state["oracle"] = torch.zeros_like(state["tokens"], dtype=torch.float32)
            return input_ids, positions, valid
        if self.network is None:
            raise ConfigError("adore has no controller: run `python run.py task=train method=adore` first")
        # Without rebuilds only the cached tokens and the new ones can be kept: score just those, O(m)
        # a step instead of O(t) (every position is scored where released tokens compete: R > 0).
        first = cache.layers[0]
        cached = first.positions[:, 0] if not self.R and first.is_initialized else None
        state["scores"] = self._score(state, input_ids, positions, valid_new, current, cached)
        rebuild = self._pick_rebuild(cache, current) if self.R and cache.layers[0].is_initialized else None
        if rebuild is None:
            return input_ids, positions, valid
        ids, pos, ok = rebuild
        state["rebuilt"] = state.get("rebuilt", 0) + int(ok.sum())
        return torch.cat([ids, input_ids], 1), torch.cat([pos, positions], 1), torch.cat([ok, valid_new], 1)

    def _record_tokens(
        self, state: dict, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """Keep every token id by position: released tokens are rebuilt from their ids."""
        needed = int(positions.max()) + 1
        if "tokens" not in state or state["tokens"].shape[1] < needed:
            size = (needed + _GROWTH - 1) // _GROWTH * _GROWTH
            grown = {"tokens": input_ids.new_zeros(input_ids.shape[0], size)}
            grown["known"] = torch.zeros_like(grown["tokens"], dtype=torch.bool)
            for name, tensor in grown.items():
                if name in state:
                    tensor[:, : state[name].shape[1]] = state[name]
                state[name] = tensor
        rows, cols = _valid_coordinates(positions, valid)
        state["tokens"][rows, cols] = input_ids[valid]
        state["known"][rows, cols] = True

    def _score(
        self,
        state: dict,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor,
        current: torch.Tensor,
        cached: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the controller on the new tokens; return logits ``[B, P]`` of past positions for the current
        token (``-inf`` for the rest). ``cached`` (``[B, S]`` positions): score only those and the new
        tokens' positions, ``-inf`` elsewhere."""
        controller = self.network
        B, P = state["tokens"].shape
        width = controller.config.width
        if "static" not in state or state["static"].shape[1] < P:
            static = positions.new_zeros(B, P, dtype=torch.float32)
            # The query-free scorer (sigma_i = sigmoid(MLP(p_i + z_i))) has no per-token keys.
            keys = static.new_zeros(B, P, width) if controller.config.scorer == "query_aware" else None
            if "static" in state:
                static[:, : state["static"].shape[1]] = state["static"]
                if keys is not None:
                    keys[:, : state["keys"].shape[1]] = state["keys"]
            state["static"], state["keys"] = static, keys
        embeddings = self.embedding(input_ids)
        if bool(valid.all()):
            u, state["recurrent"] = controller.encode(embeddings, positions, state.get("recurrent"))
        else:  # left-padded prefill: run each sequence on its real tokens only
            u = embeddings.new_zeros(*input_ids.shape, width, dtype=torch.float32)
            states = []
            for row in range(B):
                keep = valid[row]
                previous = state["recurrent"][:, row : row + 1].contiguous() if "recurrent" in state else None
                u_row, h_row = controller.encode(
                    embeddings[row : row + 1, keep], positions[row : row + 1, keep], previous
                )
                u[row, keep] = u_row[0]
                states.append(h_row)
            state["recurrent"] = torch.cat(states, dim=1)
        if self.reencode:
            self._maybe_reencode(state, positions, valid)
        static, keys = controller.token_terms(u)
        rows, cols = _valid_coordinates(positions, valid)
        state["static"][rows, cols] = static[valid]
        if keys is not None:
            state["keys"][rows, cols] = keys[valid]
        if cached is None:
            at = torch.arange(P, device=positions.device)[None].expand(B, P)
            static, keys, known = state["static"], state["keys"], state["known"]
        else:  # a position held twice (a padding slot) gets the same logit twice: the scatter is exact
            at = torch.cat([cached, positions], dim=1)
            static, known = state["static"].gather(1, at), state["known"].gather(1, at)
            keys = None if state["keys"] is None else state["keys"].gather(1, at[..., None].expand(-1, -1, width))
        logits = controller.logits(u[:, -1:], current[:, None], static, keys, at)[:, 0]
        logits = logits.to(torch.float64).masked_fill(~(known & (at < current[:, None])), float("-inf"))
        if cached is None:
            return logits
        return logits.new_full((B, P), float("-inf")).scatter_(1, at, logits)

    def _maybe_reencode(self, state: dict, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Every ``reencode`` tokens, rebuild the recurrent state from scratch over each sequence's last
        ``reencode`` tokens (from their ids, ``[B, P]``), so it never summarises more than twice that."""
        state["since_reencode"] = state.get("since_reencode", 0) + positions.shape[1]
        if state["since_reencode"] < self.reencode:
            return
        state["since_reencode"] = 0
        current = positions.masked_fill(~valid, -1).amax(dim=-1)  # [B] each sequence's newest position
        states = []
        for row in range(positions.shape[0]):
            start = max(0, int(current[row]) + 1 - self.reencode)
            span = torch.arange(start, int(current[row]) + 1, device=positions.device)
            span = span[state["known"][row, span]]
            ids = state["tokens"][row, span][None]
            _, h_row = self.network.encode(self.embedding(ids), span[None], None)
            states.append(h_row)
        state["recurrent"] = torch.cat(states, dim=1)

    def _pick_rebuild(self, cache: PolicyCache, current: torch.Tensor):
        """The ``R`` released tokens of highest score, in position order: ids, positions, validity ``[B, R]``."""
        state = cache.state
        first = cache.layers[0]
        cached = torch.zeros_like(state["known"])
        rows, cols = _valid_coordinates(first.positions[:, 0], first.valid[:, 0])
        cached[rows, cols] = True
        candidates = state["scores"].masked_fill(cached, float("-inf"))
        count = min(self.R, candidates.shape[1])
        values, index = candidates.topk(count, dim=-1)
        ok = values > float("-inf")
        if not bool(ok.any()):
            return None
        order = index.masked_fill(~ok, candidates.shape[1]).argsort(dim=-1)  # valid first, by position
        index, ok = index.gather(1, order), ok.gather(1, order)
        positions = index.masked_fill(~ok, 0)
        return state["tokens"].gather(1, positions), positions, ok

    # ---- oracle scores ------------------------------------------------------------------------
    def observe(self, layer: PolicyLayer, attention: AttentionView) -> None:
        """Oracle scorer: add the current token's attention (all heads) to each cached position."""
        rows = range(attention.q_len - 1, attention.q_len)
        for _, probs in attention.row_chunks(rows):
            mass = probs.sum(dim=(1, 2, 3))  # [B, K]
            layer.owner.state["oracle"].scatter_add_(1, layer.positions[:, 0], mass)

    # ---- release ------------------------------------------------------------------------------
    def protected_sinks(self) -> int:
        return self.n_sink

    def protected_recent(self) -> int:
        return max(1, self.n_recent)

    def score(self, layer: PolicyLayer) -> torch.Tensor:
        """The controller's (or the oracle's) score of each cached position, the same in every head."""
        state = layer.owner.state
        scores = state["oracle"].to(torch.float64) if self.scorer == "oracle" else state["scores"]
        return scores.gather(1, layer.positions[:, 0])[:, None].expand_as(layer.positions)

    # ---- lifecycle: the controller a run needs ------------------------------------------------
    @property
    def max_step_tokens(self) -> int:
        return 1 + self.R  # the current token and up to R rebuilt ones

    def check(self, context: RunContext) -> None:
        check_controller_available(context, self)

    def prepare(self, context: RunContext, loaded: LoadedModel) -> None:
        prepare_adore(context, loaded, self)

    def fit(self, context: RunContext, loaded: LoadedModel) -> str:
        return train_summary(context, loaded, self)


@ADAPTER_SCHEMES.register("adore")
def sparse_adapter(argument: str, context: RunContext, model_name: str) -> str:
    """``model.adapter=adore:K32``: the sparse fine-tune ADORE trained for this model and dataset,
    with the run's ADORE settings (``conf/method/adore.yaml`` and any ``method.*`` given)."""
    if not argument.startswith("K") or not argument[1:].isdigit():
        raise ConfigError(f"model.adapter=adore:{argument} is not of the form adore:K<K>, e.g. adore:K32")
    method = context.config.get("method", {})
    params = {k: v for k, v in method.items() if k != "name"} if method.get("name") == "adore" else {}
    K = int(argument[1:])
    policy = ADORE(**{**params, "K": K, "m": max(K, params.get("m") or K), "R": 0})
    folder = artifact_dir(policy, model_name, training_dataset(policy, context), finetune=True) / "adapter"
    if not folder.is_dir():
        raise ConfigError(
            f"no ADORE adapter at {folder}; train it with `python run.py task=train method=adore "
            f"method.finetune=true method.K={K} dataset={context.dataset}`"
        )
    return str(folder)
