"""The multitask network: stock outputs, head on the bottleneck, one encoder pass, compile."""
from __future__ import annotations

import json

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_multitask.aggregation import SubtypeAccumulator, foreground_weight
from nnunet_multitask.labels import N_SUBTYPES
from nnunet_multitask.network import MultitaskResEncUNet, RunningStandardize, SubtypeHead
from nnunet_multitask.plans import PLANS_DIR
from nnunet_multitask.trainer import nnUNetTrainerMultitask

torch.manual_seed(0)


def tiny_kwargs(dim: int) -> dict:
    conv = torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if dim == 3 else torch.nn.InstanceNorm2d
    return dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=3,
                strides=[1, 2, 2], n_blocks_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1,
                conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})


@pytest.mark.parametrize("dim,shape", [(2, (2, 1, 32, 32)), (3, (2, 1, 8, 32, 32))])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_matches_stock_resenc_and_records_logits(dim, shape, deep_supervision):
    kwargs = tiny_kwargs(dim)
    net = MultitaskResEncUNet(**kwargs, deep_supervision=deep_supervision).eval()
    stock = ResidualEncoderUNet(**kwargs, deep_supervision=deep_supervision).eval()
    missing, unexpected = stock.load_state_dict(net.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("subtype_head.") for k in unexpected) and unexpected
    x = torch.randn(shape)
    with torch.no_grad():
        ours, theirs = net(x), stock(x)
    if deep_supervision:
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(ours, theirs)
        assert ours.shape == (shape[0], 3, *shape[2:])
    assert net.subtype_logits.shape == (shape[0], N_SUBTYPES)


def test_head_reads_the_bottleneck():
    net = MultitaskResEncUNet(**tiny_kwargs(3)).eval()
    seen = {}
    net.subtype_head.register_forward_hook(lambda m, inp, out: seen.setdefault("features", inp[0]))
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        bottleneck = net.encoder(x)[-1]
        net(x)
    torch.testing.assert_close(seen["features"], bottleneck)
    assert bottleneck.shape[1] == 16


def test_running_standardize_makes_small_case_differences_the_signal():
    torch.manual_seed(1)
    standardize = RunningStandardize(4, momentum=0.1)
    base = torch.tensor([0.8, 0.5, 1.2, 0.3])
    for _ in range(300):  # nearly constant pooled vectors, as after InstanceNorm: +-0.01 around base
        standardize(base + 0.01 * torch.randn(2, 4))
    torch.testing.assert_close(standardize.running_mean, base, atol=3e-3, rtol=0)
    torch.testing.assert_close(standardize.running_var.sqrt(), torch.full((4,), 0.01), atol=3e-3, rtol=0)
    standardize.eval()
    shifted = standardize((base + 0.02)[None])
    torch.testing.assert_close(shifted, torch.full((1, 4), 2.0), atol=0.6, rtol=0)
    assert set(dict(standardize.named_buffers())) == {"running_mean", "running_var", "num_updates"}


def test_head_layout():
    head = SubtypeHead(32)
    assert isinstance(head.standardize, RunningStandardize)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["LayerNorm", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert (head.mlp[2].in_features, head.mlp[2].out_features) == (32, 16)
    assert (head.mlp[5].in_features, head.mlp[5].out_features) == (16, N_SUBTYPES)
    assert head.mlp[1].p == head.mlp[4].p == 0.2


def test_classification_loss_reaches_the_encoder_only_through_shared_features():
    net = MultitaskResEncUNet(**tiny_kwargs(3))
    net(torch.randn(2, 1, 8, 32, 32))
    torch.nn.functional.cross_entropy(net.subtype_logits, torch.tensor([0, 2])).backward()
    assert net.encoder.stem.convs[0].conv.weight.grad.abs().sum() > 0
    decoder_only = [p for name, p in net.named_parameters() if name.startswith(("decoder.stages", "decoder.seg_layers", "decoder.transpconvs"))]
    assert decoder_only and all(p.grad is None for p in decoder_only)


def test_torch_compile_keeps_both_outputs():
    net = MultitaskResEncUNet(**tiny_kwargs(3)).eval()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        expected_seg = net(x)
        expected_logits = net.subtype_logits.clone()
        net.subtype_logits = None
        seg = compiled(x)
    torch.testing.assert_close(seg, expected_seg)
    torch.testing.assert_close(net.subtype_logits, expected_logits)


def test_accumulator_weights_tiles_by_predicted_foreground():
    net = MultitaskResEncUNet(**tiny_kwargs(3)).eval()
    tiles = [torch.randn(1, 1, 8, 32, 32) for _ in range(3)]
    expected_sum, expected_weight = torch.zeros(N_SUBTYPES), 0.0
    with torch.no_grad():
        for tile in tiles:
            seg = net(tile)
            w = float(foreground_weight(seg)[0])
            expected_sum += w * torch.softmax(net.subtype_logits[0], 0)
            expected_weight += w
        with SubtypeAccumulator(net) as accumulator:
            for tile in tiles:
                net(tile)
    torch.testing.assert_close(accumulator.probabilities(), expected_sum / expected_weight)
    assert accumulator.probabilities().sum().item() == pytest.approx(1.0)


def test_accumulator_refuses_a_network_without_head():
    with pytest.raises(TypeError, match="no subtype head"):
        with SubtypeAccumulator(ResidualEncoderUNet(**tiny_kwargs(3))):
            pass


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d", "3d_tiny"])
def test_trainer_builds_the_committed_plans(configuration):
    plans = PlansManager(json.loads((PLANS_DIR / "nnUNetResEncUNetMPlans.json").read_text()))
    cm = plans.get_configuration(configuration)
    net = nnUNetTrainerMultitask.build_network_architecture(plans, cm, 1, 3, True)
    assert isinstance(net, MultitaskResEncUNet)
    bottleneck = cm.network_arch_init_kwargs["features_per_stage"][-1]
    assert net.subtype_head.mlp[2].in_features == bottleneck
    if configuration == "3d_tiny":
        net.eval()
        with torch.no_grad():
            out = net(torch.randn(1, 1, *cm.patch_size))
        assert out[0].shape == (1, 3, *cm.patch_size)
