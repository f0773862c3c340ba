"""Surgery core on small hand-made models: plan changes nothing, selectors, strictness, replacements,
carried weights, untouched weights bit-identical, device/dtype/training flag, gradients, sharing, wrappers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dynfilter import CB, DCB, MCB, MDCB, MFI, DConv, surgery
from dynfilter.surgery import replace as R
from dynfilter.surgery import select as S


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# By hand: Conv2d(C, C, 3) = 9C² + C; DConv(C) = SEKG (10C + 4) + conv1×1 C→9C (9C² + 9C).
def conv3_params(c: int) -> int:
    return 9 * c * c + c


def dconv_params(c: int) -> int:
    return 10 * c + 4 + 9 * c * c + 9 * c


class Net(nn.Module):
    """conv 3→8, then four 8→8 convs (one stride 2, one 5×5), BN, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.Conv2d(8, 8, 5, padding=2),
            nn.Conv2d(8, 8, 3, padding=1),
        )
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


ELIGIBLE = ["body.0", "body.2", "body.6"]  # 3×3, stride 1, 8→8


def same_state(a: dict, b: dict, keys) -> None:
    for k in keys:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} changed")


# --- plan then apply -----------------------------------------------------------------------------------


def test_plan_changes_nothing_and_apply_copies():
    net = Net()
    before = copy.deepcopy(net.state_dict())
    modules = dict(net.named_modules())
    p = surgery.plan(net, nn.Conv2d, R.to_dconv(), strict=False)
    assert p.names == ELIGIBLE
    assert dict(net.named_modules()) == modules
    same_state(net.state_dict(), before, before)

    new = p.apply()
    assert new is not net and type(net.body[0]) is nn.Conv2d
    assert [type(new.body[i]).__name__ for i in (0, 2, 6)] == ["DConv"] * 3
    # Untouched modules keep their parameters and buffers bit for bit.
    untouched = [k for k in before if not any(k.startswith(n + ".") for n in ELIGIBLE)]
    assert len(untouched) == len(before) - 2 * len(ELIGIBLE)
    same_state(new.state_dict(), before, untouched)
    assert new(torch.randn(2, 3, 9, 7)).shape == (2, 2, 5, 4)


def test_apply_inplace_and_module_function():
    net = Net()
    p = surgery.plan(net, "body.6", R.to_dconv())
    same = surgery.apply(net, p, inplace=True)
    assert same is net and isinstance(net.body[6], DConv)
    with pytest.raises(ValueError, match="expects Conv2d at 'body.6', this model has DConv"):
        p.apply()


def test_printed_table_counts_by_hand():
    net = Net()
    p = surgery.plan(net, nn.Conv2d, R.to_dconv(), strict=False)
    text = str(p)
    row = next(line for line in text.splitlines() if line.strip().startswith("body.2 "))
    assert "Conv2d → DConv" in row
    assert f"{conv3_params(8):,} → {dconv_params(8):,}" in row  # 584 → 732
    assert p.params_before == n_params(net)
    assert p.params_after == n_params(p.apply()) == n_params(net) + 3 * (dconv_params(8) - conv3_params(8))
    assert f"total parameters: {n_params(net):,} → {p.params_after:,}" in text
    # The skipped ones are listed with their reasons.
    assert "stem: in_channels 3 ≠ out_channels 8" in text
    assert "body.4: stride (2, 2) ≠ 1" in text
    assert "body.5: kernel 5×5 ≠ 3×3" in text
    assert p.rows()[0] == {
        "name": "body.0",
        "aliases": [],
        "old": "Conv2d",
        "new": "DConv",
        "params_before": 584,
        "params_after": 732,
        "carried": {},
        "replacement": "to_dconv(kernel_size=3, dilation=1)",
        "reason": None,
        "keeps_output": False,
        "output_note": "the conv is dropped and the DConv starts at random; conv_then_dconv() would keep the conv",
    }


def test_root_level_match_is_returned():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    p = surgery.plan(conv, nn.Conv2d, R.conv_then_dconv())
    assert p.names == [""]
    assert "(root)" in str(p)
    new = p.apply()
    assert isinstance(new, nn.Sequential) and isinstance(new.dconv, DConv)
    x = torch.randn(1, 4, 6, 5)
    torch.testing.assert_close(new(x), new.dconv(F.conv2d(x, conv.weight, conv.bias, padding=1)))


def test_apply_to_another_model_carries_that_models_weights():
    a, b = Net(), Net()
    p = surgery.plan(a, "body.4", R.conv_then_dconv())
    new = surgery.apply(b, p)
    torch.testing.assert_close(new.body[4].conv.weight, b.body[4].weight, rtol=0, atol=0)
    # The new DConv comes from the plan.
    torch.testing.assert_close(new.body[4].dconv.kernel_conv.weight, p.entries[0].new.dconv.kernel_conv.weight)
    with pytest.raises(ValueError, match="no submodule 'body.4'"):
        surgery.apply(nn.Sequential(), p)


