"""l1, l2: a channel group's weight magnitude (Li et al. 2017, arXiv:1608.08710)."""

import torch_pruning as tp

from compress.registry import IMPORTANCES

IMPORTANCES.register("l1")(lambda: tp.importance.GroupMagnitudeImportance(p=1))
IMPORTANCES.register("l2")(lambda: tp.importance.GroupMagnitudeImportance(p=2))
