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


def writable():
    """Inference mode for the writes, entered only when the caller is not in it already (the engine
    is, every step and layer; a context manager entered there costs more than the write it guards)."""
    return nullcontext() if torch.is_inference_mode_enabled() else torch.inference_mode()


def _move_last_into(buffer: torch.Tensor, slot: torch.Tensor, last: int, lead: int = 0) -> None:
    """Slot ``last`` of ``buffer`` (``[*lead dims, B, H, capacity, ...]``) overwrites ``slot`` (``[B, H, 1]``,
    the same in every leading row) in every (sequence, head)."""
    leading, trailing = buffer.shape[:lead], buffer.shape[lead + 3 :]
    index = slot.view(*([1] * lead), *slot.shape, *([1] * len(trailing))).expand(*leading, *slot.shape, *trailing)
    buffer.scatter_(lead + 2, index, buffer.narrow(lead + 2, last, 1).clone())


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
        with writable():
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
        with writable():
            last = self.length - 1
            for buffer in self.buffers.values():
                _move_last_into(buffer, slot, last)
            self.length = last

    def replace(self, tensors: dict[str, torch.Tensor], capacity: int) -> None:
        """Make ``tensors`` (each ``[B, H, S', ...]``, every name of the store) the stored slots.

        A prefix view of its own buffer is kept without a copy (one-in/one-out eviction shrinks the
        view); anything else is copied in. Buffers are re-sized to ``capacity`` when they are too
        small or larger (after a long prefill is evicted down to a budget, a bounded cache gives the
        prompt's memory back).
        """
        with writable():
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


class StackedSlots:
    """The slot stores of a model's layers in one buffer per name, ``[L, B, H, capacity, ...]``, each
    store's buffers the views of its layer's row (appends and in-place replaces write through them).

    A uniform policy evicts the same slot of every layer: one-in/one-out is then one scatter per name
    for all layers, instead of one per layer and name (about a millisecond a step at 30 layers, in
    isolation; within a whole step, less than this CPU's noise). Built from stores that :meth:`fits`;
    a store that reallocates leaves the stack (:meth:`intact` turns false), and the cache then gives
    the others buffers of their own (:meth:`release`) and moves slots layer by layer.
    """

    def __init__(self, stores: list[SlotStore]) -> None:
        self.stores = stores
        with writable():
            self.buffers = {name: torch.stack([s.buffers[name] for s in stores]) for name in stores[0].buffers}
        for row, store in enumerate(stores):
            store.buffers = {name: buffer[row] for name, buffer in self.buffers.items()}
        self._rows = [store.buffers for store in stores]  # a store that reallocates replaces its dict

    @staticmethod
    def fits(stores: list[SlotStore]) -> bool:
        """Whether ``stores`` can share a stack: the same names, shapes, dtypes and devices, and the same
        slots used."""
        first = stores[0]
        like = {name: (b.shape, b.dtype, b.device) for name, b in first.buffers.items()}
        return bool(like) and all(
            s.length == first.length and {n: (b.shape, b.dtype, b.device) for n, b in s.buffers.items()} == like
            for s in stores
        )

    def intact(self) -> bool:
        """Whether every store still lives in the stack and all use the same number of slots."""
        length = self.stores[0].length
        return len(self.members()) == len(self.stores) and all(s.length == length for s in self.stores)

    def members(self) -> list[SlotStore]:
        """The stores whose buffers are still their rows of the stack."""
        return [store for store, row in zip(self.stores, self._rows, strict=True) if store.buffers is row]

    def release(self) -> None:
        """Give every store still in the stack buffers of its own again (a copy of its row); the stack
        is freed with the last reference to it."""
        with writable():
            for store in self.members():
                store.buffers = {name: buffer.clone() for name, buffer in store.buffers.items()}

    def move_last_into(self, slot: torch.Tensor) -> None:
        """:meth:`SlotStore.move_last_into` for every layer at once (``slot`` ``[B, H, 1]``, the same in
        every layer)."""
        with writable():
            last = self.stores[0].length - 1
            for buffer in self.buffers.values():
                _move_last_into(buffer, slot, last, lead=1)
        for store in self.stores:
            store.length = last
