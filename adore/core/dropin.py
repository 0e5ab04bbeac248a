"""Any method inside plain ``model.generate``: a drop-in evicting cache.

``evicting(model, policy)`` yields a :class:`~adore.core.cache.PolicyCache` to pass to
``model.generate`` (or to a hand-written loop of ``model(...)`` calls). While the ``with`` block is
open, two forward hooks on the model (PyTorch's public hook API; no transformers class is patched)
do around each forward what :meth:`DecodingEngine.forward <adore.core.engine.DecodingEngine.forward>`
does: before it, the policy sees the new tokens (ADORE adds the tokens it rebuilds) and padding is
read from the 2-D attention mask; after it, uniform policies evict and the budget is asserted. The
tokens are therefore the engine's, for every method, uniform ones included (tested against it)::

    from adore import load_model
    from adore.core.dropin import evicting
    from adore.methods import build_policy

    loaded = load_model("models/smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = tokenizer(["The capital of France is", "Once upon a time"], return_tensors="pt", padding=True)
    with evicting(model, build_policy("h2o", m=16)) as cache:
        out = model.generate(**batch, cache=cache, max_new_tokens=24, do_sample=False)
    print(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    print(max(layer.stored for layer in cache.layers))  # 16: the budget held after every step

A cache serves one ``generate`` call (one batch); open a new ``with`` block for the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .cache import PolicyCache
from .engine import DecodingEngine
from .errors import ConfigError
from .policy import KVPolicy


def _ours(kwargs: dict, cache: PolicyCache) -> bool:
    return kwargs.get("cache") is cache or kwargs.get("past_key_values") is cache


@contextmanager
def evicting(model: torch.nn.Module, policy: KVPolicy) -> Iterator[PolicyCache]:
    """Yield a cache under which ``model.generate(..., cache=cache)`` runs ``policy`` as the engine does.

    The model must use the ``kv_policy`` attention (``adore.load_model`` loads it so). Padding comes
    from the 2-D ``attention_mask`` that ``generate`` passes; positions from its ``position_ids``.

    Raises:
        ConfigError: the family or the policy cannot be served exactly (as for the engine), or a
            forward comes without ``input_ids`` (ADORE's rebuild re-feeds token ids).
    """
    engine = DecodingEngine(model, policy)  # refuses what the engine refuses; measures rotations once
    cache = engine.new_cache()

    def before(module, args, kwargs):
        if not _ours(kwargs, cache):
            return None
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ConfigError("evicting() needs input_ids in every forward (inputs_embeds are not supported)")
        q = input_ids.shape[1]
        mask = kwargs.get("attention_mask")  # [B, seen + q]: generate passes the whole 2-D mask
        if mask is not None and mask.dim() != 2:
            raise ConfigError("evicting() takes a 2-D attention_mask (padding); the cache builds the 4-D masks")
        valid = None if mask is None or bool(mask[:, -q:].all()) else mask[:, -q:].bool()
        positions = kwargs.get("position_ids")
        if positions is None:  # what generate derives: positions count real tokens, pads sit at 0
            seen = cache.get_seq_length()
            positions = (
                torch.arange(seen, seen + q, device=input_ids.device)[None].expand(input_ids.shape[0], q)
                if mask is None
                else (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q:]
            )
        input_ids, rope_positions = cache.begin_step(input_ids, positions, valid)
        # The cache masks by position and padding itself: the model's 2-D mask is indexed by slot and
        # sized by tokens seen, both wrong once tokens are evicted.
        kwargs.update(input_ids=input_ids, position_ids=rope_positions, attention_mask=None)
        return args, kwargs

    def after(module, args, kwargs, output):
        if _ours(kwargs, cache):
            cache.end_step()

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield cache
    finally:
        for handle in handles:
            handle.remove()
