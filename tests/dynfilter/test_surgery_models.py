"""Surgery on models we did not write (torchvision, timm) and on our backbones: the recipes, the CLI and the
tutorial in docs/surgery.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import backbones
from dynfilter import MDCB, MFI, DConv, surgery
from dynfilter.surgery import recipes
from dynfilter.surgery import replace as R
from dynfilter.surgery import select as S
from experiments.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "surgery.md"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def untouched_identical(old: nn.Module, new: nn.Module, replaced: list[str]) -> int:
    """Assert every state-dict entry outside ``replaced`` is bit-identical; return how many were compared."""
    old_sd, new_sd = old.state_dict(), new.state_dict()
    keys = [k for k in old_sd if not any(k.startswith(r + ".") for r in replaced)]
    for k in keys:
        torch.testing.assert_close(new_sd[k], old_sd[k], rtol=0, atol=0, msg=f"{k} changed")
    return len(keys)


def train_step_reaches(model: nn.Module, x: torch.Tensor, new_names: list[str]) -> None:
    model.train()
    model.zero_grad()
    out = model(x)
    out.float().square().mean().backward()
    for name in new_names:
        grads = [p.grad for p in model.get_submodule(name).parameters()]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


# --- torchvision and timm ------------------------------------------------------------------------------


def test_torchvision_resnet18_layer1():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    p = surgery.plan(model, S.by_type(nn.Conv2d) & S.by_name("layer1.*"), R.to_dconv())
    # layer1 of ResNet-18: 2 BasicBlocks × 2 convs, all 64→64 3×3 stride 1.
    assert p.names == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    new = p.apply()
    assert all(isinstance(new.get_submodule(n), DConv) for n in p.names)
    # Conv 64→64 3×3 without bias: 36,864 → DConv(64): 644 + 36,864 + 576.
    assert p.params_after - p.params_before == 4 * (644 + 36_864 + 576 - 36_864)
    assert untouched_identical(model, new, p.names) == len(model.state_dict()) - 4
    train_step_reaches(new, torch.randn(2, 3, 32, 32), p.names)

    # layer2 opens with a stride-2 64→128 block: strict refuses and says why, non-strict skips.
    with pytest.raises(ValueError, match=r"layer2.0.conv1 \(Conv2d\): in_channels 64 ≠ out_channels 128; stride"):
        surgery.plan(model, S.by_type(nn.Conv2d) & S.by_name("layer2.*"), R.to_dconv())
    q = surgery.plan(model, S.by_type(nn.Conv2d) & S.by_name("layer2.*"), R.to_dconv(), strict=False)
    assert q.names == ["layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]
    assert [e.name for e in q.skipped] == ["layer2.0.conv1", "layer2.0.downsample.0"]


def test_timm_resnet_family():
    timm = pytest.importorskip("timm")
    # zero_init_last=False: timm zeroes each block's last BN by default, which would stop every gradient
    # into the block's convs at step 0.
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5, zero_init_last=False)
    p = surgery.plan(model, S.by_type(nn.Conv2d) & S.by_name("layer1.*"), R.to_dconv())
    assert p.names == ["layer1.0.conv1", "layer1.0.conv2"]
    new = p.apply()
    untouched_identical(model, new, p.names)
    train_step_reaches(new, torch.randn(2, 3, 32, 32), p.names)

    # conv → conv + DConv works on any conv, strided stem included, and keeps the conv's weights.
    stem = surgery.plan(model, "conv1.0", R.conv_then_dconv()).apply()
    torch.testing.assert_close(stem.conv1[0].conv.weight, model.conv1[0].weight, rtol=0, atol=0)
    assert stem.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_timm_mobilenetv3_family():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval()
    p = surgery.plan(model, nn.Conv2d, R.to_dconv(), strict=False)
    # The only 3×3 stride-1 C→C conv is a depthwise one; DConv is depthwise too.
    assert p.names == ["blocks.1.1.conv_dw"]
    conv = model.get_submodule("blocks.1.1.conv_dw")
    assert conv.groups == conv.in_channels == conv.out_channels
    new = p.apply()
    assert new.training is False and new.get_submodule(p.names[0]).training is False
    untouched_identical(model, new, p.names)
    train_step_reaches(new, torch.randn(2, 3, 32, 32), p.names)


def test_timm_convnext_family_kernel7():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=5)
    # ConvNeXt's depthwise convs are 7×7: to_dconv(kernel_size=7) takes them; the 3×3 default takes none.
    assert len(surgery.plan(model, nn.Conv2d, R.to_dconv(), strict=False)) == 0
    p = surgery.plan(model, S.by_type(nn.Conv2d) & S.by_name("stages.0.*"), R.to_dconv(kernel_size=7), strict=False)
    assert p.names == ["stages.0.blocks.0.conv_dw", "stages.0.blocks.1.conv_dw"]
    new = p.apply()
    assert new.get_submodule(p.names[0]).kernel_size == 7
    assert new(torch.randn(1, 3, 32, 32)).shape == (1, 5)


# --- recipes on our backbones --------------------------------------------------------------------------


@pytest.mark.parametrize("depth, expected", [(5, "body.5"), (6, "body.5"), (17, "body.23")])
def test_dncnn_dconv_recipe(depth, expected):
    # DnCNN body: conv, ReLU, then (conv, BN, ReLU) × (depth − 2), conv; inner conv i sits at body[2 + 3i].
    # depth 5 → 3 inner convs, middle i = 1; depth 6 → 4 inner, lower middle i = 1; depth 17 → i = 7.
    model = backbones.build("dncnn", depth=depth, channels=16)
    p = recipes.dncnn_dconv(model)
    assert p.names == [expected]
    assert len(p.skipped) == depth - 1  # first, last, and the other inner convs
    new = p.apply()
    assert isinstance(new.body[int(expected.split(".")[1])], DConv)
    untouched_identical(model, new, p.names)
    if depth == 5:
        train_step_reaches(new, torch.rand(2, 3, 12, 12), p.names)


def test_rdn_mdcb_recipe():
    model = backbones.build("rdn", num_blocks=3, channels=32, layers_per_block=2)
    p = recipes.rdn_mdcb(model)
    assert p.names == ["blocks.1"]
    new = p.apply()
    assert [type(m) for m in new.blocks[1]] == [MDCB, MDCB, MDCB]
    # Spec §7: MDCB(32, 32) has 122,620 parameters.
    assert p.entries[0].params_after == 3 * 122_620
    untouched_identical(model, new, p.names)
    train_step_reaches(new, torch.rand(1, 3, 12, 12), ["blocks.1"])
    # A width the DCN groups do not divide is refused with the reason.
    with pytest.raises(ValueError, match="channels 12 not divisible by deform_groups 8"):
        recipes.rdn_mdcb(backbones.build("rdn", num_blocks=3, channels=12, layers_per_block=1))


# Recipe variant → the backbones' registered name of the same configuration.
VARIANTS = {
    "decoder": "adfnet",
    "wo_dcb": "adfnet_wo_dcb",
    "wo_mdcb": "adfnet_wo_mdcb",
    "wo_dcb_mdcb": "adfnet_wo_dcb_mdcb",
    "wo_mfi": "adfnet_wo_mfi",
    "encoder": "adfnet_dyn_encoder",
    "all": "adfnet_dyn_all",
}
SMALL = dict(widths=(8, 8, 16, 16))


def structure(model: nn.Module) -> dict[str, tuple]:
    """Type of every module and shape of every state-dict entry."""
    return {
        "types": {n: type(m).__name__ for n, m in model.named_modules()},
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_adfnet_ablation_matches_registered_variant(variant):
    model = backbones.build("adfnet", **SMALL)
    new = recipes.adfnet_ablation(model, variant).apply()
    assert structure(new) == structure(backbones.build(VARIANTS[variant], **SMALL))


def test_adfnet_ablation_from_any_configuration_and_carry():
    start = backbones.build("adfnet_wo_dcb", **SMALL)
    p = recipes.adfnet_ablation(start, "encoder")
    # wo_dcb → encoder: encoder CB+MCB → DCB+MDCB (6), decoder CB stays, MDCB → MCB (3).
    assert sorted(p.names) == sorted(
        [f"fe{i}.{j}" for i in (1, 2, 3) for j in (0, 1)] + [f"dfe{i}.1" for i in (1, 2, 3)]
    )
    new = p.apply()
    assert structure(new) == structure(backbones.build("adfnet_dyn_encoder", **SMALL))
    torch.testing.assert_close(new.fe2[0].conv2.weight, start.fe2[0].conv3.weight, rtol=0, atol=0)
    torch.testing.assert_close(new.dfe1[1].dcn.weight, start.dfe1[1].dcn.weight, rtol=0, atol=0)
    untouched_identical(start, new, p.names)
    train_step_reaches(new, torch.rand(1, 3, 8, 8), p.names)  # DCB, MDCB and MCB all get gradients

    published = backbones.build("adfnet", **SMALL)
    assert len(recipes.adfnet_ablation(published, "decoder")) == 0
    assert len(recipes.adfnet_ablation(published, "dyn_all")) == 8  # alias; bottleneck included
    back = recipes.adfnet_ablation(recipes.adfnet_ablation(published, "wo_mfi").apply(), "decoder").apply()
    assert all(isinstance(getattr(back, s)[1].mfi, MFI) for s in ("fe1", "bottleneck", "dfe1"))
    with pytest.raises(ValueError, match="unknown ADFNet variant 'wo_sekg'; known variants: all, decoder"):
        recipes.adfnet_ablation(published, "wo_sekg")
    with pytest.raises(ValueError, match="ADFNet-like model"):
        recipes.adfnet_ablation(backbones.build("dncnn", depth=3, channels=8), "wo_dcb")


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_plan_and_apply(tmp_path, capsys):
    assert main(["surgery", "plan", "dncnn", "--recipe", "dncnn_dconv", "--kwargs", "depth=5,channels=16"]) == 0
    out = capsys.readouterr().out
    assert "body.5  Conv2d → DConv" in out and "Surgery plan for DnCNN" in out

    dest = tmp_path / "wo_dcb.pt"
    args = ["adfnet", "--recipe", "adfnet_ablation", "--recipe-kwargs", "variant=wo_dcb"]
    args += ["--kwargs", "widths=(8,8,8,8)"]
    assert main(["surgery", "apply", *args, "--out", str(dest)]) == 0
    assert "dfe1.0  DCB → CB" in capsys.readouterr().out
    # The file loads strictly into the same model rewritten by the same recipe.
    again = recipes.adfnet_ablation(backbones.build("adfnet", widths=(8, 8, 8, 8)), "wo_dcb").apply()
    again.load_state_dict(torch.load(dest, weights_only=True))

    # --weights: the carried weights come from the loaded checkpoint.
    source = backbones.build("adfnet", widths=(8, 8, 8, 8))
    torch.save(source.state_dict(), tmp_path / "src.pt")
    assert main(["surgery", "apply", *args, "--weights", str(tmp_path / "src.pt"), "--out", str(dest)]) == 0
    saved = torch.load(dest, weights_only=True)
    torch.testing.assert_close(saved["dfe1.0.conv3.weight"], source.dfe1[0].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(saved["head.weight"], source.head.weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "dncnn", "--recipe", "nope"], "unknown recipe 'nope'; known recipes: adfnet_ablation"),
        (["plan", "adfnet", "--recipe", "adfnet_ablation"], "missing a required argument: 'variant'"),
        (["plan", "dncnn", "--recipe", "rdn_mdcb", "--kwargs", "depth=3"], "matched nothing in DnCNN"),
        (["plan", "dncnn", "--recipe", "dncnn_dconv", "--weights", "/nonexistent.pt"], "no such file"),
    ],
)
def test_cli_errors(argv, message, capsys):
    assert main(["surgery", *argv]) == 2
    assert message in capsys.readouterr().err


# --- the tutorial runs top to bottom -------------------------------------------------------------------


def test_docs_tutorial_runs(capsys):
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOCS.name}[python block {i}]", "exec"), namespace)
    # The plan table shown in the tutorial is the one its code prints.
    shown = re.findall(r"```text\n(.*?)```", text, flags=re.S)[0]
    assert str(namespace["plan"]) == shown.strip()
    assert shown.strip() in capsys.readouterr().out
