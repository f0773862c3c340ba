"""ONNX export: onnxruntime matches PyTorch for every block family and model, at several sizes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import dynfilter  # noqa: E402
from dynfilter.export import OPSET, export_onnx, onnx_parity, untranslated_ops  # noqa: E402
from dynfilter.functional import modulated_deform_conv2d  # noqa: E402
from dynfilter.surgery import recipes  # noqa: E402

TOL = 1e-4  # max abs difference, float32
SIZES = [(1, 17, 23), (2, 32, 32)]  # (batch, height, width): odd and even, batch other than the example's


def _randomise_offsets(model: nn.Module, std: float = 0.05) -> nn.Module:
    # The offset/mask convs start at zero (all offsets 0); give them weights that move taps by pixels.
    for m in model.modules():
        if isinstance(m, dynfilter.ModulatedDeformConv2d):
            nn.init.normal_(m.conv_offset_mask.weight, std=std)
            nn.init.normal_(m.conv_offset_mask.bias, std=1.0)
    return model


def _check_parity(model: nn.Module, channels: int, sizes=SIZES, **export_kwargs) -> None:
    program = export_onnx(model, torch.randn(1, channels, 16, 20), optimize=False, **export_kwargs)
    for batch, h, w in sizes:
        diff = onnx_parity(program, model, torch.randn(batch, channels, h, w))
        assert diff <= TOL, f"{type(model).__name__} at {batch}×{channels}×{h}×{w}: max abs diff {diff:.3g} > {TOL}"


BLOCKS = {
    "SEKG": lambda: dynfilter.SEKG(8),
    "DConv": lambda: dynfilter.DConv(8),
    "DConv-k5-d2": lambda: dynfilter.DConv(8, kernel_size=5, dilation=2),
    "DCB": lambda: dynfilter.DCB(8),
    "CB": lambda: dynfilter.CB(8),
    "MDCB": lambda: dynfilter.MDCB(16, 8),
    "MCB": lambda: dynfilter.MCB(16, 8),
    "MFI": lambda: dynfilter.MFI(),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_parity(name):
    block = _randomise_offsets(BLOCKS[name]())
    channels = 16 if name in ("MDCB", "MCB") else 8
    _check_parity(block, channels)


@pytest.mark.parametrize("name", ["DConv-k5-d2", "MDCB"])
def test_fused_block_parity(name):
    # The fused op's translation (a 1×1 Conv, then the filters); small inputs would run unfused under "auto".
    block = _randomise_offsets(BLOCKS[name]()).eval()
    dynfilter.set_dynamic_filter_impl(block, "fused")
    channels = 16 if name == "MDCB" else 8
    with torch.no_grad():
        traced = torch.export.export(block, (torch.randn(1, channels, 16, 20),))
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert torch.ops.dynfilter.fused_dynamic_filter.default in targets and untranslated_ops(traced) == []
    _check_parity(block, channels)


class _Deform(nn.Module):
    """A strided, dilated, grouped deformable conv with offsets and mask predicted from its input."""

    def __init__(self, masked: bool, bias: bool) -> None:
        super().__init__()
        self.offset = nn.Conv2d(8, 2 * 2 * 9, 3, stride=2, padding=1)  # 2 deformable groups
        self.mask = nn.Conv2d(8, 2 * 9, 3, stride=2, padding=1) if masked else None
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3) / 6)  # 2 convolution groups
        self.bias = nn.Parameter(torch.randn(6)) if bias else None
        nn.init.normal_(self.offset.weight, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid(self.mask(x)) if self.mask is not None else None
        return modulated_deform_conv2d(x, self.offset(x), self.weight, self.bias, stride=2, padding=2, dilation=2, mask=mask)


@pytest.mark.parametrize("masked, bias", [(True, True), (False, False)])
def test_deform_conv_parity_strided_dilated_grouped(masked, bias):
    model = _Deform(masked, bias)
    with torch.no_grad():
        moved = model.offset(torch.randn(1, 8, 17, 23)).abs().mean()
    assert moved > 0.5, "the offsets move taps by a fraction of a pixel or more"
    _check_parity(model, 8, min_size=3)  # a stride-2 output of side 1 would be traced as a constant


def test_optimised_export_saves_a_file_with_dynamic_sizes(tmp_path):
    model = dynfilter.DCB(8)
    path = tmp_path / "dcb.onnx"
    export_onnx(model, torch.randn(1, 8, 12, 12), path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [OPSET]
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True], "batch, height and width are symbolic"
    assert onnx_parity(path, model, torch.randn(3, 8, 9, 31)) <= TOL


def test_export_leaves_the_model_as_it_was():
    model = dynfilter.DConv(8).train()
    model.sekg.eval()
    x = torch.randn(2, 8, 10, 10)
    before = model(x)
    export_onnx(model, x, optimize=False)
    assert model.training and not model.sekg.training, "training flags are restored"
    assert model.impl == "auto"
    torch.testing.assert_close(model(x), before, rtol=0, atol=0, msg="the PyTorch path is unchanged")


def test_dncnn_dconv_recipe_parity():
    backbones = pytest.importorskip("backbones")
    model = recipes.dncnn_dconv(backbones.build("dncnn", depth=5, channels=16), init="published").apply()
    _check_parity(model.eval(), 3)


def test_rdn_mdcb_recipe_parity():
    backbones = pytest.importorskip("backbones")
    base = backbones.build("rdn", num_blocks=2, channels=16, layers_per_block=2)
    model = _randomise_offsets(recipes.rdn_mdcb(base, n=1).apply())
    _check_parity(model, 3)


def test_adfnet_parity_on_sizes_that_need_padding():
    backbones = pytest.importorskip("backbones")
    model = _randomise_offsets(backbones.build("adfnet", widths=(8, 8, 16, 16)), std=0.02)
    # Traced from 9×9 (a bottleneck above 1×1), but the graph takes smaller sides too: 17×23 and 31×40
    # are reflect-padded, 3×2 is replicate-padded (too short to reflect) and 8×5 has a 1×1 bottleneck.
    _check_parity(model, 3, sizes=[(1, 9, 9), (1, 17, 23), (2, 31, 40), (1, 3, 2), (1, 8, 5)])


class _Calls(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.dynfilter.dynamic_filter_grad_input(x, x.repeat(1, 9, 1, 1), 3, 1)


def test_an_untranslated_op_is_named_with_its_module():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), _Calls())
    with pytest.raises(ValueError, match=r"no ONNX translation for dynfilter::dynamic_filter_grad_input called by module '1' \(_Calls\)"):
        export_onnx(model, torch.randn(1, 4, 8, 8))


def test_torchvision_deform_conv_is_refused_with_the_switch_to_use():
    block = dynfilter.set_impls(dynfilter.MDCB(16, 8), modulated_deform_conv2d="torchvision")
    with pytest.raises(ValueError, match=r"torchvision::deform_conv2d called by module 'dcn' \(ModulatedDeformConv2d\).*set_impls"):
        export_onnx(block, torch.randn(1, 16, 8, 8))


def test_untranslated_ops_is_empty_for_the_dynfilter_ops():
    program = torch.export.export(dynfilter.DConv(4).eval(), (torch.randn(2, 4, 6, 6),))
    assert untranslated_ops(program) == []


def test_example_below_min_size_and_bad_example():
    backbones = pytest.importorskip("backbones")
    with pytest.raises(ValueError, match=r"below min_size=9"):
        export_onnx(backbones.build("adfnet", widths=(8, 8, 8, 8)), torch.randn(1, 3, 8, 16))
    with pytest.raises(ValueError, match=r"one example tensor or a sequence of tensors, got \['str'\]"):
        export_onnx(dynfilter.MFI(), ["x"])


def test_cli_export_prints_parity_and_opset(tmp_path, capsys):
    cli = pytest.importorskip("experiments.cli")
    out = tmp_path / "dncnn_dconv.onnx"
    argv = ["export", "dncnn", "--kwargs", "depth=3,channels=8", "--recipe", "dncnn_dconv",
            "--out", str(out), "--check-size", "17x23", "--no-optimize"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"ONNX opset {OPSET}" in printed and "dynamic batch, height and width" in printed
    assert "on a random 1×3×17×23 image" in printed
    diff = float(printed.split("max |onnxruntime - PyTorch| = ")[1].split()[0])
    assert out.is_file() and diff <= TOL


def test_cli_export_of_a_checkpoint_with_static_sizes(tmp_path, capsys):
    cli = pytest.importorskip("experiments.cli")
    backbones = pytest.importorskip("backbones")
    kwargs = {"depth": 3, "channels": 8}
    checkpoint = tmp_path / "checkpoint.pt"
    state = backbones.build("dncnn", **kwargs).state_dict()
    torch.save({"model": state, "model_name": "dncnn", "model_kwargs": kwargs}, checkpoint)
    out = tmp_path / "dncnn.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--static", "--example-size", "20x12"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"dncnn from {checkpoint}" in printed and "static 1×3×20×12" in printed
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 20, 12]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["export", "dncnn", "--out", "x.pt"], r"--out must name a \.onnx file"),
        (["export", "--out", "x.onnx"], r"give MODEL \(a registered model name\) or --checkpoint PATH"),
    ],
)
def test_cli_export_errors(tmp_path, monkeypatch, capsys, argv, match):
    cli = pytest.importorskip("experiments.cli")
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not list(tmp_path.iterdir()), "nothing written"

