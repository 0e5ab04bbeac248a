"""A transformers ``Cache`` whose layers store only the tokens a policy keeps.

Built on transformers 5.x's own Cache API (``DynamicLayer`` subclass, no monkeypatching), following
the shape of transformers' ``DynamicSlidingWindowLayer``: ``update()`` appends and returns stored +
new keys/values for this step's attention; eviction happens right after attention
(attend-then-evict), called back by the ``kv_policy`` attention function (see ``attention.py``).

Each layer tracks, per slot, the token's original position and whether it is a real token or left
padding. Masks are built from positions, never from slot indices, so tokens may be stored in any
order (ADORE inserts rebuilt tokens at old positions, one-in/one-out overwrites a slot) and per-head
keep-sets may differ (H2O); a sliding-window layer adds ``query_pos - key_pos < window`` by position.

Mask contract (verified for transformers 5.24): ``get_seq_length()`` counts tokens *seen*;
``get_mask_sizes(q)`` returns ``(stored + q, seen - stored)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .attention import ATTN_IMPLEMENTATION
from .attention_view import AttentionView
from .errors import BudgetViolation, ConfigError
from .families import family_name, sliding_windows
from .pending import clear_pending, mark_pending
from .policy import KVPolicy
from .rope import LayerRotation
from .slots import SlotStore, StackedSlots, writable


def _along_slots(index: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Broadcast a slot index ``[B, H, S']`` over the trailing dims of a per-slot tensor ``[B, H, S, ...]``."""
    return index.view(*index.shape, *([1] * (tensor.dim() - 3))).expand(*index.shape, *tensor.shape[3:])


@dataclass
class _Step:
    """What one ``update()`` appended, kept until the attention function calls back.

    Attributes:
        keys: ``[B, H, S+q, D]`` the keys the queries attend to (re-rotated where the policy says).
        positions: ``[B, q]`` original positions of the new tokens; valid: ``[B, q]`` bool.
        stored: slots held before this step.
    """

    keys: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    stored: int


@dataclass
class EvictionPlan:
    """Either one ``victim`` slot per (sequence, head) (``[B, H, 1]``) or the slots to keep (``[B, H, S']``)."""

    victim: torch.Tensor | None = None
    index: torch.Tensor | None = None
    keep: torch.Tensor | None = None  # [B, H, S'] bool after ``index``: False marks a slot dropped (ragged heads)


def visibility(key_positions: torch.Tensor, key_valid: torch.Tensor, query_positions: torch.Tensor,
               window: int | None) -> torch.Tensor:  # fmt: skip
    """``[B, H, q, K]`` bool: valid keys (``[B, H, K]``) not later than the query (``[B, q]``), and closer
    than ``window`` when the layer slides."""
    key_pos, query_pos = key_positions[:, :, None, :], query_positions[:, None, :, None]
    visible = key_valid[:, :, None, :] & (key_pos <= query_pos)
    if window is not None:
        visible &= query_pos - key_pos < window
    return visible


