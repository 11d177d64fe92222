"""Case-level subtype probabilities from every network call of a sliding-window prediction.

Rule: each forward call (one tile, one mirror, one fold) contributes its softmax subtype
probabilities weighted by the tile's predicted foreground, ``w = mean over voxels of
P(label > 0) + FOREGROUND_WEIGHT_FLOOR``. The case probability is ``sum_t w_t p_t / sum_t w_t``.
Tiles that see the pancreas dominate; the floor keeps a case whose prediction is all
background defined (it then falls back to the plain mean over calls).
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_multitask.network import unwrap_network

FOREGROUND_WEIGHT_FLOOR = 1e-3


def foreground_weight(segmentation_logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` segmentation logits -> ``(B,)`` mean predicted foreground probability
    plus :data:`FOREGROUND_WEIGHT_FLOOR`."""
    background = torch.softmax(segmentation_logits.float(), dim=1)[:, 0]
    return 1.0 - background.flatten(1).mean(dim=1) + FOREGROUND_WEIGHT_FLOOR


class SubtypeAccumulator:
    """Context manager that hooks a (possibly DDP- or compile-wrapped) multitask network and sums
    foreground-weighted subtype probabilities over all forward calls made inside the block."""

    def __init__(self, network: nn.Module):
        self.network = network
        self.weighted_sum: torch.Tensor | None = None
        self.total_weight: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module: nn.Module, inputs, output) -> None:
        segmentation = output[0] if isinstance(output, (list, tuple)) else output
        logits = unwrap_network(self.network).subtype_logits
        weights = foreground_weight(segmentation)
        contribution = (weights[:, None] * torch.softmax(logits.float(), dim=1)).sum(dim=0)
        if self.weighted_sum is None:
            self.weighted_sum, self.total_weight = contribution, weights.sum()
        else:
            self.weighted_sum = self.weighted_sum + contribution
            self.total_weight = self.total_weight + weights.sum()

    def __enter__(self) -> "SubtypeAccumulator":
        if not hasattr(unwrap_network(self.network), "subtype_logits"):
            raise TypeError(
                f"{type(unwrap_network(self.network)).__name__} has no subtype head; "
                "the checkpoint was not trained with nnUNetTrainerMultitask"
            )
        self._handle = self.network.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def probabilities(self) -> torch.Tensor:
        """``(n_subtypes,)`` case probabilities (sum to 1) on the CPU."""
        if self.weighted_sum is None:
            raise RuntimeError("no forward call was recorded")
        return (self.weighted_sum / self.total_weight).detach().cpu()
