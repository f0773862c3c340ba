"""Self-ensemble: the average over the 8 flips and rotations commutes with them."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import backbones
from experiments.cli import main
from experiments.ensemble import SYMMETRIES, _apply, _undo, self_ensemble
from experiments.protocol import TestProtocol, denoise


def test_the_eight_symmetries_are_distinct():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    seen = {tuple(_apply(x, t, f).flatten().tolist()) + tuple(_apply(x, t, f).shape) for t, f in SYMMETRIES}
    assert len(seen) == 8
    for t, f in SYMMETRIES:
        torch.testing.assert_close(_undo(_apply(x, t, f), t, f), x, rtol=0, atol=0)


@torch.no_grad()
def test_the_ensemble_commutes_with_every_symmetry():
    model = backbones.build("dncnn", depth=3, channels=8).eval()
    run = functools.partial(denoise, model)
    x = torch.rand(1, 3, 13, 17)
    out = self_ensemble(run, x)
    plain = run(x)
    assert (out - plain).abs().max() > 1e-4, "a random DnCNN is not symmetric, so averaging changes it"
    for turns in (1, 2, 3):
        rotated = self_ensemble(run, torch.rot90(x, turns, dims=(-2, -1)))
        torch.testing.assert_close(rotated, torch.rot90(out, turns, dims=(-2, -1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(self_ensemble(run, x.flip(-1)), out.flip(-1), rtol=0, atol=1e-6)


def test_protocol_records_self_ensemble_only_when_on():
    assert "self_ensemble" not in TestProtocol().fields()
    assert TestProtocol(self_ensemble=True).fields()["self_ensemble"] is True
    with pytest.raises(ValueError, match="self_ensemble must be True or False, got 'yes'"):
        TestProtocol(self_ensemble="yes")


def test_cli_denoise_with_self_ensemble_and_tiles(tmp_path):
    kwargs = {"depth": 3, "channels": 8}
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": backbones.build("dncnn", **kwargs).state_dict(), "model_name": "dncnn", "model_kwargs": kwargs},
               checkpoint)
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(src)
    outs = {}
    for name, extra in (("plain", []), ("ensemble", ["--self-ensemble"]),
                        ("both", ["--self-ensemble", "--tile", "24", "--tile-overlap", "12"])):
        outs[name] = tmp_path / f"{name}.png"
        assert main(["denoise", str(src), str(outs[name]), "--checkpoint", str(checkpoint), *extra]) == 0
    read = {k: np.asarray(Image.open(v), dtype=int) for k, v in outs.items()}
    assert np.abs(read["ensemble"] - read["plain"]).max() > 0
    assert np.abs(read["both"] - read["ensemble"]).max() <= 1, "tiles with enough overlap change nothing"
