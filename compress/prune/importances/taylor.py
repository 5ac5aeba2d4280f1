"""taylor: first-order loss change of removing a channel, |weight x gradient| (Molchanov et al.
2019, arXiv:1906.10771); the prune stage accumulates the gradients first."""

import torch_pruning as tp

from compress.registry import IMPORTANCES

IMPORTANCES.register("taylor")(lambda: tp.importance.GroupTaylorImportance())
