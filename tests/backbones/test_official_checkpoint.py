"""Loading published ADFNet checkpoints: a state dict built here in the published key layout (spec §10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.adfnet import ADFNet, convert_official_state_dict, load_official_state_dict


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _dcn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c, c, 3, 3), f"{prefix}.bias": (c,), **_conv(f"{prefix}.conv_offset_mask", 216, 32, 3)}


def _sekg(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.conv_sa.weight": (c, 1, 3, 3),
        f"{prefix}.conv_sa.bias": (c,),
        f"{prefix}.conv_ca.weight": (1, 1, 3),
        f"{prefix}.conv_ca.bias": (1,),
    }


def _published_fe(p: str, c: int, m: int) -> dict[str, tuple]:
    """FE: `RB` (RGB/Real) = `CB` (Gray) at fe.0, `CB` (RGB/Real) = `MCB` (Gray) at fe.1."""
    keys = {k: v for i in (1, 2, 3) for k, v in _conv(f"{p}.fe.0.conv{i}", c, c, 3).items()}
    keys |= {**_dcn(f"{p}.fe.1.dcn.0", c), **_conv(f"{p}.fe.1.dcn.2", c, c, 3)}
    keys |= _conv(f"{p}.fe.1.offset.offset_conv1", 32, c, 3)
    if c != m:
        keys |= _conv(f"{p}.fe.1.conv", m, c, 1)
    for i in (1, 2, 3):
        keys |= _conv(f"{p}.fe.1.conv{i}", m, m, 3)
    return keys | _conv(f"{p}.fe.1.fusion", c, 4 * m, 1)


def _published_dfe(p: str, c: int, m: int) -> dict[str, tuple]:
    """DFE: `DRB` (RGB/Real) = `DCB` (Gray) at fe.0, `DB` (RGB/Real) = `MDCB` (Gray) at fe.1."""
    keys = {**_conv(f"{p}.fe.0.conv1", c, c, 3), **_sekg(f"{p}.fe.0.dyconv.afg.sekg", c)}
    keys |= {**_conv(f"{p}.fe.0.dyconv.afg.conv", 9 * c, c, 1), **_conv(f"{p}.fe.0.conv2", c, c, 3)}
    keys |= _conv(f"{p}.fe.1.offset.offset_conv1", 32, c, 3)
    keys |= {**_dcn(f"{p}.fe.1.generate_kernel.0", c), **_sekg(f"{p}.fe.1.generate_kernel.2", c)}
    keys |= _conv(f"{p}.fe.1.generate_kernel.3", 9 * m, c, 1)
    if c != m:
        keys |= _conv(f"{p}.fe.1.conv", m, c, 1)
    for d in (1, 3, 5):
        keys |= _conv(f"{p}.fe.1.branch_{d}.fuse", m, m, 3)
    return keys | _conv(f"{p}.fe.1.fusion", c, 4 * m, 1)


def published_state_dict(in_ch: int = 3, widths=(32, 64, 128, 256)) -> dict[str, torch.Tensor]:
    n1, n2, n3, n4 = widths
    mids = (n1, n2, n3 // 2, n4 // 2)
    shapes = _conv("head", n1, in_ch, 3)
    for s, (c, m) in enumerate(zip(widths[:3], mids[:3]), start=1):
        shapes |= _published_fe(f"fe{s}", c, m) | _conv(f"down{s}", widths[s], c, 3)
    shapes |= _published_fe("cfe", n4, mids[3])
    for s in (3, 2, 1):
        c = widths[s - 1]
        shapes |= {f"up{s}.weight": (widths[s], c, 6, 6), f"up{s}.bias": (c,)}
        shapes |= _published_dfe(f"dfe{s}", c, mids[s - 1])
    shapes |= _conv("tail", in_ch, n1, 3)
    return {k: torch.randn(shape) for k, shape in shapes.items()}


# Published key -> our key, one per renaming rule.
CORRESPONDENCES = {
    "head.weight": "head.weight",
    "down2.bias": "down2.0.bias",
    "up3.weight": "up3.weight",
    "fe1.fe.0.conv3.weight": "fe1.0.conv3.weight",
    "cfe.fe.0.conv2.bias": "bottleneck.0.conv2.bias",
    "fe2.fe.1.offset.offset_conv1.weight": "fe2.1.offset.weight",
    "fe2.fe.1.dcn.0.weight": "fe2.1.dcn.weight",
    "fe3.fe.1.dcn.0.conv_offset_mask.bias": "fe3.1.dcn.conv_offset_mask.bias",
    "fe2.fe.1.dcn.2.weight": "fe2.1.post.weight",
    "cfe.fe.1.conv.weight": "bottleneck.1.reduce.weight",
    "fe1.fe.1.conv1.weight": "fe1.1.branches.0.weight",
    "fe1.fe.1.conv2.weight": "fe1.1.branches.1.weight",
    "fe1.fe.1.conv3.bias": "fe1.1.branches.2.bias",
    "fe3.fe.1.fusion.weight": "fe3.1.fuse.weight",
    "dfe1.fe.0.dyconv.afg.sekg.conv_sa.weight": "dfe1.0.dconv.sekg.spatial.weight",
    "dfe1.fe.0.dyconv.afg.sekg.conv_ca.weight": "dfe1.0.dconv.sekg.channel.weight",
    "dfe2.fe.0.dyconv.afg.conv.bias": "dfe2.0.dconv.kernel_conv.bias",
    "dfe3.fe.0.conv2.weight": "dfe3.0.conv2.weight",
    "dfe3.fe.1.offset.offset_conv1.bias": "dfe3.1.offset.bias",
    "dfe3.fe.1.generate_kernel.0.weight": "dfe3.1.dcn.weight",
    "dfe1.fe.1.generate_kernel.0.conv_offset_mask.weight": "dfe1.1.dcn.conv_offset_mask.weight",
    "dfe2.fe.1.generate_kernel.2.conv_sa.bias": "dfe2.1.sekg.spatial.bias",
    "dfe2.fe.1.generate_kernel.2.conv_ca.weight": "dfe2.1.sekg.channel.weight",
    "dfe3.fe.1.generate_kernel.3.weight": "dfe3.1.kernel_conv.weight",
    "dfe3.fe.1.conv.bias": "dfe3.1.reduce.bias",
    "dfe1.fe.1.branch_1.fuse.weight": "dfe1.1.branches.0.weight",
    "dfe1.fe.1.branch_3.fuse.weight": "dfe1.1.branches.1.weight",
    "dfe1.fe.1.branch_5.fuse.bias": "dfe1.1.branches.2.bias",
    "dfe2.fe.1.fusion.weight": "dfe2.1.fuse.weight",
    "tail.bias": "tail.bias",
}


@pytest.fixture(scope="module")
def published() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return published_state_dict()


def assert_loaded(model: nn.Module, published: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    for old, new in CORRESPONDENCES.items():
        assert torch.equal(ours[new], published[old]), f"{old} did not land in {new}"


def test_every_published_key_loads_into_its_place(published):
    model = backbones.build("adfnet")
    assert len(published) == len(model.state_dict())
    assert load_official_state_dict(model, published) == ([], [], [])
    assert_loaded(model, published)
    # The published MCB conv1/2/3 have dilations 1/3/5; they must land on branches of the same dilation.
    assert [b.dilation for b in model.fe1[1].branches] == [(1, 1), (3, 3), (5, 5)]
    converted = convert_official_state_dict(published)
    assert sorted(converted) == sorted(model.state_dict())
    assert sorted(map(id, converted.values())) == sorted(map(id, published.values()))  # renamed, not copied


def test_wide_and_grey_layouts_load():
    for name, in_ch, widths in (("adfnet", 1, (32, 64, 128, 256)), ("adfnet_l", 3, (64, 128, 256, 512))):
        with torch.device("meta"):
            model = backbones.build(name, in_channels=in_ch)
        sd = {k: torch.empty(v.shape, device="meta") for k, v in published_state_dict(in_ch, widths).items()}
        assert sorted(convert_official_state_dict(sd)) == sorted(model.state_dict())


def test_real_checkpoint_wrapper_and_dataparallel_prefix(published):
    model = backbones.build("adfnet")
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in published.items()}, "optimizer": {}}
    assert load_official_state_dict(model, wrapped) == ([], [], [])
    assert_loaded(model, published)


def test_strict_names_every_missing_and_unexpected_key(published):
    broken = dict(published)
    del broken["dfe2.fe.1.branch_3.fuse.weight"]
    broken["fe1.fe.1.offset.offset_conv2.weight"] = torch.zeros(32, 32, 3, 3)  # a development-version key
    model = backbones.build("adfnet")
    match = r"missing \(1\): dfe2\.1\.branches\.1\.weight.*unexpected \(1\): fe1\.fe\.1\.offset\.offset_conv2\.weight"
    with pytest.raises(ValueError, match=match):
        load_official_state_dict(model, broken)
    report = load_official_state_dict(model, broken, strict=False)
    assert report.missing == ["dfe2.1.branches.1.weight"]
    assert report.unexpected == ["fe1.fe.1.offset.offset_conv2.weight"]
    assert torch.equal(model.state_dict()["dfe3.1.kernel_conv.weight"], published["dfe3.fe.1.generate_kernel.3.weight"])


def test_shape_mismatch_is_named_not_crashed(published):
    grey = backbones.build("adfnet", in_channels=1)
    match = r"shape mismatch \(3\): head\.weight -> head\.weight: \(32, 3, 3, 3\) vs \(32, 1, 3, 3\)"
    with pytest.raises(ValueError, match=match):
        load_official_state_dict(grey, published)
    report = load_official_state_dict(grey, published, strict=False)
    assert report.missing == [] and report.unexpected == []
    assert [m.split(" ")[0] for m in report.mismatched] == ["head.weight", "tail.weight", "tail.bias"]
    assert torch.equal(grey.state_dict()["fe1.0.conv1.weight"], published["fe1.fe.0.conv1.weight"])


def test_ablation_model_reports_the_blocks_it_lacks(published):
    model = backbones.build("adfnet_wo_dcb")
    report = load_official_state_dict(model, published, strict=False)
    assert sorted(report.missing) == sorted(f"dfe{s}.0.conv3.{p}" for s in (1, 2, 3) for p in ("weight", "bias"))
    assert len(report.unexpected) == 3 * 6 and all(".fe.0.dyconv." in k for k in report.unexpected)


@pytest.mark.parametrize(
    "model, sd, match",
    [
        (nn.Conv2d(1, 1, 1), {}, "loads into an ADFNet, got Conv2d"),
        (None, [("head.weight", 1)], "expected a state dict"),
        (None, {"head.weight": 1.0}, r"must be tensors; these are not: \['head.weight'\]"),
    ],
)
def test_bad_arguments(model, sd, match):
    with pytest.raises(ValueError, match=match):
        load_official_state_dict(model if model is not None else ADFNet(widths=(8, 8, 8, 8)), sd)
