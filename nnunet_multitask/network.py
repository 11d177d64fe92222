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
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from nnunet_multitask.labels import N_SUBTYPES

HEAD_DROPOUT = 0.2
SUBTYPE_HEAD_PREFIX = "subtype_head."  # state-dict keys of the head
POOLED_STATS_MOMENTUM = 0.01


class RunningStandardize(nn.Module):
    """Standardise ``(B, C)`` features per channel with running estimates of their mean and variance,
    in training and in evaluation alike (no learnable parameters; the estimates are buffers, so they
    are saved in checkpoints).

    Why: every ResEnc block ends in InstanceNorm, so the global average of each bottleneck channel
    is nearly the same for every case (measured on the synthetic set: case-to-case std 0.015 against
    a mean of 0.76). LayerNorm keeps that tiny variation tiny, the head's Dropout noise then drowns
    it, and the classifier never leaves the majority class. Centring and scaling each pooled channel
    by its spread over cases makes the case-to-case differences the signal. Batch statistics would
    not do at nnU-Net's batch size of 2, hence running estimates.
    """

    def __init__(self, channels: int, momentum: float = POOLED_STATS_MOMENTUM, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                values = pooled.detach().float()
                # the first batch initialises the estimates; later ones move them by `momentum`
                rate = 1.0 if self.num_updates == 0 else self.momentum
                mean = values.mean(0)
                var = ((values - self.running_mean) ** 2).mean(0) if self.num_updates > 0 else values.var(0, unbiased=False)
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var.clamp_min(self.eps), rate)
                self.num_updates += 1
        return (pooled - self.running_mean) / torch.sqrt(self.running_var + self.eps)


class SubtypeHead(nn.Module):
    """Global average pooling, running standardisation (:class:`RunningStandardize`), LayerNorm,
    Dropout, Linear(C, C//2), GELU, Dropout, Linear(C//2, K).

    Input ``(B, C, *spatial)`` bottleneck features (2d or 3d); output ``(B, K)`` logits.
    """

    def __init__(self, in_channels: int, n_subtypes: int = N_SUBTYPES, dropout: float = HEAD_DROPOUT):
        super().__init__()
        hidden = in_channels // 2
        self.standardize = RunningStandardize(in_channels)
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
        return self.mlp(self.standardize(pooled))


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


RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
MULTITASK_CLASS = f"{MultitaskResEncUNet.__module__}.{MultitaskResEncUNet.__qualname__}"


def build_multitask_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                            num_output_channels: int, deep_supervision: bool) -> MultitaskResEncUNet:
    """:class:`MultitaskResEncUNet` with the architecture of a ResEnc plan's configuration.

    Raises:
        ValueError: the configuration's network is not a ``ResidualEncoderUNet``.
    """
    if configuration_manager.network_arch_class_name not in (RESENC_CLASS, MULTITASK_CLASS):
        raise ValueError(
            f"nnUNetTrainerMultitask needs a ResEnc plan (network class {RESENC_CLASS}), got "
            f"{configuration_manager.network_arch_class_name}; use -p nnUNetResEncUNetMPlans"
        )
    return get_network_from_plans(MULTITASK_CLASS, configuration_manager.network_arch_init_kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=deep_supervision)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module itself behind DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network
