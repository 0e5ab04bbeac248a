"""Multi-turn chats as samples: predict the last assistant turn from the turns before it.

The turns before the final user turn become :attr:`Sample.history` (chat messages); the final user
turn fills the template ``{text}`` verbatim; the last assistant turn is the reference. Conversations
that do not end with an assistant turn answering a user turn, or that have an empty turn, are
skipped. ``max_prompt_chars`` caps the prompt: the oldest turns are dropped (and a leading assistant
turn with them, so the history starts with a user or system turn); a conversation whose final user
turn alone is longer is skipped.
"""

from __future__ import annotations

import hashlib

from . import Sample

PROMPT = "{text}"  # the final user turn, verbatim; earlier turns are chat messages before it
ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "system": "system",
}  # fmt: skip
SPLITS = ("train", "val", "test")


def chat_sample(sample_id: str, turns: list[tuple[str, str]], max_prompt_chars: int | None) -> Sample | None:
    """``turns``: ``(role, text)`` with roles as in the source (mapped by :data:`ROLES`); ``None``
    when the conversation cannot be a sample (see the module docstring)."""
    if len(turns) < 2 or any(role not in ROLES or not text.strip() for role, text in turns):
        return None
    turns = [(ROLES[role], text) for role, text in turns]
    (*history, (user_role, user_text), (target_role, target_text)) = turns
    if target_role != "assistant" or user_role != "user":
        return None
    if max_prompt_chars is not None:
        if len(user_text) > max_prompt_chars:
            return None
        budget = max_prompt_chars - len(user_text)
        while history and (sum(len(text) for _, text in history) > budget or history[0][0] == "assistant"):
            history.pop(0)
    return Sample(sample_id, {"text": user_text}, target_text, history=tuple(history))


def hash_split(key: str, train: float = 0.8, val: float = 0.1) -> str:
    """A deterministic split from a key (the same on every machine and Python): 80/10/10 by default."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    return "train" if fraction < train else "val" if fraction < train + val else "test"
