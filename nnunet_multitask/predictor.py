"""nnU-Net predictor that also returns each case's subtype probabilities."""
from __future__ import annotations

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_multitask.aggregation import SubtypeAccumulator


class MultitaskPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` whose every case prediction also yields subtype probabilities,
    aggregated over all tiles, mirrors and folds (see :mod:`nnunet_multitask.aggregation`)."""

    #: ``(n_subtypes,)`` probabilities of the case most recently predicted.
    last_subtype_probabilities: torch.Tensor | None = None

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        with SubtypeAccumulator(self.network) as accumulator:
            logits = super().predict_logits_from_preprocessed_data(data)
        self.last_subtype_probabilities = accumulator.probabilities()
        return logits

    def predict_case(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed ``(C, *spatial)`` image -> (segmentation logits ``(K_seg, *spatial)`` on the
        CPU, subtype probabilities ``(n_subtypes,)``)."""
        logits = self.predict_logits_from_preprocessed_data(data)
        return logits, self.last_subtype_probabilities
