"""ResEnc U-Net with a lesion-subtype classification head on the encoder bottleneck.

The network is a subclass of dynamic-network-architectures' ``ResidualEncoderUNet`` so that
``.encoder``, ``.decoder`` and all state-dict keys stay native; the head adds ``subtype_head.*``
keys. ``forward(x)`` returns exactly what stock nnU-Net expects (segmentation logits, or the list
of deep-supervision outputs), which keeps stock ``nnUNetv2_predict`` and stock validation working
on our checkpoints. The subtype logits of the same encoder pass are kept in
:attr:`MultitaskResEncUNet.subtype_logits`: the trainer's loss and our predictor read them from
there, so nothing downstream has to run the encoder twice or unpack a changed return type
(DDP, ``torch.compile`` and nnU-Net's sliding-window code only ever see ``forward``).
"""
from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnunet_multitask.labels import N_SUBTYPES

HEAD_DROPOUT = 0.2


class SubtypeHead(nn.Module):
    """Global average pooling, LayerNorm, Dropout, Linear(C, C//2), GELU, Dropout, Linear(C//2, K).

    Input ``(B, C, *spatial)`` bottleneck features (2d or 3d); output ``(B, K)`` logits.
    """

    def __init__(self, in_channels: int, n_subtypes: int = N_SUBTYPES, dropout: float = HEAD_DROPOUT):
        super().__init__()
        hidden = in_channels // 2
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_channels),
            nn.Dropout(dropout),
            nn.Linear(in_channels, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_subtypes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(2).mean(dim=2)
        return self.mlp(pooled)


class MultitaskResEncUNet(ResidualEncoderUNet):
    """``ResidualEncoderUNet`` + :class:`SubtypeHead` on the last encoder stage.

    Takes every ``ResidualEncoderUNet`` argument (as found in nnU-Net plans) plus
    ``n_subtypes``.
    """

    def __init__(self, *args, n_subtypes: int = N_SUBTYPES, head_dropout: float = HEAD_DROPOUT, **kwargs):
        super().__init__(*args, **kwargs)
        self.subtype_head = SubtypeHead(self.encoder.output_channels[-1], n_subtypes, head_dropout)
        #: ``(B, n_subtypes)`` logits of the most recent :meth:`forward` call.
        self.subtype_logits: torch.Tensor | None = None

    def forward_multitask(self, x: torch.Tensor):
        """One encoder pass -> (segmentation output as :meth:`forward` returns it, ``(B, K)`` logits)."""
        skips = self.encoder(x)
        return self.decoder(skips), self.subtype_head(skips[-1])

    def forward(self, x: torch.Tensor):
        """``x``: ``(B, C_in, *spatial)``. Returns the stock segmentation output and records
        :attr:`subtype_logits`."""
        segmentation, self.subtype_logits = self.forward_multitask(x)
        return segmentation


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module itself behind DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network
