"""Sparse fine-tuning: LoRA on q, k, v and o under the ideal top-K attention mask.

The paper fine-tunes the LLM for sparse attention (it names the O(n^2) cost of this step). We train
LoRA adapters with the LM loss on the answer tokens, while every query may attend only to its top-K
past tokens (from the base model's aggregated full attention, as the controller's labels) and itself.
The mask is a 4-D additive float mask, which transformers uses as given for sdpa and eager alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    lr: float = 2e-4
    epochs: int = 1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class FinetuneExample:
    token_ids: list[int]
    prompt_length: int  # loss only on the tokens after the prompt
    labels: torch.Tensor  # [T, T] bool top-K past tokens (adore.labels.topk_past)


def sparse_attention_mask(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[1, 1, T, T]`` additive mask: query ``t`` sees its top-K past tokens and itself."""
    allowed = labels | torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def sparse_finetune(
    model: torch.nn.Module, examples: Sequence[FinetuneExample], config: LoraConfig, out_dir: Path, seed: int = 0
) -> list[float]:
    """Train LoRA adapters in place of ``model``'s weights (left untouched) and save them to ``out_dir``."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model,
        PeftLoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=list(config.targets), task_type="CAUSAL_LM"),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
    peft_model.train()
    losses = []
    device = next(model.parameters()).device
    with tqdm(total=config.epochs * len(examples), desc="sparse LoRA fine-tune", unit="seq") as bar:
        for _ in range(config.epochs):
            for example in examples:
                ids = torch.tensor([example.token_ids], device=device)
                targets = ids.clone()
                targets[:, : example.prompt_length] = -100
                mask = sparse_attention_mask(example.labels, model.dtype).to(device)
                loss = peft_model(input_ids=ids, attention_mask=mask, labels=targets, use_cache=False).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    peft_model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    peft_model.unload()  # remove the LoRA layers: the caller merges the saved adapter when it decodes
    return losses
