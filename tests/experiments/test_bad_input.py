"""Every bad input gets a message that says what was wrong, what was expected and which file or argument.

Each case runs the command a user would type and checks the exact words on stderr and that nothing was
written; non-finite values (NaN / Inf) stop testing and denoising with the image named.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.cli import main
from experiments.data import ImageFolder
from experiments.protocol import TestProtocol, denoise, evaluate
from experiments.results import DamagedRowWarning, read_checked_csv


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name in ("good", "mixed", "empty"):
        (root / name).mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "good" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "mixed" / f"{i}.png")
    (root / "mixed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    (root / "empty" / "notes.txt").write_text("no image here")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / "grey.png")
    (root / "bad.yaml").write_text("train: [\n")
    (root / "misspelled.yaml").write_text("trian:\n  lr: 1.0e-3\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(folders):
    out = folders / "trained"
    assert main(["train", "--preset", "smoke", "--model", "dncnn", "--kwargs", "depth=3,channels=8", "--iters", "1",
                 "--no-progress", "--no-eval", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


TRAIN = ["train", "--preset", "smoke", "--model", "dncnn", "--kwargs", "depth=3,channels=8", "--iters", "1",
         "--no-progress", "--no-eval"]


def _cases():
    return [
        # (argv with {root} and {ckpt}, words expected on stderr)
        (TRAIN + ["--train-data", "{root}/missing"], "unknown dataset '{root}/missing'; expected a folder or one of"),
        (TRAIN + ["--train-data", "{root}/empty"], "no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) in folder {root}/empty"),
        (TRAIN + ["--train-data", "{root}/mixed"], "cannot decode image {root}/mixed/broken.png"),
        (TRAIN + ["--train-data", "{root}/good", "--patch-size", "64"],
         "training image 0.png is 48×48 (H×W), smaller than patch_size 64"),
        (TRAIN + ["--iters", "-3"], "train.iterations must be >= 0, got -3"),
        (TRAIN + ["--sigma", "-3"], "noise.sigma must be a finite number >= 0 on the 0-255 scale, got -3.0"),
        (TRAIN + ["--set", "train.batch_size=2.5"], "train.batch_size must be int, got 2.5"),
        (["train", "--model", "nomodel"], "unknown model 'nomodel'; known models: adfnet,"),
        (TRAIN + ["--recipe", "norecipe"], "unknown recipe 'norecipe'; known recipes: adfnet_ablation, dncnn_dconv"),
        (["eval", "--checkpoint", "{ckpt}", "--sets", "{root}/missing"], "unknown dataset '{root}/missing'"),
        (["eval", "--checkpoint", "{ckpt}", "--sets", "{root}/empty"], "no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) in folder"),
        (["eval", "--checkpoint", "{ckpt}", "--sets", "{root}/mixed"], "cannot decode image {root}/mixed/broken.png"),
        (["eval", "--checkpoint", "{root}/missing.pt"], "{root}/missing.pt"),
        (["denoise", "{root}/missing.png", "{root}/o.png", "--checkpoint", "{ckpt}"], "input image not found: {root}/missing.png"),
        (["denoise", "{root}/empty", "{root}/o", "--checkpoint", "{ckpt}"], "no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) in folder {root}/empty"),
        (["denoise", "{root}/mixed/broken.png", "{root}/o.png", "--checkpoint", "{ckpt}"], "cannot decode image {root}/mixed/broken.png"),
        (["denoise", "{root}/good", "{root}/o.png", "--checkpoint", "{ckpt}"], "IN is a folder, so OUT must be a folder too"),
        (["denoise", "{root}/good/0.png", "{root}/good/0.png", "--checkpoint", "{ckpt}"], "OUT would overwrite the input image"),
        (["sweep", "dncnn", "--config", "{root}/nofile.yaml", "--out", "{root}/x"], "config file not found: {root}/nofile.yaml"),
        (["sweep", "dncnn", "--config", "{root}/bad.yaml", "--out", "{root}/x"], "config file {root}/bad.yaml is not valid YAML"),
        (["sweep", "dncnn", "--config", "{root}/misspelled.yaml", "--out", "{root}/x"], "unknown key(s) ['trian'] in the config"),
        (["sweep", "nostudy", "--preset", "smoke", "--out", "{root}/x"], "nostudy"),
    ]


@pytest.mark.parametrize("argv, expected", _cases(), ids=lambda v: " ".join(v[:4]) if isinstance(v, list) else None)
def test_a_bad_input_is_named(folders, checkpoint, capsys, argv, expected):
    before = sorted(p.relative_to(folders) for p in folders.rglob("*"))
    fill = {"root": str(folders), "ckpt": str(checkpoint)}
    try:
        code = main([a.format(**fill) for a in argv])
    except SystemExit as exit_:  # argparse refuses some values while parsing
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected.format(**fill) in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(folders) for p in folders.rglob("*")) == before, "a refused command wrote files"


def test_an_unknown_preset_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "dncnn", "--preset", "nopreset"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nopreset' (choose from 'smoke', 'quick'" in capsys.readouterr().err


def test_a_grey_image_for_a_colour_model_is_converted_with_a_note(folders, checkpoint, capsys, tmp_path):
    out = tmp_path / "o.png"
    assert main(["denoise", str(folders / "grey.png"), str(out), "--checkpoint", str(checkpoint)]) == 0
    assert "note: grey.png has 1 channel(s), the model takes 3; converting (grey repeated in R, G and B)" in \
        capsys.readouterr().err
    assert np.asarray(Image.open(out)).shape == (48, 48, 3)


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = x.clone()
        out[..., 0, 0] = self.value
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_output_names_the_image(folders, value):
    with pytest.raises(ValueError, match=r"good image '0.png': the model's output holds 3 NaN or Inf value\(s\) of 6912 "
                                         r"\(the model has diverged"):
        evaluate(_Constant(value), ImageFolder(folders / "good"), TestProtocol(sigma=25))


def test_a_non_finite_input_is_refused():
    noisy = torch.rand(1, 3, 8, 8)
    noisy[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"the input image holds 1 NaN or Inf value\(s\) of 192"):
        denoise(torch.nn.Identity(), noisy)


def test_denoise_writes_nothing_from_a_diverged_model(folders, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=False)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    broken = tmp_path / "diverged.pt"
    torch.save(state, broken)
    out = tmp_path / "o.png"
    assert main(["denoise", str(folders / "good" / "0.png"), str(out), "--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "0.png: the model's output holds" in err and f"{out} not written" in err
    assert not out.exists()


def test_a_runs_images_csv_is_checked_row_by_row(folders, tmp_path):
    out = tmp_path / "run"
    assert main(TRAIN[:-1] + ["--test", str(folders / "good"), "--set", "test.max_images=0", "--out", str(out)]) == 0
    table = out / "images.csv"
    rows = read_checked_csv(table)
    assert rows["image"].tolist() == ["0.png", "1.png"] and np.isfinite(rows["psnr"]).all()
    text = table.read_text()
    last_row = len(text) - 1 - len(text.rstrip("\n").rsplit("\n", 1)[1])
    for cut in range(last_row + 1, len(text) - 1):  # every cut that leaves part of the last row
        table.write_text(text[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_checked_csv(table)
        assert rows["image"].tolist() == ["0.png"], cut
        assert any(issubclass(w.category, DamagedRowWarning) and f"{table} line 3" in str(w.message) for w in caught), cut


def test_a_damaged_config_snapshot_is_set_aside_and_written_again(tmp_path):
    from experiments.config import load_config, study_config
    from experiments.settings import Measure
    from experiments.sweep import expand, keep_config

    name, study = study_config(load_config("smoke"), "dncnn")
    runs = expand(study)
    path = keep_config(tmp_path, study, runs, Measure())
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.warns(DamagedRowWarning, match=r"did not hold the config its name is the hash of"):
        assert keep_config(tmp_path, study, runs, Measure()) == path
    assert path.read_text() == good
    (aside,) = path.parent.glob(f"{path.name}.damaged-*")
    assert aside.read_text() == good[: len(good) // 2]