# --- selectors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "select, position, exclude, expected",
    [
        (nn.Conv2d, "middle", None, ["body.2"]),
        (nn.Conv2d, "first", None, ["body.0"]),
        (nn.Conv2d, "last", None, ["body.6"]),
        (nn.Conv2d, -1, None, ["body.6"]),
        (nn.Conv2d, slice(1, None), None, ["body.2", "body.6"]),
        (nn.Conv2d, [2, 0], None, ["body.0", "body.6"]),
        (nn.Conv2d, None, "body.2", ["body.0", "body.6"]),
        (S.by_type(nn.Conv2d) & S.by_name("body.[02]"), None, None, ["body.0", "body.2"]),
        (S.by_regex(r"body\.[26]") | S.by_name("stem"), None, None, ["body.2", "body.6"]),  # stem is ineligible
        (S.where(lambda n, m: isinstance(m, nn.Conv2d) and n.endswith("6")), None, None, ["body.6"]),
        (S.by_type("Conv2d") & ~S.by_name("body.0"), "first", None, ["body.2"]),
        ("body.*" & S.by_type(nn.Conv2d), None, None, ["body.0", "body.2", "body.6"]),
        ((nn.BatchNorm2d, nn.Conv2d) | S.by_name("nothing"), "last", None, ["body.6"]),
        (S.by_type("torch.nn.modules.conv.Conv2d"), None, S.by_name("body.6"), ["body.0", "body.2"]),
    ],
)
def test_selectors_compose(select, position, exclude, expected):
    p = surgery.plan(Net(), select, R.to_dconv(), position=position, exclude=exclude, strict=False)
    assert p.names == expected


@pytest.mark.parametrize("n, expected", [(1, 0), (2, 0), (3, 1), (4, 1), (15, 7), (16, 7)])
def test_middle_is_lower_median(n, expected):
    names = [f"m{i}" for i in range(n)]
    assert S.pick(names, "middle") == [f"m{expected}"]


def test_position_errors():
    with pytest.raises(ValueError, match="out of range: there are 3 eligible matches"):
        surgery.plan(Net(), nn.Conv2d, R.to_dconv(), position=3)
    with pytest.raises(ValueError, match="position must be"):
        surgery.plan(Net(), nn.Conv2d, R.to_dconv(), position="centre", strict=False)
    # No eligible match at all: the reasons are in the message.
    with pytest.raises(ValueError, match=r"0 eligible matches \[\].*stem: in_channels 3 ≠ out_channels 8"):
        surgery.plan(Net(), "stem", R.to_dconv(), position="middle")


def test_strict_no_match_lists_candidates():
    expected = r"matched nothing in Net; the candidates were: \(root\) \(Net\), stem \(Conv2d\)"
    with pytest.raises(ValueError, match=expected):
        surgery.plan(Net(), nn.Linear, R.to_dconv())
    p = surgery.plan(Net(), nn.Linear, R.to_dconv(), strict=False)
    assert len(p) == 0 and "matched nothing" in str(p)


def test_strict_ineligible_raises_with_reasons():
    expected = r"4 match\(es\).*stem \(Conv2d\): in_channels 3 ≠ out_channels 8; body.4 .*; head"
    with pytest.raises(ValueError, match=expected):
        surgery.plan(Net(), nn.Conv2d, R.to_dconv())


@pytest.mark.parametrize(
    "conv, reason",
    [
        (nn.Conv2d(8, 8, 3, padding=1), None),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), None),
        (nn.Conv2d(8, 8, 3, padding="same"), None),
        (nn.Conv2d(8, 4, 3, padding=1), "in_channels 8 ≠ out_channels 4"),
        (nn.Conv2d(8, 8, 3, stride=(1, 2), padding=1), "stride (1, 2) ≠ 1"),
        (nn.Conv2d(8, 8, (3, 1), padding=1), "kernel 3×1 ≠ 3×3"),
        (nn.Conv2d(8, 8, 3, padding=2, dilation=2), "dilation (2, 2) ≠ 1"),
        (nn.Conv2d(8, 8, 3), "padding (0, 0) does not keep the size"),
        (nn.Linear(8, 8), "not a Conv2d (Linear)"),
    ],
)
def test_to_dconv_eligibility(conv, reason):
    got = R.to_dconv().reason("x", conv)
    assert got == reason if reason is None else reason in got


def test_nested_matches_outermost_wins():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(2, 2, 1)), nn.ReLU())
    p = surgery.plan(net, S.by_name("0*"), R.to_identity())
    assert p.names == ["0"]
    assert [(e.name, e.reason) for e in p.skipped] == [("0.0", "inside '0', which is also selected")]


