"""Turning a sample into prompt token ids, identically for every method."""

from __future__ import annotations

from .data import DatasetSpec, Sample


def chat_messages(spec: DatasetSpec, sample: Sample) -> list[dict[str, str]]:
    """The sample's earlier chat turns (:attr:`Sample.history`, usually none), then the dataset's
    template filled with the sample as the final user turn."""
    history = [{"role": role, "content": content} for role, content in sample.history]
    return [*history, {"role": "user", "content": spec.prompt.format(**sample.fields)}]


def plain_text(messages: list[dict[str, str]]) -> str:
    """Messages as plain text, for tokenizers without a chat template: a single user turn is its text
    alone; a conversation is ``Role: text`` paragraphs ending with ``Assistant:``."""
    if len(messages) == 1:
        return messages[0]["content"]
    turns = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return f"{turns}\n\nAssistant:"


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def build_prompt_ids(tokenizer, spec: DatasetSpec, sample: Sample) -> list[int]:
    """The chat messages of :func:`chat_messages` in the model's chat template, ready for the
    assistant's answer (plain text when the tokenizer has no chat template)."""
    messages = chat_messages(spec, sample)
    if getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return tokenizer(plain_text(messages))["input_ids"]


def build_chat_ids(tokenizer, spec: DatasetSpec, sample: Sample) -> list[int]:
    """Prompt and reference as one chat (the reference as the assistant's answer): teacher forcing."""
    messages = chat_messages(spec, sample)
    if getattr(tokenizer, "chat_template", None):
        answer = {"role": "assistant", "content": sample.reference}
        return _ids(tokenizer.apply_chat_template([*messages, answer], tokenize=True))
    return build_prompt_ids(tokenizer, spec, sample) + tokenizer(" " + sample.reference)["input_ids"]
