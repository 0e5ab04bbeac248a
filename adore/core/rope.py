"""Key re-rotation for cache-relative positions (StreamingLLM's ``position_mode: cache``).

transformers 5.24 ships no helper for this. RoPE is a rotation, so ``R(a) R(b) = R(a + b)``: a key
cached at position ``p`` is moved to position ``p + delta`` by one rotation by ``delta``. We always
rotate *once* from the key as it was cached (never step after step), in float32, because repeated
small rotations drift badly in bf16 (6.5 % relative error after 256 shifts).

Families differ in how a layer's keys carry their position: one rotary table (Llama), one table per
layer type (Gemma 3, OLMo3), a rotated prefix of the head (partial rotary: Phi, StableLM, GPT-NeoX),
interleaved pairs instead of halves (Cohere), or none at all (SmolLM3's no-RoPE layers).
:func:`layer_rotations` finds each layer's by *measuring* it on the model (a key computed at two
positions must be one rotation of the other), so a layout it does not know is refused, never
re-rotated wrongly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .errors import ConfigError

# RoPE variants whose frequencies change with the sequence length: a cached key's rotation is then not
# a function of its position alone.
_LENGTH_DEPENDENT = ("dynamic", "longrope")
_PROBE_POSITIONS = (0, 5, 37)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``rotate_half`` for the interleaved layout (dims ``2i, 2i+1`` form a pair, as in Cohere)."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def rerotate(
    keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """Rotate post-RoPE keys by ``delta`` positions.

    Args:
        keys: ``[B, H, S, D]`` keys rotated at some positions.
        delta: ``[B, H, S]`` integer shift per key (new position minus cached position).
        inv_freq: ``[R/2]`` the layer's rotary frequencies (the rotary module's ``inv_freq``, not its
            cos/sin, which may carry an attention scaling); the first ``R <= D`` dims are rotated, the
            rest pass through (partial rotary).
        interleaved: pairs are ``(2i, 2i+1)`` instead of ``(i, i + R/2)``.
    Returns:
        ``[B, H, S, D]`` keys as if RoPE had been applied at the new positions, in ``keys.dtype``.
    """
    freqs = delta.to(torch.float32)[..., None] * inv_freq.to(device=keys.device, dtype=torch.float32)
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat([freqs, freqs], dim=-1)
    width = emb.shape[-1]
    k = keys.float()
    rotated, rest = k[..., :width], k[..., width:]
    turn = _rotate_pairs(rotated) if interleaved else rotate_half(rotated)
    return torch.cat([rotated * emb.cos() + turn * emb.sin(), rest], dim=-1).to(keys.dtype)


@dataclass(frozen=True)
class LayerRotation:
    """How one layer's keys carry their position.

    Attributes:
        inv_freq: ``[R/2]`` rotary frequencies; ``None``: the keys carry no position (nothing to rotate).
        interleaved: pairs ``(2i, 2i+1)`` (Cohere) instead of halves.
    """

    inv_freq: torch.Tensor | None
    interleaved: bool = False

    def rotate(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``keys`` ``[B, H, S, D]`` moved by ``delta`` ``[B, H, S]`` positions."""
        if self.inv_freq is None:
            return keys
        return rerotate(keys, delta, self.inv_freq, self.interleaved)


_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_rotations(model: torch.nn.Module) -> list[LayerRotation]:
    """Each layer's :class:`LayerRotation`, measured on ``model`` (memoised per model).

    One token is fed at three positions (a batch of three single-token sequences): attending only to
    itself, it yields the same hidden states whatever its position, so in every layer its keys differ
    only by the rotation the layer applies. Each candidate table (every ``*inv_freq`` buffer of the
    model), in both pair layouts, must map the key at position 0 onto the keys at the other positions.

    Raises:
        ConfigError: the rotation cannot be re-applied exactly (frequencies that change with length,
            or a layout none of the candidates reproduces, such as learned absolute positions).
    """
    if model in _FOUND:
        return _FOUND[model]
    family = getattr(model.config, "model_type", None) or type(model).__name__
    refuse = f"method.position_mode=cache is refused for model family {family!r}"
    for module in model.modules():
        kinds = getattr(module, "rope_type", None)
        kinds = kinds.values() if isinstance(kinds, dict) else [kinds]
        bad = [kind for kind in kinds if kind in _LENGTH_DEPENDENT]
        if bad:
            raise ConfigError(
                f"{refuse}: its {bad[0]!r} RoPE changes frequencies with the length, so cached keys cannot "
                "be re-rotated exactly; use method.position_mode=original"
            )
    candidates: list[torch.Tensor] = []
    for name, buffer in model.named_buffers():
        if name.endswith("inv_freq") and not any(
            c.shape == buffer.shape and torch.equal(c, buffer) for c in candidates
        ):
            candidates.append(buffer)
    keys = _probe_keys(model)
    tolerance = 1e-4 if keys[0].dtype == torch.float32 else 3e-2
    found = []
    for index, k in enumerate(keys):  # k: [3, H, 1, D], one row per probe position
        base = k[:1].expand_as(k)
        delta = torch.tensor(_PROBE_POSITIONS, device=k.device).view(-1, 1, 1).expand(k.shape[:3])

        def error(rotation: LayerRotation, k=k, base=base, delta=delta) -> float:
            diff = (rotation.rotate(base, delta).float() - k.float()).norm()
            return float(diff / k.float().norm().clamp_min(1e-30))

        options = [LayerRotation(None)]
        options += [LayerRotation(f, il) for f in candidates if 2 * f.numel() <= k.shape[-1] for il in (False, True)]
        best = min(options, key=error)
        if error(best) > tolerance:
            raise ConfigError(
                f"{refuse}: layer {index}'s keys do not carry their position as a rotation the engine can "
                "re-apply exactly; use method.position_mode=original"
            )
        found.append(best)
    _FOUND[model] = found
    return found


@torch.inference_mode()
def _probe_keys(model: torch.nn.Module) -> list[torch.Tensor]:
    """Keys ``[3, H, 1, D]`` per layer of one token fed alone at each of ``_PROBE_POSITIONS``."""
    from transformers.cache_utils import Cache, DynamicLayer

    config = model.config
    device = next(model.parameters()).device
    token = 3 if getattr(config, "pad_token_id", None) != 3 else 4  # not padding (a zero embedding)
    rows = len(_PROBE_POSITIONS)
    cache = Cache(layers=[DynamicLayer() for _ in range(config.num_hidden_layers)])
    model(
        input_ids=torch.full((rows, 1), token, device=device),
        position_ids=torch.tensor(_PROBE_POSITIONS, device=device)[:, None],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return [layer.keys for layer in cache.layers]
