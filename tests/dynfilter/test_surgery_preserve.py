"""Surgery that keeps the model's output: identity-started DConvs, zero-ended inserted blocks, and the
swaps that cannot keep it (reported, or refused in strict mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backbones
from dynfilter import CB, DCB, MCB, MDCB, DConv, surgery
from dynfilter.surgery import recipes
from dynfilter.surgery import replace as R
from dynfilter.surgery import select as S


def _dncnn(depth=5, channels=16):
    torch.manual_seed(0)
    return backbones.build("dncnn", depth=depth, channels=channels)


def _input(c=3, h=19, w=14):
    return torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("train", [False, True])
def test_dncnn_keep_conv_then_identity_dconv_keeps_output_exactly(train):
    model = _dncnn().train(train)
    p = recipes.dncnn_dconv(model, keep_conv=True, preserve_output=True)
    assert p.names == recipes.dncnn_dconv(model).names == ["body.5"], "same conv as the paper's swap"
    assert p.keeps_output and p.entries[0].keeps_output and p.entries[0].output_note == ""
    new = p.apply()
    assert isinstance(new.body[5].dconv, DConv) and new.body[5].dconv.init == "identity"
    x = _input()
    # Bit for bit: the DConv's kernels are exactly the unit impulse, so it passes its input through.
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)


def test_timm_conv_then_dconv_keeps_output_exactly():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5, zero_init_last=False).eval()
    p = surgery.plan(model, S.by_type(nn.Conv2d) & "layer1.*", R.conv_then_dconv(), preserve_output=True)
    assert len(p) == 2 and p.keeps_output
    new = p.apply()
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)


# steps: after how many optimiser steps every parameter of the block has a gradient. One for a zeroed
# output layer; two when the DConv inside also starts as the identity (its kernel conv's weights are
# zero and only move at step 1, so SEKG's gradient appears at step 2), and for MDCB/MCB, whose DCN
# offset conv starts at zero as published, so the conv feeding it waits one step as in a fresh block.
@pytest.mark.parametrize(
    "block, kwargs, zeroed, steps",
    [("dcb", {}, "conv2", 1), ("dcb", {"init": "identity"}, "conv2", 2), ("cb", {}, "conv3", 1),
     ("mdcb", {"deform_groups": 4}, "fuse", 2), ("mcb", {"deform_groups": 4}, "fuse", 2), ("dconv", {}, None, 1)],
)
def test_inserted_block_starts_as_identity_and_learns(block, kwargs, zeroed, steps):
    model = _dncnn()
    p = surgery.plan(model, "body.5", R.insert_after(block, **kwargs), preserve_output=True)
    entry = p.entries[0]
    assert entry.keeps_output and entry.carried == {"module.weight": "weight", "module.bias": "bias"}
    new = p.apply()
    x = _input()
    torch.testing.assert_close(new(x), model(x), rtol=0, atol=0)

    inserted = new.body[5].block
    loss = (new(x) - x.flip(-1)).square().mean()
    loss.backward()
    if zeroed is None:  # an identity DConv: its kernel generator learns from step 0
        assert inserted.kernel_conv.weight.grad.abs().sum() > 0
    else:
        # The zeroed output layer gets a gradient at step 0; the layers before it only once it has moved.
        last = inserted.get_submodule(zeroed)
        assert all(p.grad.abs().sum() > 0 for p in last.parameters())
        before = [q for n, q in inserted.named_parameters() if not n.startswith(zeroed + ".")]
        assert all(q.grad is None or q.grad.abs().sum() == 0 for q in before)
    optimizer = torch.optim.SGD(new.parameters(), lr=0.1)
    for step in range(1, steps + 1):
        optimizer.step()
        new.zero_grad()
        (new(x) - x.flip(-1)).square().mean().backward()
        missing = [n for n, q in inserted.named_parameters() if q.grad is None or q.grad.abs().sum() == 0]
        assert bool(missing) == (step < steps), (step, missing)
    assert not torch.equal(new(x), model(x))


def test_inserted_block_without_preserve_changes_output_and_says_why():
    model = _dncnn()
    p = surgery.plan(model, "body.5", R.insert_after("dcb"))
    assert not p.keeps_output
    assert "the inserted DCB starts at random (preserve_output=True zeroes its conv2)" in p.entries[0].output_note
    x = _input()
    assert not torch.allclose(p.apply()(x), model(x))


def test_to_dconv_identity_is_the_network_without_that_conv():
    model = _dncnn()
    p = recipes.dncnn_dconv(model, init="identity")
    without = copy.deepcopy(model)
    without.body[5] = nn.Identity()
    x = _input()
    torch.testing.assert_close(p.apply()(x), without(x), rtol=0, atol=0)
    # A swap never keeps the output: it says so, with and without the identity start.
    assert not p.keeps_output and "starts as the identity (as if the conv were removed)" in p.entries[0].output_note
    assert "starts at random" in recipes.dncnn_dconv(model, init="published").entries[0].output_note


def test_dncnn_dconv_recipe_starts_the_dconv_as_the_identity_by_default():
    model = _dncnn()
    default = recipes.dncnn_dconv(model).apply()
    assert default.body[5].init == "identity"
    assert recipes.dncnn_dconv(model, init="published").apply().body[5].init == "published"
    # The identity start is the network without that conv, bit for bit (as the explicit form above).
    without = copy.deepcopy(model)
    without.body[5] = nn.Identity()
    x = _input()
    torch.testing.assert_close(default(x), without(x), rtol=0, atol=0)


def test_preserve_output_on_a_swap_raises_or_skips():
    model = _dncnn()
    with pytest.raises(ValueError, match=r"preserve_output=True, but to_dconv\(.*\) cannot keep the output at 'body.2'"
                                         r".*conv_then_dconv\(\) would keep the conv"):
        surgery.plan(model, nn.Conv2d, R.to_dconv(), position="middle", preserve_output=True)
    with pytest.raises(ValueError, match="preserve_output=True needs keep_conv=True"):
        recipes.dncnn_dconv(model, preserve_output=True)
    with pytest.raises(ValueError, match="cannot keep the output .* the twin's middle"):
        surgery.plan(backbones.build("adfnet", widths=(8, 8, 16, 16)), DCB, R.swap_block("static"), preserve_output=True)
    lenient = surgery.plan(model, nn.Conv2d, R.to_dconv(), preserve_output=True, strict=False)
    assert len(lenient) == 0
    reasons = {e.name: e.reason for e in lenient.skipped}
    assert reasons["body.5"].startswith("cannot keep the output: the conv is dropped")
    assert reasons["body.0"] == "in_channels 3 ≠ out_channels 16"


def test_plan_table_shows_output_column_and_notes():
    model = _dncnn()
    kept = str(surgery.plan(model, "body.5", R.conv_then_dconv(), preserve_output=True))
    assert "conv_then_dconv(init='identity')" in kept and ", keeping the output" in kept
    header, row = kept.splitlines()[2:4]
    assert header.split()[-1] == "output" and row.split()[0] == "body.5" and row.split()[-1] == "kept"
    assert "output changed" not in kept
    changed = str(surgery.plan(model, "body.5", R.to_dconv()))
    assert changed.splitlines()[3].split()[-1] == "changed"
    assert "output changed at body.5: the conv is dropped and the DConv starts at random" in changed


def test_identity_dconv_insert_needs_identity_init():
    model = _dncnn()
    with pytest.raises(ValueError, match="needs the inserted DConv to start as the identity, but init='published'"):
        surgery.plan(model, "body.5", R.conv_then_dconv(init="published"), preserve_output=True)
    # Asked for explicitly, an identity DConv keeps the output even without preserve_output.
    assert surgery.plan(model, "body.5", R.conv_then_dconv(init="identity")).keeps_output


class _Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.inner = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.proj(torch.relu(self.inner(x)))


def test_custom_block_needs_zero_and_is_checked():
    model = _dncnn()
    ok = surgery.plan(model, "body.5", R.insert_after(_Residual, zero="proj"), preserve_output=True)
    x = _input()
    torch.testing.assert_close(ok.apply()(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="zeroing 'inner' does not make _Residual the identity"):
        surgery.plan(model, "body.5", R.insert_after(_Residual, zero="inner"), preserve_output=True)
    with pytest.raises(ValueError, match="_Residual is not a known residual block; pass zero="):
        surgery.plan(model, "body.5", R.insert_after(_Residual), preserve_output=True)


def test_insert_after_errors_and_channels():
    with pytest.raises(ValueError, match="unknown block 'dbc'; known blocks: dconv, dcb, cb, mdcb, mcb"):
        R.insert_after("dbc")
    r = R.insert_after("mdcb")
    assert r.reason("x", nn.Conv2d(3, 12, 3)) == "channels 12 not divisible by deform_groups 8"
    assert r.reason("x", nn.ReLU()).startswith("cannot tell the output channels of ReLU")
    assert R.insert_after("dcb").reason("x", MDCB(16, offset_channels=8, deform_groups=4)) is None
    new = R.insert_after("cb", channels=6).build("x", nn.ReLU())
    assert isinstance(new.block, CB) and new.block.channels == 6
    assert isinstance(R.insert_after("mcb", deform_groups=2).build("x", nn.Conv2d(3, 4, 1)).block, MCB)


def test_cli_keep_conv_preserve_output(capsys):
    from experiments.cli import main

    args = ["surgery", "plan", "dncnn", "--recipe", "dncnn_dconv", "--kwargs", "depth=5,channels=8"]
    assert main([*args, "--recipe-kwargs", "keep_conv=true,preserve_output=true"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("body.5"))
    assert "Conv2d → Sequential(Conv2d, DConv)" in row and row.split()[-1] == "kept"
    assert main([*args, "--recipe-kwargs", "preserve_output=true"]) == 2
    assert "preserve_output=True needs keep_conv=True" in capsys.readouterr().err
