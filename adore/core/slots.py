"""Per-slot tensors in preallocated buffers, written in place.

A cache layer's keys, values, positions and padding flags are ``[B, H, S, ...]`` tensors that grow by
``q`` slots per forward and shrink at eviction. Appending with ``torch.cat`` copies the whole cache at
every step and layer, O(S) bytes per token: for full attention at a 4k context that copy costs more
than the attention that reads it, and it allocates a fresh tensor per layer and step. Here each
tensor lives in a buffer of ``capacity >= S`` slots; the stored tensors are the prefix views
``buffer[:, :, :S]``. A bounded cache gets a fixed buffer of its budget plus one step's tokens, so its
steps allocate nothing; an unbounded one grows in amortised chunks (or once, to a length the engine
announces). Views are never reallocated behind a caller's back within a forward: only ``append``,
``replace`` and ``move_last_into`` move data, and the layer calls them between attention calls. Writes run in
inference mode: buffers made by the engine (in inference mode) stay writable when a caller outside it,
``model.generate`` under ``no_grad`` or a test, drives the cache.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def _writable():
    """Inference mode for the writes, entered only when the caller is not in it already (the engine
    is, every step and layer; a context manager entered there costs more than the write it guards)."""
    return nullcontext() if torch.is_inference_mode_enabled() else torch.inference_mode()


def _is_prefix_view(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    """``tensor`` is ``buffer[:, :, :S]`` itself (same memory, same layout): nothing to copy."""
    return tensor.data_ptr() == buffer.data_ptr() and tensor.stride() == buffer.stride()


class SlotStore:
    """Named per-slot tensors sharing one slot count and one capacity.

    Attributes:
        buffers: ``{name: [B, H, capacity, ...]}``; slots ``[length, capacity)`` are free.
        length: slots in use (``S``).
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.length = 0

    @property
    def capacity(self) -> int:
        return next(iter(self.buffers.values())).shape[2] if self.buffers else 0

    @property
    def kv_bytes(self) -> int:
        """Bytes allocated for keys and values (the whole buffers: what the cache reserves)."""
        return sum(self.buffers[name].nbytes for name in ("keys", "values") if name in self.buffers)

    def view(self, name: str) -> torch.Tensor:
        """``[B, H, S, ...]`` the stored slots of ``name`` (a view: in-place writes reach the buffer)."""
        return self.buffers[name][:, :, : self.length]

    def holds(self, name: str, tensor: torch.Tensor | None) -> bool:
        """Whether ``tensor`` is still this store's view of ``name`` (a caller may have replaced it)."""
        return tensor is not None and name in self.buffers and _is_prefix_view(tensor, self.buffers[name])

    def append(self, new: dict[str, torch.Tensor], capacity: int) -> int:
        """Write ``new[name]`` (``[B, H, q, ...]``) after the stored slots; when they do not fit, move
        everything to buffers of ``max(capacity, S + q)`` slots first. Returns the change in
        :attr:`kv_bytes` (0 unless the buffers moved)."""
        with _writable():
            q = next(iter(new.values())).shape[2]
            need = self.length + q
            grown = 0
            if need > self.capacity:
                before = self.kv_bytes
                self._reallocate(max(capacity, need), new)
                grown = self.kv_bytes - before
            for name, tensor in new.items():
                self.buffers[name].narrow(2, self.length, q).copy_(tensor)
            self.length = need
        return grown

    def move_last_into(self, slot: torch.Tensor) -> None:
        """One in, one out, in place: the last stored slot overwrites ``slot`` (``[B, H, 1]``, one per
        sequence and head) in every tensor, and the stored slots shrink by one. Slot order is free
        (masks and rankings go by position), so nothing else moves."""
        with _writable():
            last = self.length - 1
            for buffer in self.buffers.values():
                index = slot.view(*slot.shape, *([1] * (buffer.dim() - 3))).expand(*slot.shape, *buffer.shape[3:])
                buffer.scatter_(2, index, buffer.narrow(2, last, 1).clone())
            self.length = last

    def replace(self, tensors: dict[str, torch.Tensor], capacity: int) -> None:
        """Make ``tensors`` (each ``[B, H, S', ...]``, every name of the store) the stored slots.

        A prefix view of its own buffer is kept without a copy (one-in/one-out eviction shrinks the
        view); anything else is copied in. Buffers are re-sized to ``capacity`` when they are too
        small or larger (after a long prefill is evicted down to a budget, a bounded cache gives the
        prompt's memory back).
        """
        with _writable():
            length = next(iter(tensors.values())).shape[2]
            if not length <= self.capacity <= max(capacity, length):
                self.length = 0
                self._reallocate(max(capacity, length), tensors)
            for name, tensor in tensors.items():
                buffer = self.buffers[name]
                if _is_prefix_view(tensor, buffer):
                    continue
                if tensor.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
                    tensor = tensor.clone()  # a shifted view of the same memory: the copy would overlap
                buffer[:, :, :length] = tensor
            self.length = length

    def _reallocate(self, capacity: int, like: dict[str, torch.Tensor]) -> None:
        """New buffers of ``capacity`` slots (shaped like ``like``), keeping the stored slots."""
        buffers = {}
        for name, tensor in like.items():
            shape = (*tensor.shape[:2], capacity, *tensor.shape[3:])
            buffers[name] = tensor.new_empty(shape)
            if self.length:
                buffers[name][:, :, : self.length] = self.view(name)
        self.buffers = buffers