# --- replacements --------------------------------------------------------------------------------------


def test_conv_then_dconv_keeps_weights_any_conv():
    for conv in (nn.Conv2d(3, 8, 3, stride=2), nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)):
        net = nn.Sequential(conv)
        p = surgery.plan(net, "0", R.conv_then_dconv())
        assert p.entries[0].carried == {"conv.weight": "weight", "conv.bias": "bias"}
        assert "conv.*←*" in str(p)
        new = p.apply()
        same_state(new[0].conv.state_dict(), conv.state_dict(), ["weight", "bias"])
        x = torch.randn(1, conv.in_channels, 8, 8)
        torch.testing.assert_close(new(x), new[0].dconv(conv(x)))


def test_to_mdcb_stack():
    block = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 16, 1))
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), block)
    p = surgery.plan(net, "1", R.to_mdcb_stack(n=3, mid_channels=8, offset_channels=16))
    new = p.apply()[1]
    assert [type(m) for m in new] == [MDCB] * 3
    assert all((m.channels, m.mid_channels, m.offset_channels) == (16, 8, 16) for m in new)
    assert p.entries[0].params_after == 3 * n_params(MDCB(16, 8, offset_channels=16))
    reasons = {
        "cannot tell": R.to_mdcb_stack().reason("x", nn.ReLU()),
        "maps 3 → 16": R.to_mdcb_stack().reason("x", nn.Conv2d(3, 16, 1)),
        "not divisible by deform_groups 8": R.to_mdcb_stack().reason("x", nn.Conv2d(12, 12, 1)),
    }
    for expected, got in reasons.items():
        assert expected in got
    assert R.to_mdcb_stack(channels=16).reason("x", nn.ReLU()) is None


def test_swap_dcb_cb_carries_input_and_output_convs():
    dcb = DCB(8)
    net = nn.Sequential(dcb)
    p = surgery.plan(net, DCB, R.swap_block("static"))
    assert p.entries[0].carried == {
        "conv1.weight": "conv1.weight",
        "conv1.bias": "conv1.bias",
        "conv3.weight": "conv2.weight",
        "conv3.bias": "conv2.bias",
    }
    assert "conv1.*, conv3.*←conv2.*" in str(p)
    cb = p.apply()[0]
    assert type(cb) is CB and cb.channels == 8
    for new, old in p.entries[0].carried.items():
        torch.testing.assert_close(cb.state_dict()[new], dcb.state_dict()[old], rtol=0, atol=0)
    back = surgery.plan(nn.Sequential(cb), CB, R.swap_block("dynamic")).apply()[0]
    assert type(back) is DCB
    torch.testing.assert_close(back.conv2.weight, dcb.conv2.weight, rtol=0, atol=0)


@pytest.mark.parametrize("use_mfi", [True, False])
def test_swap_mdcb_mcb_keeps_config_and_carries(use_mfi):
    old = MDCB(16, 8, offset_channels=16, deform_groups=4, dilations=(1, 2), use_mfi=use_mfi)
    p = surgery.plan(nn.Sequential(old), MDCB, R.swap_block("static"))
    new = p.apply()[0]
    assert type(new) is MCB
    assert (new.channels, new.mid_channels, new.offset_channels, new.deform_groups, new.dilations) == (
        16, 8, 16, 4, (1, 2),
    )
    assert isinstance(new.mfi, MFI) is use_mfi
    carried = p.entries[0].carried
    assert sorted({k.split(".")[0] for k in carried}) == ["dcn", "fuse", "offset"]
    assert len(carried) == 8  # offset w/b, dcn w/b, dcn.conv_offset_mask w/b, fuse w/b
    for k, v in carried.items():
        torch.testing.assert_close(new.state_dict()[k], old.state_dict()[v], rtol=0, atol=0)
    assert "offset.*, dcn.*, fuse.*" in str(p)


def test_swap_block_param_counts_match_spec():
    # Spec §7: DCB(32) 28,324, CB(32) 27,744, MDCB(32, 32) 122,620, MCB(32, 32) 122,040.
    net = nn.Sequential(DCB(32), MDCB(32, 32))
    p = surgery.plan(net, (DCB, MDCB), R.swap_block("static"))
    assert [(e.params_before, e.params_after) for e in p] == [(28_324, 27_744), (122_620, 122_040)]
    with pytest.raises(ValueError, match="must be one of"):
        R.swap_block("off")
    assert R.swap_block("dynamic").reason("x", DCB(8)) == "not a CB or MCB (DCB)"


