"""``--weights FILE`` is ``--checkpoint``'s alias on ``denoise`` and ``eval``, for a bare or published state dict."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import backbones
from experiments.cli import main


def _state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save(backbones.build("dncnn", depth=3, channels=8).state_dict(), path)
    return path


def test_denoise_weights_is_checkpoint(tmp_path):
    weights = _state_dict(tmp_path)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    model = ["--model", "dncnn", "--kwargs", "depth=3,channels=8"]
    assert main(["denoise", str(image), str(tmp_path / "a.png"), "--weights", str(weights), *model]) == 0
    assert main(["denoise", str(image), str(tmp_path / "b.png"), "--checkpoint", str(weights), *model]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert a.shape == (20, 24, 3) and np.array_equal(a, b)


def test_eval_weights_is_checkpoint(tmp_path, capsys):
    weights = _state_dict(tmp_path)
    common = ["--model", "dncnn", "--kwargs", "depth=3,channels=8", "--sets", "builtin", "--limit", "1"]
    assert main(["eval", "--weights", str(weights), *common]) == 0
    first = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(weights), *common]) == 0
    assert "PSNR" in first and first == capsys.readouterr().out


def test_a_state_dict_without_a_model_name_says_what_to_give(tmp_path):
    weights = _state_dict(tmp_path)
    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["denoise", str(image), str(tmp_path / "o.png"), "--weights", str(weights)]) == 2
