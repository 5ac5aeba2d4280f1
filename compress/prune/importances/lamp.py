"""lamp: layer-adaptive magnitude scores, comparable across layers (Lee et al. 2021,
arXiv:2010.07611)."""

import torch_pruning as tp

from compress.registry import IMPORTANCES

IMPORTANCES.register("lamp")(lambda: tp.importance.LAMPImportance(p=2))
