"""Loading the model and tokenizer, with one-line errors for the usual mistakes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .attention import register
from .errors import ConfigError
from .families import check_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype


def load_model(path: str, name: str = "", device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load any HF causal-LM folder with the ``kv_policy`` attention implementation."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        hint = (
            "run `make setup` to convert the embedded model"
            if "smollm2" in str(path)
            else "point model.path= at an HF model folder"
        )
        raise ConfigError(f"model path {str(path)!r} has no config.json; {hint}")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    _refuse_unservable(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation=register())
    model.to(torch_device).eval()
    return LoadedModel(model, tokenizer, name or folder.name, torch_device, torch_dtype)


def _refuse_unservable(folder: Path) -> None:
    """A family the engine cannot serve is refused by name before its weights load (loading Falcon with
    the kv_policy attention would fail with a bare ``KeyError: 'kv_policy'``)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(folder)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # not a causal LM transformers knows; from_pretrained gives its own error
        return
    check_family(model_class, config)


def merge_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Load a peft LoRA adapter and merge it into the weights (decoding then costs nothing extra)."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"model.adapter {adapter!r} has no adapter_config.json; give a peft adapter folder")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def adapted_name(name: str, adapter: str) -> str:
    """``smollm2-135m+lora:K32-abc/adapter``: the row's ``model`` says which adapter was merged."""
    path = Path(adapter)
    return f"{name}+lora:{path.parent.name}/{path.name}"


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token occupies across all layers: ``L * 2 * H_kv * D * bytes``."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * heads * head_dim * torch.finfo(dtype).bits // 8
