"""``dynfilter inspect``: its table holds what the library measures on the same noisy image, and its figures exist."""

from __future__ import annotations

import re

import pytest
import torch

from dynfilter.inspect import capture
from experiments.checkpoint import build_model, model_from_checkpoint, save_checkpoint
from experiments.cli import main
from experiments.data import BuiltinImages, to_tensor
from experiments.noise import GaussianNoise

_ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| ([\d×]+) \| ([\d.]+) → ([\d.]+) \| (×[\d.e+-]+|n/a) / (×[\d.e+-]+|n/a) \|$")


@pytest.fixture
def checkpoint(tmp_path):
    spec = {"model_name": "dncnn", "model_kwargs": {"depth": 3, "channels": 4}, "recipe": "dncnn_dconv",
            "recipe_kwargs": {"init": "published"}}
    model = build_model(spec["model_name"], spec["model_kwargs"], spec["recipe"], spec["recipe_kwargs"], seed=0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "iteration": 0, **spec})
    return path


def _table(text: str, image: str) -> dict[str, tuple]:
    section = text.split(f"## {image}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            gains = [float("nan") if g == "n/a" else float(g[1:]) for g in (m[6], m[7])]
            rows[m[1]] = (m[2], m[3], float(m[4]), float(m[5]), *gains)
    return rows


def test_the_table_holds_the_library_numbers_for_the_same_noisy_crop(checkpoint, tmp_path):
    out = tmp_path / "inspect"
    assert main(["inspect", "--checkpoint", str(checkpoint), "--image", "builtin:astronaut", "--crop", "40",
                 "--modules", "body.2", "body.?.sekg", "body.0", "--out", str(out)]) == 0
    rows = _table((out / "summary.md").read_text(), "astronaut")
    # The same image by other means: the builtin photograph's central 40×40 crop, sigma-50 noise with seed 0.
    clean = to_tensor(BuiltinImages("test").read(0)[236:276, 236:276])
    noisy = GaussianNoise(50)(clean, seed=0)
    model, _ = model_from_checkpoint(checkpoint)
    expected = capture(model, noisy, ["body.0", "body.2", "body.2.sekg"]).table()
    assert set(rows) == {r["module"] for r in expected}
    for r in expected:
        kind, shape, before, after, high, low = rows[r["module"]]
        assert (kind, shape) == (r["kind"], "×".join(map(str, r["output_shape"])))
        assert before == pytest.approx(r["hf_in"], abs=6e-5) and after == pytest.approx(r["hf_out"], abs=6e-5), r
        assert high == pytest.approx(r["gain_high"], rel=6e-3) and low == pytest.approx(r["gain_low"], rel=6e-3), r
    assert rows["body.2"][0] == "DConv"
    for stem in ("features", "spectra", "kernel_maps", "kernel_tiles"):
        for ext in ("png", "svg"):
            assert (out / f"astronaut-{stem}.{ext}").stat().st_size > 1000


def test_several_images_add_means_and_spreads(checkpoint, tmp_path):
    out = tmp_path / "inspect"
    result = main(["inspect", "dncnn", "--checkpoint", str(checkpoint), "--image", "builtin", "--crop", "24",
                   "--figures", "none", "--out", str(out)])
    assert result == 0
    text = (out / "summary.md").read_text()
    assert [f"## {n}" in text for n in BuiltinImages("test").names] == [True] * 4
    assert "## Over 4 images (mean ± sd, [min, max])" in text
    assert not list(out.glob("*.png"))


def test_a_wrong_module_name_lists_close_names_and_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", "--checkpoint", str(checkpoint), "--image", "builtin:astronaut",
                 "--modules", "body.22", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "module pattern 'body.22' matches no module of DnCNN; close names: body.2" in err
    assert not out.exists()


def test_an_unknown_builtin_image_names_the_known_ones(checkpoint, tmp_path, capsys):
    assert main(["inspect", "--checkpoint", str(checkpoint), "--image", "builtin:astronot",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown builtin image 'astronot'; expected builtin:NAME with NAME one of ['astronaut'" in capsys.readouterr().err


def test_a_bare_state_dict_needs_the_model_named(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(build_model("dncnn", {"depth": 3, "channels": 4}).state_dict(), path)
    assert main(["inspect", "--checkpoint", str(path), "--image", "builtin:astronaut", "--out", str(tmp_path / "o")]) == 2
    assert "does not record its model: pass --model NAME" in capsys.readouterr().err
    assert main(["inspect", "dncnn", "--kwargs", "depth=3,channels=4", "--checkpoint", str(path), "--image",
                 "builtin:astronaut", "--crop", "16", "--modules", "body.2", "--figures", "none",
                 "--out", str(tmp_path / "o")]) == 0
