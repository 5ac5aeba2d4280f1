"""Remove whole channels with torch-pruning, to a channel ratio or a MACs/params budget.

We own the loop: torch-pruning's ``BasePruner`` tracks the dependency graph (residual adds,
depthwise convs, concatenations) so coupled channels go together; we choose the importance,
step it, and stop when the budget is met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CompressError, did_you_mean
from compress.registry import IMPORTANCES


@dataclass(frozen=True)
class PruneTarget:
    """``channels``: remove this fraction of each layer's channels; ``macs``/``params``: keep
    at most this fraction of the model's MACs/parameters."""

    kind: str  # channels | macs | params
    amount: float


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)


def resolve_ignored(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The classifier (last Linear) plus the modules the user named, which keep all channels."""
    modules = dict(model.named_modules())
    ignored = [m for m in modules.values() if isinstance(m, nn.Linear)][-1:]
    for name in names:
        if name not in modules:
            raise CompressError(
                f"prune.ignored_layers: no module '{name}'{did_you_mean(name, modules)}"
            )
        ignored.append(modules[name])
    return ignored


def prune(
    model: nn.Module,
    example: torch.Tensor,
    *,
    importance: str,
    target: PruneTarget,
    global_ranking: bool,
    steps: int,
    round_to: int,
    ignored_layers: list[str],
    accumulate_gradients: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """Prune ``model`` in place; returns MACs/params after every step."""
    try:
        return _prune_steps(tp, model, example, importance, target, global_ranking, steps,
                            round_to, ignored_layers, accumulate_gradients)  # fmt: skip
    except (CompressError, KeyboardInterrupt):
        raise
    except Exception as exc:  # torch-pruning's dependency graph fails in many types
        raise CompressError(
            f"torch-pruning cannot prune {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; keep that layer whole with "
            "prune.ignored_layers (see compress layers MODEL)"
        ) from exc


def _prune_steps(tp, model, example, importance, target, global_ranking, steps, round_to,
                 ignored_layers, accumulate_gradients) -> list[dict[str, float]]:  # fmt: skip
    base_macs, base_params = count_macs_params(model, example)
    budget = target.kind != "channels"
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=IMPORTANCES.get(importance)(),
        global_pruning=global_ranking,
        # a budget is met by small steps towards a high ceiling, stopping when it is reached
        pruning_ratio=0.95 if budget else target.amount,
        iterative_steps=max(steps, 60) if budget else steps,
        ignored_layers=resolve_ignored(model, ignored_layers),
        round_to=round_to,
    )
    history = []
    for _ in range(pruner.iterative_steps):
        if importance == "taylor":
            if accumulate_gradients is None:
                raise CompressError("taylor importance needs training batches for its gradients")
            model.zero_grad()
            accumulate_gradients()
        pruner.step()
        macs, params = count_macs_params(model, example)
        history.append({"macs": macs / base_macs, "params": params / base_params})
        if budget and history[-1][target.kind] <= target.amount:
            break
    model.zero_grad(set_to_none=True)
    if budget and history[-1][target.kind] > target.amount:
        raise CompressError(
            f"pruning stopped at {history[-1][target.kind]:.2f} of the {target.kind}, above the "
            f"target {target.amount}; relax keep_{target.kind} or ignore fewer layers"
        )
    return history
