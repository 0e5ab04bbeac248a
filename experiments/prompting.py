"""Turning a sample into prompt token ids, identically for every method."""

from __future__ import annotations

from .data import DatasetSpec, Sample


def build_prompt_ids(tokenizer, spec: DatasetSpec, sample: Sample) -> list[int]:
    """The dataset's template filled with the sample, as one user turn of the model's chat template
    (plain text when the tokenizer has no chat template)."""
    text = spec.prompt.format(**sample.fields)
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    return tokenizer(text)["input_ids"]
