"""The decoding engine every method runs on.

Semantics, identical for every policy:

1. **Prefill** the (left-padded) prompts with full attention, then evict down to the budget.
2. **Decode** greedily, one token per step: the new token attends to the cache plus itself, then the
   policy evicts down to ``m`` (attend-then-evict).
3. After every forward the budget is **asserted** on every layer, so a silently ineffective
   compression cannot happen.

Positions are explicit: every token keeps its original position (keys are cached after RoPE),
padding is tracked per slot, and a policy may remap the positions RoPE sees (StreamingLLM's
cache-relative mode). :meth:`DecodingEngine.forward` also feeds several tokens at arbitrary
(earlier) positions in one pass, causal by position, which ADORE's rebuild uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import PolicyCache
from .families import check_servable
from .policy import KVPolicy
from .rope import layer_rotations
from .timing import DeviceTimer


@dataclass
class GenerationResult:
    """Output of :meth:`DecodingEngine.generate` for one batch.

    Attributes:
        tokens: generated ids per prompt, up to and including the first EOS.
        prefill_s: wall time of the prefill forward (and its eviction).
        step_s: wall time of every decode step.
        prompt_tokens: real (non-pad) prompt tokens in the batch.
        kv_peak_bytes: the most KV bytes the cache held at any moment (the prefill's full prompt and a
            step's ``m`` + new tokens before eviction included).
        kv_decode_peak_bytes: the same over the decode steps only.
    """

    tokens: list[list[int]]
    prefill_s: float
    step_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    kv_peak_bytes: int = 0

    @property
    def generated_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


class DecodingEngine:
    """Greedy decoding of a causal LM under a :class:`KVPolicy`.

    Args:
        model: an HF causal LM loaded with ``attn_implementation="kv_policy"``.
        policy: the cache policy; a fresh :class:`PolicyCache` is built for each batch.
        eos_token_ids: ids that end a sequence (``()`` to never stop early).
        pad_token_id: id used for left padding and for finished rows.

    Raises:
        ConfigError: the model family cannot be served exactly (one line naming it), or the policy
            re-rotates keys and the model's rotary layout does not allow it exactly.
    """

    def __init__(
        self, model: torch.nn.Module, policy: KVPolicy, eos_token_ids: Sequence[int] = (), pad_token_id: int = 0
    ):
        self.model, self.policy = model, policy.composed()
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        check_servable(model)
        # Measured once per model, and only for policies that move keys (StreamingLLM's cache mode).
        self.rotations = layer_rotations(model) if getattr(self.policy, "rerotates_keys", False) else None

    def new_cache(self) -> PolicyCache:
        config = self.model.config
        return PolicyCache(self.policy, config.num_hidden_layers, config=config, rotations=self.rotations)

    @torch.inference_mode()
    def forward(
        self,
        cache: PolicyCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor | None = None,
        logits_to_keep: int = 1,
    ) -> torch.Tensor:
        """Feed ``input_ids`` (``[B, q]``) at original ``positions`` (``[B, q]``) and evict.

        Tokens may sit at any positions, earlier than cached ones included: each new token attends
        to cached and new tokens whose position is not later than its own (and that are not
        padding, ``valid`` ``[B, q]``). Returns the last ``logits_to_keep`` logits ``[B, k, V]``.
        """
        input_ids, rope_positions = cache.begin_step(input_ids, positions, valid)
        try:
            out = self.model(
                input_ids=input_ids,
                position_ids=rope_positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        finally:
            cache.step_positions = cache.step_valid = None
        cache.end_step()
        return out.logits

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> GenerationResult:
        """Greedy-decode a batch of token-id prompts (left-padded internally)."""
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        valid = torch.zeros(batch, width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[row, width - len(prompt) :] = True
        input_ids, valid = input_ids.to(self.device), valid.to(self.device)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # what generate() does; pads sit at 0

        cache = self.new_cache()
        cache.expected_length = width + max_new_tokens
        with DeviceTimer(self.device) as timer:
            logits = self.forward(cache, input_ids, positions, valid if not bool(valid.all()) else None)
            next_ids = logits[:, -1].argmax(-1)
        cache.start_decode()
        result = GenerationResult(
            tokens=[[] for _ in range(batch)], prefill_s=timer.seconds, prompt_tokens=int(valid.sum())
        )

        eos = set(self.eos_token_ids)
        finished = [False] * batch
        position = positions[:, -1:]
        for step in range(max_new_tokens):
            tokens = next_ids.tolist()  # one device sync per step
            for row, token in enumerate(tokens):
                if not finished[row]:
                    result.tokens[row].append(token)
                    finished[row] = token in eos
            if all(finished) or step == max_new_tokens - 1:
                break
            # Finished rows keep decoding padding (as generate() does) so the batch stays rectangular.
            feed = torch.tensor(
                [self.pad_token_id if done else token for token, done in zip(tokens, finished, strict=True)],
                device=self.device,
            )
            position = position + 1
            with DeviceTimer(self.device) as timer:
                logits = self.forward(cache, feed[:, None], position)
                next_ids = logits[:, -1].argmax(-1)
            result.step_s.append(timer.seconds)
        result.kv_peak_bytes, result.kv_decode_peak_bytes = cache.peak_kv_bytes, cache.decode_peak_kv_bytes
        return result

    def synchronize(self) -> None:
        """Wait for the device (CUDA), so that wall-clock timers measure the work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
