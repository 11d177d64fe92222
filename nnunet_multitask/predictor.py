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

    def _recording_subtypes(self, predict, data: torch.Tensor) -> torch.Tensor:
        with SubtypeAccumulator(self.network) as accumulator:
            logits = predict(data)
        self.last_subtype_probabilities = accumulator.probabilities()
        return logits

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        return self._recording_subtypes(super().predict_logits_from_preprocessed_data, data)

    def predict_case(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed ``(C, *spatial)`` image -> (segmentation logits ``(K_seg, *spatial)`` on the
        CPU, subtype probabilities ``(n_subtypes,)``).

        After ``manual_initialization`` (no fold parameters: the trainer's live network) the network
        is used as it is; otherwise every loaded fold contributes."""
        if self.list_of_parameters is None:
            logits = self._recording_subtypes(self.predict_sliding_window_return_logits, data).cpu()
        else:
            logits = self.predict_logits_from_preprocessed_data(data)
        return logits, self.last_subtype_probabilities