class PolicyLayer(DynamicLayer):
    """One layer's KV store, evicting down to the policy's budget after each attention call.

    Attributes:
        keys, values: ``[B, H, S, D]`` stored states (post-RoPE keys).
        positions: ``[B, H, S]`` long, each slot's original token position.
        valid: ``[B, H, S]`` bool, False for left-padding slots.
        extras: per-slot policy statistics, each ``[B, H, S, ...]``, gathered with the keys.
        seen: tokens fed to this layer so far.
    """

    is_sliding = False
    is_croppable = False  # crop() would not know about positions/extras

    def __init__(self, policy: KVPolicy, owner: PolicyCache, layer_idx: int):
        super().__init__()
        self.policy, self.owner, self.layer_idx = policy, owner, layer_idx
        self.seen = 0
        self.positions: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.extras: dict[str, torch.Tensor] = {}
        self.has_invalid = False
        self.step_rope_positions: torch.Tensor | None = None  # positions RoPE saw for this step's tokens
        self.slots = SlotStore()  # keys, values, positions, valid live in its buffers; the attributes are views
        self.feeds = 0  # forward steps that appended to this layer (the prefill is the first)
        self._step: _Step | None = None  # set by update(), cleared once evicted after attention
        self._score_mask: torch.Tensor | None = None  # this step's visibility, for AttentionView

    # ---- Cache API -------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        B, H, _, D = key_states.shape
        self.keys = key_states.new_zeros(B, H, 0, D)
        self.values = value_states.new_zeros(B, H, 0, value_states.shape[-1])
        self.positions = torch.zeros(B, H, 0, dtype=torch.long, device=key_states.device)
        self.valid = torch.ones(B, H, 0, dtype=torch.bool, device=key_states.device)

    # ---- storage: preallocated buffers (see slots.py) ---------------------------------------------
    def capacity_for(self, slots: int) -> int:
        """Buffer size for holding ``slots`` now and one more step's tokens: a bounded layer's budget
        (or what it holds, when a method such as Ada-KV holds more per head) plus one step's tokens, fixed
        from the first decode step on; an unbounded one the length the engine announced, else ``slots``
        plus an eighth (amortised growth)."""
        step = self.policy.max_step_tokens
        budget = self.policy.layer_budget(self)
        if budget is not None:
            return max(slots, budget) + step
        expected = self.owner.expected_length
        if expected is not None and slots + step <= expected:
            return expected
        return slots + max(64, slots // 8)

    def _slot_views(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "positions": self.positions, "valid": self.valid}

    def _publish(self, allocated: int | None = None) -> None:
        """Point the public attributes at the store's views; tell the cache how the KV bytes it
        reserves changed (``allocated``: this layer's before the change; ``None``: unchanged)."""
        self.keys, self.values = self.slots.view("keys"), self.slots.view("values")
        self.positions, self.valid = self.slots.view("positions"), self.slots.view("valid")
        if allocated is not None:
            self.owner.note_held(self.kv_bytes() - allocated)

    def _store(self, tensors: dict[str, torch.Tensor]) -> None:
        """Make ``tensors`` (keys, values, positions, valid, each ``[B, H, S', ...]``) the stored slots."""
        allocated = self.kv_bytes()
        self.slots.replace(tensors, self.capacity_for(next(iter(tensors.values())).shape[2]))
        self._publish(allocated)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, H, q, _ = key_states.shape
        forwarded = kwargs.get("kwargs")
        forwarded = forwarded if forwarded is not None else {}
        new_pos, new_valid = self.owner.new_slots(self, B, q, forwarded.get("position_ids"), key_states.device)
        stored = self.keys.shape[2]

        # Replaced from outside with the same slots (moved by an offloading cache): adopt them into
        # the buffers. Reorders that would leave positions and policy state behind are refused below.
        if stored and not (self.slots.holds("keys", self.keys) and self.slots.holds("values", self.values)):
            self._store(self._slot_views())
        new = {"keys": key_states, "values": value_states, "positions": new_pos[:, None].expand(B, H, q),
               "valid": new_valid[:, None].expand(B, H, q)}  # fmt: skip
        grown = self.slots.append(new, self.capacity_for(stored))  # to at least stored + q slots
        self._publish()
        if grown:
            self.owner.note_held(grown)
        if self.layer_idx == 0:
            self.owner.note_positions(new_pos, new_valid)
        self.has_invalid = self.has_invalid or not self.owner.step_all_valid
        self.seen += q
        self.feeds += 1
        rope = forwarded.get("position_ids")
        self.step_rope_positions = new_pos if rope is None else rope
        self.policy.on_append(self, q)

        attention_keys = self.policy.keys_for_attention(self, self.keys)
        self._step = _Step(attention_keys, new_pos, new_valid, stored)
        self._score_mask = None
        # Publish ourselves to the attention function: through the kwargs dict that most modeling
        # files hand to both calls, and for the others (no dict) as the pending layer.
        forwarded["kv_layer"] = self
        mark_pending(self)
        return attention_keys, self.values

    # ---- masks (called by the attention function) ----------------------------------------
    def check_window(self, module: torch.nn.Module, window: int | None) -> None:
        """Refuse a model whose attention passes a sliding window other than its config declares
        (the mask would be built for the wrong layers)."""
        expected = self.owner.windows[self.layer_idx] if self.owner.windows is not None else window
        if window != expected:
            raise ConfigError(
                f"model family {self.owner.family!r}: layer {self.layer_idx} is declared with sliding window "
                f"{expected} but its attention passes {window}; the engine cannot serve it exactly"
            )

    def attention_mask(self, window: int | None) -> torch.Tensor | None:
        """This step's visibility ``[B, H|1, q, S+q]`` bool, by position: valid keys not later than the query
        (and, for a sliding-window layer, closer than ``window``). ``None`` when plain order is right:
        a single query that sees every key, or a first feed that is causal in index order.

        Also prepares the mask the policy's attention scores use (padding queries see nothing there,
        while in the sdpa mask they see the first real token, which keeps their row finite).
        """
        step = self._step
        q = step.positions.shape[1]
        needs = self.has_invalid or self.owner.out_of_order or (q > 1 and step.stored > 0)
        if window is not None and not needs:
            oldest = self.positions.masked_fill(~self.valid, torch.iinfo(self.positions.dtype).max).amin()
            needs = bool(step.positions.amax() - oldest >= window)
        scores_need = self.policy.needs_scores and (q > 1 or needs)
        if not (needs or scores_need):
            return None
        if q == 1 and window is None and not self.owner.out_of_order:
            # A decode step: every stored key is older than the query, so visibility is padding only.
            visible = self.valid[:, :, None, :]
            if scores_need:
                self._score_mask = visible & step.valid[:, None, :, None]
            return visible
        if step.stored == 0:
            # A first feed: in every head the keys are exactly this step's tokens, so one [B, 1, q, q]
            # mask serves all heads, and every layer of the step with the same window (built once).
            visible, score_mask = self.owner.first_feed_masks(window, step.positions, step.valid)
        else:
            visible = visibility(self.positions, self.valid, step.positions, window)
            score_mask = visible & step.valid[:, None, :, None]
        if scores_need:
            self._score_mask = score_mask
        return visible if needs else None

    def get_seq_length(self) -> int:
        return self.seen

    # transformers reorders a layer by swapping its keys and values only (beam search, contrastive
    # search, assisted decoding). Each slot's position and validity, the policy's extras and its
    # per-sequence state (ADORE's controller, H2O's scores) would stay behind: refused, not run wrongly.
    def _refuse_reorder(self, what: str) -> None:
        if self.stored:
            raise ConfigError(
                f"{what} is not supported with a KV policy cache (its slot positions and policy state would "
                "not follow the keys); decode with num_beams=1 and without assistant models"
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._refuse_reorder("beam search (reorder_cache)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._refuse_reorder("selecting sequences of a filled cache (batch_select_indices)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse_reorder("repeating sequences of a filled cache (batch_repeat_interleave)")

    def crop(self, max_length: int) -> None:
        self._refuse_reorder("cropping a filled cache (crop)")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[2] if self.is_initialized else 0
        return stored + query_length, self.seen - stored

    def get_max_length(self) -> int:
        return -1

    # ---- eviction --------------------------------------------------------------------
    @property
    def stored(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def after_attention(
        self, query: torch.Tensor, scaling: float, softcap: float | None = None, sinks: torch.Tensor | None = None
    ) -> None:
        """Called by the attention function once this step's attention is computed (``softcap`` and
        ``sinks`` ``[Hq]``: what the model's attention applied, so that scores are its true probabilities)."""
        if self.policy.needs_scores:
            view = AttentionView(query, self._step.keys, self._score_mask, scaling, softcap=softcap, sinks=sinks)
            self.policy.observe(self, view)
        if not self.policy.uniform and self.policy.evicts_now(self):
            self.apply(self.plan_eviction(self.policy.layer_target(self)))
        self._step = self._score_mask = None
        clear_pending(self)

    def plan_eviction(self, keep: int) -> EvictionPlan:
        """Which slots go: the ``keep`` slots of highest priority stay in every (sequence, KV head);
        padding goes first."""
        selected = self.policy.selection(self)
        if selected is not None:
            return self._plan_ragged(selected & self.valid)
        priority = self.policy.priority(self).masked_fill(~self.valid, float("-inf"))
        # Equal priorities go oldest first, never by slot index: slot order differs between a sequence
        # alone and in a padded batch, and after one-in/one-out overwrites (repeated tokens give knorm
        # exactly equal key norms in the first layer, for one).
        if self.stored - keep == 1 and self.policy.slicing == "gather":
            lowest = priority == priority.amin(dim=-1, keepdim=True)
            oldest = self.positions.masked_fill(~lowest, torch.iinfo(self.positions.dtype).max)
            return EvictionPlan(victim=oldest.argmin(dim=-1, keepdim=True))  # [B, H, 1]
        newest_first = self.positions.argsort(dim=-1, descending=True, stable=True)
        ranked = priority.gather(-1, newest_first).argsort(dim=-1, descending=True, stable=True)
        index = newest_first.gather(-1, ranked[..., :keep])
        return EvictionPlan(index=index.sort(dim=-1).values)  # [B, H, keep]

    def _plan_ragged(self, selected: torch.Tensor) -> EvictionPlan:
        """Keep-sets of different sizes per head (``selected`` ``[B, H, S]`` bool): every head keeps the
        widest head's count of slots, its selected ones first (in position order), the rest marked dropped."""
        width = max(1, int(selected.sum(-1).max()))
        order = torch.where(selected, self.positions, self.positions - (1 << 62))  # selected rank above the rest
        index = order.argsort(dim=-1, descending=True, stable=True)[..., :width]
        index = index.sort(dim=-1).values
        return EvictionPlan(index=index, keep=selected.gather(-1, index))

    def moves_in_place(self, plan: EvictionPlan) -> bool:
        """Whether ``plan`` is one in, one out with buffers no larger than the budget needs (the common
        decode step): the last slot then overwrites the victim in place."""
        return plan.victim is not None and self.slots.capacity <= self.capacity_for(self.stored - 1)

    @torch.inference_mode()  # writes in place into the slot buffers (see slots.py)
    def apply(self, plan: EvictionPlan) -> None:
        if self.moves_in_place(plan):
            # One in, one out: the last slot overwrites the lowest one in place (slot order is free);
            # the stored views shrink by one slot and the buffers stay.
            self.slots.move_last_into(plan.victim)
            self.after_move(plan)
            return
        if plan.victim is not None:  # the same, where the buffers are larger than the budget needs
            kept = {}
            for name, tensor in self._slot_tensors():
                tensor.scatter_(2, _along_slots(plan.victim, tensor), tensor[:, :, -1:].clone())
                kept[name] = tensor[:, :, :-1]
            self._keep(kept)
        elif self.policy.slicing == "matmul":
            self.select_by_matmul(plan.index)
        else:
            self.gather(plan.index)
        if plan.keep is not None:
            self.valid &= plan.keep
            self.has_invalid = True
        self._refresh_invalid()

    def after_move(self, plan: EvictionPlan) -> None:
        """Finish a one-in/one-out move of the stored slots (done by this layer or for every layer at
        once): the extras follow, the views shrink."""
        for name, tensor in self.extras.items():
            tensor.scatter_(2, _along_slots(plan.victim, tensor), tensor[:, :, -1:].clone())
            self.extras[name] = tensor[:, :, :-1]
        self._publish()
        self._refresh_invalid()

    def gather(self, index: torch.Tensor) -> None:
        """Keep the slots ``index`` (``[B, H, S']``) of every per-slot tensor."""
        self._keep({name: tensor.gather(2, _along_slots(index, tensor)) for name, tensor in self._slot_tensors()})

    def select_by_matmul(self, index: torch.Tensor) -> None:
        """ADORE's "matrix slicing": keys and values are multiplied by a 0/1 selection matrix
        ``P [B, S', S]`` (one per sequence, shared by every head: the keep-set must be uniform);
        slot metadata is gathered."""
        selection = self.owner.selection_matrix(index, self.stored, self.keys.dtype)
        kept = {name: tensor.gather(2, _along_slots(index, tensor)) for name, tensor in self._slot_tensors()[2:]}
        kept["keys"] = torch.einsum("bks,bhsd->bhkd", selection, self.keys)
        kept["values"] = torch.einsum("bks,bhsd->bhkd", selection, self.values)
        self._keep(kept)

    def _slot_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every per-slot tensor, the four stored ones first: ``(name, [B, H, S, ...])``."""
        return [*self._slot_views().items(), *((f"extras.{k}", v) for k, v in self.extras.items())]

    def _keep(self, kept: dict[str, torch.Tensor]) -> None:
        """Install the surviving slots: the stored four into the buffers, the extras as they are."""
        self._store({name: kept.pop(name) for name in ("keys", "values", "positions", "valid")})
        for name, tensor in kept.items():
            self.extras[name[len("extras.") :]] = tensor

    def _refresh_invalid(self) -> None:
        # Decode tokens are always valid, so once the pads are gone the check is never needed again.
        if self.has_invalid:
            self.has_invalid = not bool(self.valid.all())

    def kv_bytes(self) -> int:
        """KV bytes this layer reserves: its key and value buffers, free slots included (a bounded
        layer keeps room for its budget plus one step's tokens)."""
        return self.slots.kv_bytes

    # ---- helpers for policies ----------------------------------------------------------
    def newest(self) -> torch.Tensor:
        """``[B, H, 1]`` the latest valid position stored in each (sequence, KV head)."""
        return self.positions.masked_fill(~self.valid, -1).amax(dim=-1, keepdim=True)

    def recent(self, n: int) -> torch.Tensor:
        """``[B, H, S]`` bool: the slot holds one of the ``n`` latest positions (``n=1``: the newest)."""
        return self.positions > self.newest() - n

    def sinks(self, n: int) -> torch.Tensor:
        """``[B, H, S]`` bool: the slot holds one of a sequence's first ``n`` real tokens."""
        return self.valid & (self.positions < n)

    def grow_extra(self, name: str, q: int, dtype: torch.dtype = torch.float32, *trailing: int) -> torch.Tensor:
        """Extend the per-slot statistic ``extras[name]`` (``[B, H, S, *trailing]``) by ``q`` zero slots.

        Invariant a policy relies on: every extra has exactly as many slots as the keys, in the same
        order, so that eviction gathers it with them. Call this from ``on_append`` for each extra.
        """
        B, H, S = self.positions.shape
        previous = self.extras.get(name)
        if previous is None:
            previous = torch.zeros(B, H, S - q, *trailing, dtype=dtype, device=self.positions.device)
        grown = torch.cat([previous, previous.new_zeros(B, H, q, *trailing)], dim=2)
        self.extras[name] = grown
        return grown


class PolicyCache(Cache):
    """A ``Cache`` of :class:`PolicyLayer` s sharing one policy.

    The engine sets ``step_positions`` (original positions, ``[B, q]``) and ``step_valid`` (``[B, q]``
    bool, False for padding) before each forward; both default to what the model passes.
    """

    def __init__(
        self,
        policy: KVPolicy,
        num_layers: int,
        rotary_inv_freq: torch.Tensor | None = None,
        config=None,
        rotations: list[LayerRotation] | None = None,
    ):
        self.policy = policy
        # For policies that re-rotate keys: one rotation per layer (found by probing the model, see
        # rope.layer_rotations), or one rotary table shared by every layer (``rotary_inv_freq``).
        if rotations is None and rotary_inv_freq is not None:
            rotations = [LayerRotation(rotary_inv_freq)] * num_layers
        self.rotations = rotations
        self.config = config
        self.family = family_name(config)
        # The sliding window each layer must attend with (None: full), from the config; without a
        # config, whatever the model passes is trusted.
        self.windows = sliding_windows(config) if config is not None else None
        self.step_positions: torch.Tensor | None = None
        self.step_valid: torch.Tensor | None = None
        self.max_fed: torch.Tensor | None = None  # [B] latest position fed per sequence
        self.out_of_order = False  # this step feeds a token at or before an already fed position
        self.step_all_valid = True  # no padding among this step's tokens
        self.state: dict = {}  # per-batch policy state (e.g. ADORE's controller); the policy owns it
        self._selection: torch.Tensor | None = None
        self._stacked: StackedSlots | None = None  # a uniform policy's layers, one buffer per name
        # Stacked only where steps move one slot in and one out (a step that feeds more, ADORE's rebuild,
        # keeps a set by index, layer by layer).
        self._stackable = policy.uniform and policy.max_step_tokens == 1 and policy.slicing == "gather"
        self._first_feed: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}  # this step's, by window
        self._new_slots: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's, from layer 0
        self._selection_index: torch.Tensor | None = None
        # Tokens a sequence will reach (prompt + new tokens), when the engine knows it: an unbounded
        # layer then allocates its buffers once.
        self.expected_length: int | None = None
        self.held_bytes = 0  # KV bytes reserved now, over every layer (free and padding slots included)
        self.peak_kv_bytes = 0  # the most KV bytes held at any moment: prefill and m + step tokens included
        self.decode_peak_kv_bytes: int | None = None  # the same from start_decode() on (the prefill left out)
        super().__init__(layers=[PolicyLayer(policy, self, i) for i in range(num_layers)])

    def begin_step(
        self, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Before a forward: let the policy see (and extend, ADORE's rebuild) the new tokens ``[B, q]`` at
        original ``positions`` (``valid``: ``[B, q]`` bool or ``None``); returns the ``input_ids`` to feed
        and the ``position_ids`` RoPE must see."""
        input_ids, positions, valid = self.policy.prepare_step(self, input_ids, positions, valid)
        if self._stacked is not None and input_ids.shape[1] > 1:
            self._unstack()  # several tokens at a time (a stream fed in chunks) outgrow the stack
        self.step_positions, self.step_valid = positions, valid
        self._new_slots = None  # worked out afresh by this step's first layer
        return input_ids, self.policy.rope_position_ids(self, positions)

    def end_step(self) -> None:
        """After a forward: uniform eviction, then the budget assertion."""
        self.step_positions = self.step_valid = None
        self._new_slots = None
        if self.policy.uniform:
            self.evict_uniform()
        self.check_budget()

    def evict_uniform(self) -> None:
        """For policies whose keep-set is the same in every layer and head (``policy.uniform``): plan
        once, from layer 0, after the whole forward, and apply the plan to every layer."""
        first = self.layers[0]
        if not self.policy.evicts_now(first):
            return
        plan = first.plan_eviction(self.policy.layer_target(first))
        if self._stacked is not None and not self._stacked.intact():
            self._unstack()  # a layer left it (its slots replaced from outside): no partial stacks
        if self._stacked is not None and first.moves_in_place(plan):
            self._stacked.move_last_into(plan.victim)  # every layer's slots in one scatter per name
            with writable():
                for layer in self.layers:
                    layer.after_move(plan)
            return
        for layer in self.layers:
            layer.apply(plan)
        if self._stackable and self._stacked is None:
            self._stack()

    def _stack(self) -> None:
        """Once the buffers are settled (a bounded layer keeps its budget plus one step), move them into
        one stack, if that does not raise the memory high-water mark: the stack is filled while the
        layers' own buffers still exist, which fits under a prompt of at least twice the budget. Not
        tried again when it does not fit."""
        stores = [layer.slots for layer in self.layers]
        transient = self.held_bytes + sum(store.kv_bytes for store in stores)
        peaks = [self.peak_kv_bytes, self.decode_peak_kv_bytes]
        self._stackable = StackedSlots.fits(stores) and all(p is None or transient <= p for p in peaks)
        self._stacked = StackedSlots(stores) if self._stackable else None
        if self._stacked is not None:
            for layer in self.layers:  # the public views point into the stack (the old buffers are freed)
                layer._publish()

    def _unstack(self) -> None:
        """Every layer back in buffers of its own, for good: steps that feed several tokens would move
        each layer out of the stack while the stack still holds its row (and restack after every step),
        and a layer that left it would keep it alive through the others. The copies exist beside the
        stack for a moment, at most twice the bounded cache, which fits under the high-water mark for
        the same reason the stack did; counted all the same."""
        copies = sum(store.kv_bytes for store in self._stacked.members())
        self.note_held(copies)
        self._stacked.release()
        self._stacked, self._stackable = None, False
        self.note_held(-copies)
        for layer in self.layers:
            layer._publish()

    def selection_matrix(self, index: torch.Tensor, stored: int, dtype: torch.dtype) -> torch.Tensor:
        """0/1 matrix ``[B, S', S]`` with ``P[b, k, index[b, 0, k]] = 1`` for a uniform keep-set ``index``
        ``[B, H, S']``, built in a buffer reused across layers (same plan) and steps (same shape): the
        paper's pre-prepared slicing matrices."""
        shape = (index.shape[0], index.shape[2], stored)
        if self._selection is None or self._selection.shape != shape or self._selection.dtype != dtype:
            self._selection = torch.zeros(shape, dtype=dtype, device=index.device)
            self._selection_index = None
        if self._selection_index is not index:  # one plan serves every layer of a step
            self._selection.zero_().scatter_(2, index[:, 0, :, None], 1.0)
            self._selection_index = index
        return self._selection

    def new_slots(
        self, layer: PolicyLayer, batch: int, q: int, rope_positions: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Original positions and validity of the tokens ``layer`` appends, ``[B, q]`` each: what the
        engine set for this step, else what the model passes (``rope_positions``), else the next ``q``
        positions. Worked out by the first layer and shared by the rest of the step."""
        if layer.layer_idx != 0 and self._new_slots is not None and self._new_slots[0].shape == (batch, q):
            return self._new_slots
        positions = self.step_positions if self.step_positions is not None else rope_positions
        if positions is None:
            positions = torch.arange(layer.seen, layer.seen + q, device=device)[None]
        valid = self.step_valid
        valid = torch.ones(batch, q, dtype=torch.bool, device=device) if valid is None else valid.to(device)
        self._new_slots = (positions.to(device).expand(batch, q), valid)
        return self._new_slots

    def note_positions(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Record this step's positions (``[B, q]``); flags feeds that go back in time (rebuilds), which
        need a position mask even for a single token."""
        self.step_all_valid = self.step_valid is None or bool(valid.all())
        self._first_feed.clear()  # layer 0's update: a new step
        latest = positions.masked_fill(~valid, -1).amax(dim=-1)
        earliest = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).amin(dim=-1)
        if self.max_fed is None:
            self.out_of_order, self.max_fed = False, latest
        else:
            self.out_of_order = bool((earliest <= self.max_fed).any())
            self.max_fed = torch.maximum(self.max_fed, latest)

    def first_feed_masks(
        self, window: int | None, positions: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The visibility of a layer's first feed, ``[B, 1, q, q]`` bool (keys are this step's tokens
        ``positions`` ``[B, q]``), and the same with padding queries seeing nothing (for attention
        scores); built once per step and window, shared by the layers."""
        if window not in self._first_feed:
            visible = visibility(positions[:, None], valid[:, None], positions, window)
            self._first_feed[window] = (visible, visible & valid[:, None, :, None])
        return self._first_feed[window]

    def check_budget(self) -> None:
        """Raise if any layer holds more than the budget or a step's eviction never ran."""
        for layer in self.layers:
            if layer._step is not None:
                implementation = getattr(self.config, "_attn_implementation", None)
                if self.config is not None and implementation == ATTN_IMPLEMENTATION:
                    raise ConfigError(
                        f"model family {self.family!r} computed layer {layer.layer_idx}'s attention without "
                        "transformers' attention interface; the engine cannot serve it"
                    )
                raise BudgetViolation(
                    f"layer {layer.layer_idx} appended tokens but was never evicted: load the model "
                    "with attn_implementation='kv_policy' (adore.models.load_model does)"
                )
            problem = self.policy.budget_violation(layer)
            if problem is not None:
                raise BudgetViolation(f"layer {layer.layer_idx} {problem}")

    def kv_bytes(self) -> int:
        """KV bytes reserved now (after the last eviction)."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def note_held(self, delta: int) -> None:
        """A layer's reserved KV bytes changed by ``delta`` (buffers grown, or given back after a prefill
        is evicted down to a budget): keeps :attr:`peak_kv_bytes`, the one memory figure every row
        reports. Layers change one at a time, so the peak is the true high-water mark of the whole
        cache (a prefill of a method that evicts layer by layer holds the prompt in one layer at a
        time; one that plans once after the forward holds it in all), not a sum of per-layer peaks."""
        self.held_bytes += delta
        self.peak_kv_bytes = max(self.peak_kv_bytes, self.held_bytes)
        if self.decode_peak_kv_bytes is not None:
            self.decode_peak_kv_bytes = max(self.decode_peak_kv_bytes, self.held_bytes)

    def start_decode(self) -> None:
        """The prefill is over: from here :attr:`decode_peak_kv_bytes` tracks the decode steps' high-water
        mark (a prefill's transient is the prompt's, whatever the method; chunked prefill would bound it)."""
        self.decode_peak_kv_bytes = self.held_bytes

    def stored_positions(self, layer_idx: int) -> list[list[list[int]]]:
        """Sorted valid positions per (sequence, KV head) of one layer: for tests and debugging."""
        layer = self.layers[layer_idx]
        out = []
        for b in range(layer.positions.shape[0]):
            out.append(
                [sorted(layer.positions[b, h][layer.valid[b, h]].tolist()) for h in range(layer.positions.shape[1])]
            )
        return out
