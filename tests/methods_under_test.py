"""The one list of methods under test: every registered method, with the variants worth testing.

A method is under test by default (built from its defaults plus ``m``): adding a method file enrols
it in every generic test of ``tests/test_methods.py`` without editing a test. A method with several
modes, a parameter other than ``m`` that bounds it (``topk``'s ``K``) or a learned part (ADORE's
controller) gets explicit cases in :data:`VARIANTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from adore import KVPolicy
from adore.methods import available_methods, build_policy


def bind_random_controller(policy: KVPolicy, model: torch.nn.Module) -> KVPolicy:
    """ADORE with a seeded, untrained controller: its keep-sets are arbitrary but deterministic,
    which is all the generic tests need (training is tested in ``test_adore.py``)."""
    from adore.release.controller import ControllerConfig, ImportanceController

    torch.manual_seed(0)
    controller = ImportanceController(model.config.hidden_size, ControllerConfig(width=16))
    return policy.bind(controller, model.get_input_embeddings())


@dataclass(frozen=True)
class MethodCase:
    """One method configuration under test.

    Attributes:
        name: the registered method.
        params: fixed parameters of this variant.
        bound_by: the parameter that bounds what the method keeps or reads (``m``; ``K`` for
            ``topk``; ``None`` for a method that keeps everything).
        ready: makes a built policy usable on a model (e.g. binds ADORE's controller).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    bound_by: str | None = "m"
    ready: Callable[[KVPolicy, torch.nn.Module], KVPolicy] | None = None
    holds: Callable[[int], int] | None = None

    def holding(self, tokens: int) -> int:
        """The bound under which every layer holds ``tokens`` tokens (``tokens`` itself, unless the bound
        is an average over layers, as PyramidKV's ``m``)."""
        return self.holds(tokens) if self.holds else tokens

    @property
    def id(self) -> str:
        return "-".join([self.name, *(f"{k}={v}" for k, v in self.params.items())])

    def build(self, model: torch.nn.Module, bound: int | None = None) -> KVPolicy:
        """The policy, bounded by ``bound`` (tokens kept, or read for ``topk``) where it has a bound."""
        params = dict(self.params)
        if self.bound_by is not None and bound is not None:
            params[self.bound_by] = bound
        policy = build_policy(self.name, **params)
        return self.ready(policy, model) if self.ready else policy


VARIANTS = [
    MethodCase("full", bound_by=None),
    MethodCase("topk", bound_by="K"),
    MethodCase("streaming_llm", {"position_mode": "cache"}),
    MethodCase("streaming_llm", {"position_mode": "original"}),
    MethodCase("adore", {"R": 0, "K": 4}, ready=bind_random_controller),
    MethodCase("adore", {"R": 3, "K": 4}, ready=bind_random_controller),
    MethodCase("adore", {"R": 3, "K": 4, "slicing": "matmul"}, ready=bind_random_controller),
    MethodCase("adore", {"R": 0, "K": 4, "scorer": "oracle"}),
    # SnapKV's window (32 by default) must be below m; the generic tests bound m at 10.
    MethodCase("snapkv", {"window": 4, "kernel": 3}),
    MethodCase("snapkv", {"window": 4, "kernel": 3, "pooling": "avgpool", "interval": 4}),
    # PyramidKV's m is the layers' average: its last layer keeps window + (m - window) / beta.
    MethodCase("pyramidkv", {"window": 2, "kernel": 3, "beta": 4}, holds=lambda n: 2 + 4 * (n - 2)),
    MethodCase("adakv", {"scorer_params": {"window": 4, "kernel": 3}}),
    MethodCase("adakv", {"scorer": "tova", "floor": 0.5}),
    MethodCase("tova", {"heads": "layer"}),
    MethodCase("tova"),
    # Quest reads K // page_size whole pages: n tokens need ceil(n / page_size) of them.
    MethodCase("quest", {"page_size": 4, "skip_layers": 1}, bound_by="K", holds=lambda n: 4 * -(-n // 4)),
]

METHOD_CASES = VARIANTS + [
    MethodCase(name) for name in available_methods() if name not in {case.name for case in VARIANTS}
]


def holds_as_declared(policy: KVPolicy, layer) -> bool:
    """After a run that evicted, ``layer`` holds what ``policy`` declares for it: at least what one
    eviction keeps (``layer_target``) and at most its budget (``layer_budget``: per layer for PyramidKV,
    with SnapKV's ``interval - 1`` of slack). Slots are counted live, per KV head, in the fullest
    sequence (Ada-KV's heads hold different counts; their mean is its ``m``)."""
    live = int(layer.valid.sum(dim=(1, 2)).max()) // layer.valid.shape[1]
    return policy.layer_target(layer) <= live <= policy.layer_budget(layer)