def test_factory_carry_decline_and_errors():
    net = Net()
    p = surgery.plan(net, "head", lambda name, m: nn.Sequential(nn.ReLU(), m))
    assert p.entries[0].carried == {"1.weight": "weight", "1.bias": "bias"}
    # The factory got a private copy: the model's own head is untouched and not shared with the plan.
    assert p.entries[0].new[1] is not net.head
    assert p.entries[0].new[1].weight.data_ptr() != net.head.weight.data_ptr()

    def only_wide(name, m):
        if m.out_channels < 8:
            raise ValueError("too narrow")
        return DConv(m.out_channels)

    q = surgery.plan(net, S.by_name("head", "body.6"), only_wide, strict=False)
    assert q.names == ["body.6"]
    assert [(e.name, e.reason) for e in q.skipped] == [("head", "declined: too narrow")]
    with pytest.raises(ValueError, match="'head' .* cannot take only_wide: declined: too narrow"):
        surgery.plan(net, "head", only_wide)
    with pytest.raises(ValueError, match="returned str"):
        surgery.plan(net, "head", lambda n, m: "nope")
    with pytest.raises(ValueError, match="wrap it"):
        surgery.plan(net, "head", nn.Identity())


# --- device, dtype, training flag, gradients -----------------------------------------------------------


def cpu_and_cuda():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_device_dtype_and_training_flag(device, dtype):
    net = Net().to(device, dtype).eval()
    net.body.train()  # the replaced modules' own flag is what counts
    net.body[6].eval()
    new = surgery.plan(net, S.by_name("body.2", "body.6"), R.conv_then_dconv()).apply()
    for i, training in ((2, True), (6, False)):
        block = new.body[i]
        assert all(t.device.type == device and t.dtype == dtype for t in block.parameters())
        assert all(m.training is training for m in block.modules())
    assert new.stem.training is False
    x = torch.randn(1, 3, 8, 8, device=device, dtype=dtype)
    assert new(x).dtype == dtype


def test_new_modules_train():
    net = Net()
    p = surgery.plan(net, nn.Conv2d, R.to_dconv(), position="middle", strict=False)
    new = p.apply()
    new_params = dict(new.body[2].named_parameters())
    start = {k: v.detach().clone() for k, v in new_params.items()}
    opt = torch.optim.SGD(new.parameters(), lr=0.1)
    loss = new(torch.randn(2, 3, 8, 8)).square().mean()
    loss.backward()
    for k, v in new_params.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    opt.step()
    assert all(not torch.equal(start[k], v) for k, v in new_params.items())


# --- sharing and wrappers ------------------------------------------------------------------------------


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.Sequential(conv, nn.ReLU())
        self.b = nn.Sequential(nn.ReLU(), conv)

    def forward(self, x):
        return self.b(self.a(x))


def test_shared_module_is_replaced_once_under_every_name():
    net = Shared()
    p = surgery.plan(net, "b.1", R.to_dconv())  # selected under one of its names
    assert p.names == ["a.0"] and p.entries[0].aliases == ("b.1",)
    assert "a.0 (= b.1)" in str(p) and "shared with b.1" in str(p)
    new = p.apply()
    assert isinstance(new.a[0], DConv) and new.a[0] is new.b[1]
    assert n_params(new) == dconv_params(4)  # counted once
    with pytest.raises(ValueError, match="'a.0' is shared with 'b.1'"):
        surgery.plan(net, nn.Conv2d, R.to_dconv(), shared="error")


def test_wrapped_models_are_unwrapped():
    net = Net()
    for wrapped, note in ((nn.DataParallel(net), "DataParallel"), (torch.compile(net), "torch.compile")):
        p = surgery.plan(wrapped, nn.Conv2d, R.to_dconv(), position="last", strict=False)
        assert p.names == ["body.6"] and p.model is net
        assert any(note in n for n in p.notes)
        new = surgery.apply(wrapped, p)
        assert type(new) is Net and isinstance(new.body[6], DConv)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_is_refused():
    with pytest.raises(ValueError, match="TorchScript"):
        surgery.plan(torch.jit.script(nn.Conv2d(2, 2, 1)), nn.Conv2d, R.to_identity())


def test_plans_add_only_when_disjoint():
    net = Net()
    a = surgery.plan(net, "body.0", R.to_dconv())
    b = surgery.plan(net, "body.2", R.to_dconv())
    assert (a + b).names == ["body.0", "body.2"]
    with pytest.raises(ValueError, match="plans overlap"):
        a + surgery.plan(net, "body", R.to_identity())
    with pytest.raises(ValueError, match="same model instance"):
        a + surgery.plan(Net(), "body.2", R.to_dconv())


def test_a_failed_inplace_apply_leaves_the_model_as_it_was():
    planned = nn.Sequential(*(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)))
    p = surgery.plan(planned, nn.Conv2d, R.to_dconv())
    other = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Identity())
    before = [type(m) for m in other]
    with pytest.raises(ValueError, match="the plan expects Conv2d at '2', this model has Identity"):
        surgery.apply(other, p, inplace=True)
    assert [type(m) for m in other] == before, "the first swaps must not have happened"
