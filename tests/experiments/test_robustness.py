"""Nothing silently wrong: damaged checkpoints, refused resumes, crashed writes and resumed continuations."""

from __future__ import annotations

import re

import pytest
import torch

from experiments import run as run_mod
from experiments.checkpoint import load_checkpoint, model_from_checkpoint
from experiments.cli import main
from experiments.config import load_config, study_config
from experiments.results import ResultsTable
from experiments.sweep import expand, run_sweep


def _study(overrides=()):
    return study_config(load_config("smoke", overrides=["studies.dncnn.grid.depth=[3]", *overrides]), "dncnn")[1]


@pytest.fixture
def trained(tmp_path):
    study = _study()
    runs = expand(study)
    run_sweep(runs[:1], tmp_path, study["measure"], progress=False, log=lambda *a: None)
    return tmp_path / "runs" / runs[0].id / "checkpoint.pt"


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "torch.save archive cut short"),
    (lambda b: b"", "the file is empty (0 bytes"),
    (lambda b: b"not a checkpoint at all", "is not a file written by torch.save"),
])
def test_a_damaged_checkpoint_is_named_by_every_reader(trained, tmp_path, capsys, damage, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(damage(trained.read_bytes()))
    for read in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(ValueError, match=f"cannot read checkpoint {re.escape(str(bad))}: .*{re.escape(message)}"):
            read(bad)
    assert main(["eval", "--checkpoint", str(bad), "--limit", "1"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["denoise", str(bad), str(tmp_path / "o.png"), "--checkpoint", str(bad)]) == 2
    assert message.split(" (")[0] in capsys.readouterr().err


def test_a_foreign_checkpoint_names_the_keys_that_do_not_fit(trained, tmp_path):
    with pytest.raises(ValueError, match=r"do not fit rdn\(.*missing keys"):
        model_from_checkpoint(trained, model_name="rdn", model_kwargs={"num_blocks": 2, "channels": 8})


def test_a_refused_resume_names_the_setting(tmp_path):
    runs = expand(_study(["train.iterations=2"]))
    checkpoint = tmp_path / "checkpoint.pt"
    run_mod.train_model(runs[0].settings, checkpoint, progress=False)
    other = runs[0].settings.replace(**{"train.lr": 5e-3})
    with pytest.raises(ValueError, match=r"different settings: train.lr \(0.0001 there, 0.005 now\)"):
        run_mod.train_model(other, checkpoint, progress=False)


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    study = _study()
    runs = expand(study)[:1]
    folder = tmp_path / "runs" / runs[0].id
    folder.mkdir(parents=True)
    (folder / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".results.csv.xyz.tmp").write_text("id\n")
    lines = []
    run_sweep(runs, tmp_path, study["measure"], progress=False, log=lines.append)
    assert not list(folder.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert any("removed .checkpoint.pt.abc123.tmp" in line for line in lines)


def test_a_resumed_continuation_keeps_naming_its_twin(tmp_path):
    study = _study(["studies.dncnn.grid={train.iterations: [2, 4], depth: [3], channels: [8]}",
                    "studies.dncnn.variants={baseline: {}}"])
    runs = expand(study)
    short, long = sorted(runs, key=lambda r: r.settings.train.iterations)
    run_sweep([short], tmp_path, study["measure"], progress=False, log=lambda *a: None)
    # The long run copies its twin's checkpoint, then is killed before finishing ...
    from experiments.sweep import warm_start

    assert warm_start(long, runs, tmp_path, ResultsTable(tmp_path).ids()) == short.id
    # ... and resumed: its own checkpoint is now as far as the twin's, so nothing is copied again,
    # but the row still names the twin.
    run_sweep([long], tmp_path, study["measure"], pool=runs, progress=False, log=lambda *a: None)
    row = ResultsTable(tmp_path).read().set_index("id").loc[long.id]
    assert row["warm_start"] == short.id


def test_a_nan_loss_names_the_run_and_the_step(tmp_path):
    runs = expand(_study(["train.lr=1.0e+30", "train.iterations=6"]))
    with pytest.raises(ValueError, match=r"training loss became nan at iteration \d"):
        run_mod.train_model(runs[0].settings, tmp_path / "c.pt", progress=False)


def test_the_config_is_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    for override, message in (("train.lr=abc", "train.lr must be float, got 'abc'"),
                              ("train.batch_size=2.5", "train.batch_size must be int, got 2.5"),
                              ("trian.lr=1", "unknown key(s) ['trian']"),
                              ("train.iterations=-3", "train.iterations must be >= 0, got -3"),
                              ("noise.sigma=-5", "noise.sigma must be a finite number >= 0")):
        for extra in ([], ["--list"]):
            assert main(["sweep", "dncnn", "--preset", "smoke", "--out", str(out), "--set", override, *extra]) == 2
            assert message in capsys.readouterr().err, override
    assert not out.exists()
    assert torch.get_num_threads() >= 1


def test_denoise_refuses_to_overwrite_its_input(trained, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["denoise", str(image), str(image), "--checkpoint", str(trained)]) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert Image.open(image).size == (8, 8)


@pytest.mark.parametrize("shard", ["-1/2", "3/2", "a/b"])
def test_a_bad_shard_says_what_is_expected(tmp_path, capsys, shard):
    try:
        code = main(["sweep", "dncnn", "--preset", "smoke", "--out", str(tmp_path), "--shard", shard])
    except SystemExit as exit_:  # a value starting with "-" is refused while parsing
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert "--shard takes i/n with 0 <= i < n" in err and f"got {shard!r}" in err


def test_a_test_image_too_small_for_the_metrics_is_named(tmp_path):
    from PIL import Image

    from experiments.data import ImageFolder
    from experiments.protocol import TestProtocol, evaluate

    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    model = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match=r"images image 'tiny.png': ssim: image \(1, 1\) is smaller than the 11x11 window"):
        evaluate(model, ImageFolder(tmp_path, name="images"), TestProtocol(sigma=25))


def test_sixteen_bit_and_alpha_images(tmp_path):
    import struct
    import zlib

    import numpy as np

    from experiments.data import ConversionWarning, read_image

    def png(path, array, depth, colour):
        h, w = array.shape[:2]
        raw = b"".join(b"\x00" + array[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

    values = (np.arange(4 * 4 * 4).reshape(4, 4, 4) * 1000).astype(np.uint16)
    png(tmp_path / "rgb16.png", values[..., :3], 16, 2)
    png(tmp_path / "grey16.png", values[..., 0], 16, 0)
    for name in ("rgb16.png", "grey16.png"):
        with pytest.raises(ValueError, match=f"{name} is a 16-bit PNG; dynfilter reads 8-bit images"):
            read_image(tmp_path / name)
    png(tmp_path / "rgba.png", (values % 256).astype(np.uint8), 8, 6)
    with pytest.warns(ConversionWarning, match=r"rgba.png: the alpha channel is dropped \(RGBA read as RGB\)"):
        rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (4, 4, 3) and np.array_equal(rgb, (values % 256).astype(np.uint8)[..., :3])


def test_a_conversion_is_announced_and_recorded(tmp_path):
    from PIL import Image

    from experiments.data import ConversionWarning, ImageFolder
    from experiments.protocol import TestProtocol, evaluate, summarize

    for i in range(2):
        Image.new("L", (16, 16), color=40 * i).save(tmp_path / f"g{i}.png")
    folder = ImageFolder(tmp_path, channels=3, name="greys")
    with pytest.warns(ConversionWarning, match="greys: images converted from grey to colour"):
        rows = evaluate(torch.nn.Conv2d(3, 3, 1), folder, TestProtocol(sigma=25))
    assert {r["conversion"] for r in rows} == {"grey to colour (grey repeated)"}
    assert summarize(rows)[0]["conversion"] == "grey to colour (grey repeated)"


def test_a_resume_into_another_model_leaves_it_as_it_was(tmp_path):
    from experiments.checkpoint import build_model
    from experiments.noise import GaussianNoise
    from experiments.settings import Train
    from experiments.train import PatchSampler, fit, l2_loss

    images = [torch.rand(3, 20, 20)]
    sampler = PatchSampler(images, patch_size=8, batch_size=2)
    small = build_model("dncnn", {"depth": 3, "channels": 4}, seed=0)
    fit(small, sampler, l2_loss, Train(iterations=2), seed=0, noise=GaussianNoise(25), checkpoint=tmp_path / "c.pt",
        meta={"model_name": "dncnn", "model_kwargs": {"depth": 3, "channels": 4}}, progress=False)
    other = build_model("dncnn", {"depth": 4, "channels": 4}, seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"do not fit this model: 7 missing keys .*body.5.weight \(3, 4, 3, 3\) vs \(4, 4, 3, 3\)"):
        fit(other, sampler, l2_loss, Train(iterations=4), seed=0, noise=GaussianNoise(25), checkpoint=tmp_path / "c.pt",
            progress=False)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
