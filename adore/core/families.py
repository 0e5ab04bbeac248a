"""What the engine needs to know about a model family, read from its config, and the families it refuses.

The engine serves a decoder exactly or refuses it with one line (:class:`ConfigError`) naming the
family; it never runs a model differently from the model's own attention. Everything model-specific
is read from what transformers itself uses (the config's ``layer_types`` and ``sliding_window``, the
keyword arguments the attention modules pass, the rotary buffers), never from a list of model names.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

_LAYER_TYPES = ("full_attention", "sliding_attention")


def family_name(config) -> str:
    """``config.model_type`` (``"mistral"``), or ``"unknown"``."""
    return getattr(config, "model_type", None) or "unknown"


def sliding_windows(config) -> list[int | None]:
    """Per layer, the sliding window its attention uses (``None``: full attention).

    As transformers builds the masks: ``config.layer_types`` where the family declares it (Gemma 2/3,
    Qwen2/3, OLMo3, Cohere2, gpt-oss), else ``config.sliding_window`` on every layer (Mistral, Phi-3,
    Starcoder2). Other layer kinds (Llama 4's chunked attention) are refused.
    """
    layers = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * layers
    unknown = sorted({t for t in types if t not in _LAYER_TYPES})
    if unknown:
        raise ConfigError(
            f"model family {family_name(config)!r} has {unknown[0]!r} layers; the engine serves only "
            f"{' and '.join(_LAYER_TYPES)} layers"
        )
    return [window if t == "sliding_attention" else None for t in types]


def check_servable(model: torch.nn.Module) -> None:
    """Refuse, with one line, a model the engine cannot run exactly."""
    check_family(type(model), model.config)


def check_family(model_class: type, config) -> None:
    """:func:`check_servable` before the weights load (``model_class``: what ``AutoModelForCausalLM`` builds)."""
    # transformers' own test for whether a modeling file calls its attention through the interface
    # (Falcon does not: the kv_policy function would never run). A family that passes this test and
    # still bypasses the function is caught after its first forward (PolicyCache.check_budget).
    uses_interface = getattr(model_class, "_can_set_attn_implementation", lambda: True)
    if not uses_interface():
        raise ConfigError(
            f"model family {family_name(config)!r} ({model_class.__name__}) computes attention in its own code, "
            "not through transformers' attention interface; the engine cannot serve it"
        )
    sliding_windows(config)
