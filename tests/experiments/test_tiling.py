"""Tiled inference: the window blends to the whole-image result where the model's reach allows it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import backbones
from experiments.cli import main
from experiments.protocol import TestProtocol, denoise
from experiments.tiling import denoise_tiled, tile_starts, tile_window


@pytest.mark.parametrize("overlap", [0, 1, 7, 16, 23])
def test_weights_sum_to_one_so_the_identity_comes_back(overlap):
    x = torch.rand(2, 3, 61, 50)
    torch.testing.assert_close(denoise_tiled(nn.Identity(), x, 24, overlap), x, rtol=0, atol=1e-5)


def test_windows_of_neighbours_add_up_to_one_across_the_overlap():
    tile, overlap = 32, 16
    a = tile_window(tile, overlap, first=True, last=False, dtype=torch.float64)
    b = tile_window(tile, overlap, first=False, last=True, dtype=torch.float64)
    step = tile - overlap
    torch.testing.assert_close(a[step:] + b[:overlap], torch.ones(overlap, dtype=torch.float64), rtol=0, atol=1e-12)
    assert a[-overlap // 4:].eq(0).all() and b[: overlap // 4].eq(0).all(), "no weight next to an inner edge"


def test_tiles_cover_the_image_and_end_at_the_border():
    for size in (24, 25, 61, 100):
        starts = tile_starts(size, 24, 8)
        assert starts[0] == 0 and starts[-1] + 24 == max(size, 24)
        assert all(b - a <= 16 for a, b in zip(starts, starts[1:])), "neighbours overlap by at least 8"


@torch.no_grad()
def test_dncnn_with_enough_overlap_gives_the_whole_image_result():
    model = backbones.build("dncnn", depth=5, channels=8).eval()  # sees 5 pixels around each output
    x = torch.rand(1, 3, 67, 53)
    whole = denoise(model, x)
    torch.testing.assert_close(denoise_tiled(model, x, 32, 20), whole, rtol=0, atol=1e-5,
                               msg="overlap // 4 = 5 >= the receptive radius 5")
    short = denoise_tiled(model, x, 32, 8)
    assert (short - whole).abs().max() > 1e-4, "a short overlap is not exact, so the test above means something"


@torch.no_grad()
def test_adfnet_tiles_that_are_not_multiples_of_its_size_multiple():
    model = backbones.build("adfnet", widths=(8, 8, 8, 8)).eval()
    x = torch.rand(1, 3, 45, 37)
    out = denoise_tiled(model, x, 20, 8, multiple=8)
    assert out.shape == x.shape and torch.isfinite(out).all(), "20×20 tiles are padded to 24×24 and cropped back"


@pytest.mark.parametrize(
    "tile, overlap, multiple, match",
    [
        (4, 0, 8, r"tile 4 is smaller than the model's size multiple 8"),
        (16, 16, 1, r"tile overlap 16 must be smaller than the tile 16"),
        (16, -1, 1, r"tile overlap must be a non-negative int, got -1"),
        (0, 0, 1, r"tile must be a positive int, got 0"),
    ],
)
def test_bad_tilings(tile, overlap, multiple, match):
    with pytest.raises(ValueError, match=match):
        denoise_tiled(nn.Identity(), torch.rand(1, 3, 40, 40), tile, overlap, multiple)


def test_protocol_records_tiling_only_when_tiling():
    assert "tile" not in TestProtocol().fields()
    assert {k: TestProtocol(tile=64, tile_overlap=16).fields()[k] for k in ("tile", "tile_overlap")} == \
        {"tile": 64, "tile_overlap": 16}
    with pytest.raises(ValueError, match="tile overlap 64 must be smaller than the tile 64"):
        TestProtocol(tile=64, tile_overlap=64)


@pytest.fixture
def checkpoint(tmp_path):
    kwargs = {"depth": 3, "channels": 8}
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": backbones.build("dncnn", **kwargs).state_dict(), "model_name": "dncnn", "model_kwargs": kwargs}, path)
    return path


def test_cli_denoise_tiled_matches_whole(tmp_path, checkpoint):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 41, 3), dtype=np.uint8)).save(src)
    whole, tiled = tmp_path / "whole.png", tmp_path / "tiled.png"
    assert main(["denoise", str(src), str(whole), "--checkpoint", str(checkpoint)]) == 0
    assert main(["denoise", str(src), str(tiled), "--checkpoint", str(checkpoint), "--tile", "24", "--tile-overlap", "12"]) == 0
    diff = np.abs(np.asarray(Image.open(whole), dtype=int) - np.asarray(Image.open(tiled), dtype=int))
    assert diff.max() <= 1, "depth 3 sees 3 pixels; overlap 12 // 4 = 3: the same image up to 8-bit rounding"


def test_cli_denoise_refuses_a_tile_overlap_as_long_as_the_tile(tmp_path, checkpoint, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    argv = ["denoise", str(src), str(out), "--checkpoint", str(checkpoint), "--tile", "16", "--tile-overlap", "16"]
    assert main(argv) == 2
    assert "tile overlap 16 must be smaller than the tile 16" in capsys.readouterr().err
    assert not out.exists()
