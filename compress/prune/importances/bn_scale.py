"""bn_scale: the |gamma| of the BatchNorm after a channel (Liu et al. 2017, arXiv:1708.06519)."""

import torch_pruning as tp

from compress.registry import IMPORTANCES

IMPORTANCES.register("bn_scale")(lambda: tp.importance.BNScaleImportance())
