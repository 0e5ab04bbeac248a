"""``task=train``: train what a method learns (ADORE: its controller and, optionally, its sparse
fine-tune), through the method's own ``fit`` hook; the task names no method."""

from __future__ import annotations

from typing import Any

from adore import KVPolicy
from experiments.infra.runtime import model_from_config, policy_from_config, run_context
from experiments.infra.tasks import register_task


@register_task("train")
def run_train(cfg: dict[str, Any]) -> str:
    policy = policy_from_config(cfg["method"], cfg)
    context = run_context(cfg)
    if type(policy).fit is KVPolicy.fit:
        policy.fit(context, None)  # one line, before the model loads: this method learns nothing
    summary = policy.fit(context, model_from_config(cfg))
    print(summary)
    return summary
