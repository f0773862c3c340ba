"""ADFNet: layout and counts from spec §1/§7, the Table 4 variants stage by stage, padding to any size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import backbones
from backbones import pad_to_multiple
from backbones._padding import crop
from backbones.adfnet import ADFNet, stage_blocks
from dynfilter import CB, DCB, MCB, MDCB, MFI

STAGES = ("fe1", "fe2", "fe3", "bottleneck", "dfe3", "dfe2", "dfe1")
ENCODER, BOTTLENECK, DECODER = STAGES[:3], STAGES[3:4], STAGES[4:]
STATIC, DYNAMIC = (CB, MCB), (DCB, MDCB)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta_build(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return backbones.build(name, **kwargs)


# --- parameter counts -----------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + cout


def block_params(kind: str, c: int, m: int) -> int:
    """Spec §2–§5 formulas, written out independently of the modules."""
    sekg = conv(c, c, 3, groups=c) + 4
    dcn = 9 * c * c + c + conv(32, 216, 3)
    reduce = conv(c, m, 1) if c != m else 0
    shared = conv(c, 32, 3) + dcn + reduce + 3 * conv(m, m, 3) + conv(4 * m, c, 1)
    return {
        "CB": 3 * conv(c, c, 3),
        "DCB": 2 * conv(c, c, 3) + sekg + conv(c, 9 * c, 1),
        "MCB": shared + conv(c, c, 3),
        "MDCB": shared + sekg + conv(c, 9 * m, 1),
    }[kind]


def adfnet_params_by_hand(in_ch, widths, parts) -> int:
    n1, n2, n3, n4 = widths
    mids = (n1, n2, n3 // 2, n4 // 2)
    total = conv(in_ch, n1, 3) + conv(n1, in_ch, 3)
    total += sum(conv(widths[i], widths[i + 1], 3) for i in range(3))  # down
    total += sum(widths[i + 1] * widths[i] * 36 + widths[i] for i in range(3))  # ConvT k6
    for part, levels in (("encoder", (0, 1, 2)), ("bottleneck", (3,)), ("decoder", (0, 1, 2))):
        for lv in levels:
            total += sum(block_params(kind, widths[lv], mids[lv]) for kind in parts[part])
    return total


DEFAULT_PARTS = {"encoder": ("CB", "MCB"), "bottleneck": ("CB", "MCB"), "decoder": ("DCB", "MDCB")}


@pytest.mark.parametrize(
    "name, kwargs, published",
    [("adfnet", {}, 8_628_579), ("adfnet", {"in_channels": 1}, 8_627_425), ("adfnet_l", {}, 32_765_667)],
)
def test_published_parameter_counts(name, kwargs, published):
    model = meta_build(name, **kwargs)
    assert n_params(model) == published
    assert published == adfnet_params_by_hand(model.in_channels, model.widths, DEFAULT_PARTS)


def test_thop_style_count_omits_the_dcn_main_weights():
    # Spec §7: the paper's 7.65M is the full count minus every DCN's own weight and bias.
    model = meta_build("adfnet")
    dcn_main = sum(m.weight.numel() + m.bias.numel() for n, m in model.named_modules() if n.endswith(".dcn"))
    assert dcn_main == 977_600 and n_params(model) - dcn_main == 7_650_979


def test_stage_widths_follow_spec_table():
    for name, expected in (("adfnet", (32, 64, 64, 128)), ("adfnet_l", (64, 128, 128, 256))):
        model = meta_build(name)
        mids = [model.get_submodule(s)[1].mid_channels for s in ("fe1", "fe2", "fe3", "bottleneck")]
        assert tuple(mids) == expected
        assert [model.get_submodule(s)[1].mid_channels for s in ("dfe1", "dfe2", "dfe3")] == list(expected[:3])
        assert all(model.get_submodule(s)[1].offset_channels == 32 for s in STAGES)
        assert all(model.get_submodule(s)[1].deform_groups == 8 for s in STAGES)


def test_top_level_layout():
    model = meta_build("adfnet")
    assert [n for n, _ in model.named_children()] == [
        "head", "fe1", "down1", "fe2", "down2", "fe3", "down3", "bottleneck",
        "up3", "dfe3", "up2", "dfe2", "up1", "dfe1", "tail",
    ]  # fmt: skip
    for i, (cin, cout) in enumerate([(32, 64), (64, 128), (128, 256)], start=1):
        d = model.get_submodule(f"down{i}")
        assert isinstance(d[0], nn.Conv2d) and (d[0].in_channels, d[0].out_channels) == (cin, cout)
        assert d[0].stride == (2, 2) and d[0].kernel_size == (3, 3) and d[0].padding == (1, 1)
        assert isinstance(d[1], nn.LeakyReLU) and d[1].negative_slope == 0.2
        u = model.get_submodule(f"up{i}")
        assert isinstance(u, nn.ConvTranspose2d) and (u.in_channels, u.out_channels) == (cout, cin)
        assert u.kernel_size == (6, 6) and u.stride == (2, 2) and u.padding == (2, 2)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.PReLU)) for m in model.modules())


# --- Table 4 variants -----------------------------------------------------------------------------------

# Expected (single-scale, multi-scale) classes per part, written out per variant.
VARIANTS = {
    "adfnet": (STATIC, STATIC, DYNAMIC),
    "adfnet_wo_dcb": (STATIC, STATIC, (CB, MDCB)),
    "adfnet_wo_mdcb": (STATIC, STATIC, (DCB, MCB)),
    "adfnet_wo_dcb_mdcb": (STATIC, STATIC, STATIC),
    "adfnet_wo_mfi": (STATIC, STATIC, DYNAMIC),
    "adfnet_dyn_encoder": (DYNAMIC, STATIC, STATIC),
    "adfnet_dyn_all": (DYNAMIC, DYNAMIC, DYNAMIC),
}


def stage_types(model: nn.Module) -> dict[str, tuple[type, type]]:
    types = {}
    for s in STAGES:
        stage = model.get_submodule(s)
        assert isinstance(stage, nn.Sequential) and len(stage) == 2
        types[s] = (type(stage[0]), type(stage[1]))
    return types


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_blocks_per_stage(name):
    enc, bott, dec = VARIANTS[name]
    expected = {**{s: enc for s in ENCODER}, **{s: bott for s in BOTTLENECK}, **{s: dec for s in DECODER}}
    model = meta_build(name)
    assert stage_types(model) == expected
    mfi = [type(model.get_submodule(s)[1].mfi) for s in STAGES]
    assert mfi == [nn.Identity if name == "adfnet_wo_mfi" else MFI] * len(STAGES)


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"adfnet"}))
def test_variants_differ_from_default_only_in_stage_blocks(name):
    default, variant = meta_build("adfnet"), meta_build(name)
    changed = {s for s, t in stage_types(variant).items() if t != stage_types(default)[s]}
    enc, bott, dec = VARIANTS[name]
    expected = {s for s in ENCODER if enc != STATIC} | {s for s in BOTTLENECK if bott != STATIC}
    expected |= {s for s in DECODER if dec != DYNAMIC}
    assert changed == expected
    # Everything outside the stages is the same, name for name and shape for shape.
    outside = lambda m: {k: v.shape for k, v in m.state_dict().items() if k.split(".")[0] not in STAGES}  # noqa: E731
    assert outside(variant) == outside(default)
    parts = {p: tuple(c.__name__ for c in v) for p, v in zip(("encoder", "bottleneck", "decoder"), VARIANTS[name])}
    assert n_params(variant) == adfnet_params_by_hand(3, (32, 64, 128, 256), parts)


def test_wo_dcb_count_by_hand():
    # CB(C) − DCB(C) = −(18C + 4) per decoder stage.
    assert n_params(meta_build("adfnet_wo_dcb")) == 8_628_579 - sum(18 * c + 4 for c in (32, 64, 128))


def test_constructor_arguments_match_registered_variants():
    by_args = ADFNet(encoder="dynamic", decoder=("cb", "mcb"), widths=(8, 8, 8, 8))
    by_name = backbones.build("adfnet_dyn_encoder", widths=(8, 8, 8, 8))
    assert stage_types(by_args) == stage_types(by_name)
    assert ADFNet(decoder=(CB, "MDCB"), widths=(8, 8, 8, 8)).block_names["decoder"] == ("CB", "MDCB")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("dynamc", "expected 'static', 'dynamic'"),
        (("mcb", "cb"), r"decoder\[0\]: expected one of \['cb', 'dcb'\]"),
        (("cb",), "pair"),
        (("cb", 3), r"decoder\[1\]"),
    ],
)
def test_bad_stage_spec(spec, match):
    with pytest.raises(ValueError, match=match):
        stage_blocks(spec, "decoder")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"widths": (32, 64, 128)}, "widths must give 4"),
        ({"widths": 32}, "widths must give 4"),
        ({"mid_channels": (8, 8, 0, 8)}, r"mid_channels\[2\] must be a positive int"),
        ({"use_mfi": "no"}, "use_mfi must be True or False"),
        ({"in_channels": 0}, "in_channels must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ADFNet(**kwargs)


# --- any image size -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow() -> ADFNet:
    torch.manual_seed(1)
    return ADFNet(widths=(8, 8, 16, 16)).eval()


def test_odd_size_is_reflect_padded_bottom_right_and_cropped(narrow):
    x = torch.rand(1, 3, 37, 53)
    expected = narrow.forward_aligned(F.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :37, :53]  # 40×56
    torch.testing.assert_close(narrow(x), expected, rtol=0, atol=0)


def test_aligned_size_is_not_padded(narrow):
    x = torch.rand(2, 3, 16, 24)
    torch.testing.assert_close(narrow(x), narrow.forward_aligned(x), rtol=0, atol=0)


def test_tiny_sides_fall_back_to_replicate(narrow):
    x = torch.rand(1, 3, 3, 2)
    expected = narrow.forward_aligned(F.pad(x, (0, 6, 0, 5), mode="replicate"))[..., :3, :2]
    torch.testing.assert_close(narrow(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (5, 700), (700, 5)])
def test_tiny_and_thin_images_keep_their_size(narrow, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = narrow(x)
        cropped = narrow.forward_aligned(pad_to_multiple(x, 8))[..., : size[0], : size[1]]
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, cropped, rtol=1e-5, atol=1e-6)  # conv algorithms differ by padded size


def test_pad_to_multiple_by_index():
    x = torch.arange(5 * 2, dtype=torch.float32).view(1, 1, 5, 2)
    rows = torch.tensor([0, 1, 2, 3, 4, 3, 2, 1])  # 5 → 8 by reflection
    cols = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1])  # 2 → 8 cannot reflect 6: replicate
    torch.testing.assert_close(pad_to_multiple(x, 8), x[:, :, rows][:, :, :, cols], rtol=0, atol=0)
    assert pad_to_multiple(x, 1) is x


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5, 700), (9, 9), (16, 24), (17, 23), (37, 53)])
def test_traced_padding_and_crop_match_the_eager_ones(monkeypatch, size):
    # Under torch.export (ONNX export) padding and crop gather instead of branching on the size.
    x = torch.rand(2, 3, *size)
    eager = pad_to_multiple(x, 8)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    traced = pad_to_multiple(x, 8)
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)
    torch.testing.assert_close(crop(traced, *size), x, rtol=0, atol=0)


def test_full_model_on_odd_crop_and_global_residual():
    model = backbones.build("adfnet").eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        out = model(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        nn.init.zeros_(model.tail.weight)
        nn.init.zeros_(model.tail.bias)
        torch.testing.assert_close(model(x), x, rtol=0, atol=0, msg="a zero tail must return the input")


def test_grey_model_runs():
    model = ADFNet(in_channels=1, widths=(8, 8, 8, 8))
    assert model(torch.rand(2, 1, 9, 11)).shape == (2, 1, 9, 11)


@pytest.mark.parametrize(
    "shape, match",
    [((1, 1, 16, 16), "expects 3 input channels, got 1"), ((3, 16, 16), "4-D"), ((1, 3, 0, 8), "at least 1×1")],
)
def test_bad_inputs(narrow, shape, match):
    with pytest.raises(ValueError, match=match):
        narrow(torch.rand(shape))


def test_forward_aligned_refuses_unaligned(narrow):
    with pytest.raises(ValueError, match=r"divisible by 8, got \(37, 53\)"):
        narrow.forward_aligned(torch.rand(1, 3, 37, 53))


def test_offset_convs_get_no_gradient_at_init():
    # The DCN offset/mask conv starts at zero (spec §5), which blocks the gradient to the offset feature.
    model = ADFNet(widths=(8, 8, 8, 8))
    model(torch.rand(1, 3, 16, 16)).square().mean().backward()
    for s in STAGES:
        block = model.get_submodule(s)[1]
        assert block.offset.weight.grad.abs().max() == 0
        assert block.dcn.conv_offset_mask.weight.grad.abs().max() > 0


def test_block_names_and_use_mfi_follow_surgery():
    from dynfilter import surgery

    model = ADFNet(widths=(8, 8, 8, 8))
    assert model.block_names["decoder"] == ("DCB", "MDCB") and model.use_mfi
    swapped = surgery.recipes.adfnet_ablation(model, "wo_dcb").apply()
    assert swapped.block_names["decoder"] == ("CB", "MDCB")
    one_stage = surgery.plan(model, select=surgery.select.by_name("dfe1.0"), replace=surgery.replace.swap_block("static")).apply()
    assert one_stage.block_names["decoder"] == {"dfe3": ("DCB", "MDCB"), "dfe2": ("DCB", "MDCB"), "dfe1": ("CB", "MDCB")}
    assert not surgery.recipes.adfnet_ablation(model, "wo_mfi").apply().use_mfi
