"""Training: patches and transforms, losses, determinism, resume equivalence, atomic checkpoints, CLI."""

from __future__ import annotations

import math

import pytest
import torch

from experiments import checkpoint as ckpt_mod
from experiments.checkpoint import build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from experiments.cli import main
from experiments.noise import GaussianNoise
from experiments.settings import Train as TrainSettings
from experiments.train import PatchSampler, charbonnier_loss, dihedral, fit, l2_loss, l2_sum_loss

IMAGES = [torch.rand(3, 20, 23, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _train(seed: int, iterations: int = 4, checkpoint=None, sampler=None, every: int = 100, recipe=None):
    model = build_model("dncnn", {"depth": 3, "channels": 4}, recipe, seed=seed)
    sampler = sampler or PatchSampler(IMAGES, patch_size=8, batch_size=2)
    settings = TrainSettings(iterations=iterations, lr=1e-3, lr_step=2, lr_gamma=0.5, checkpoint_every=every)
    result = fit(model, sampler, l2_loss, settings, seed=seed, noise=GaussianNoise(25), checkpoint=checkpoint,
                 meta={"model_name": "dncnn", "model_kwargs": {"depth": 3, "channels": 4}, "recipe": recipe},
                 progress=False)
    return model, result


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dihedral_gives_the_eight_symmetries():
    x = torch.arange(6.0).reshape(1, 2, 3)
    outs = [dihedral(x, t) for t in range(8)]
    # Independent truth: the dihedral group as {identity, transpose} x {no flip, flip H, flip V, both}.
    expected = [b.flip(d) if d else b for b in (x, x.transpose(-2, -1)) for d in ((), (-1,), (-2,), (-2, -1))]

    def key(t):
        return tuple(t.shape) + tuple(t.flatten().tolist())

    assert sorted(map(key, outs)) == sorted(map(key, expected))
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_patches_are_transformed_windows_of_the_images():
    img = torch.arange(3 * 12 * 15, dtype=torch.float32).reshape(3, 12, 15) % 251 / 255
    sampler = PatchSampler([img], patch_size=5, batch_size=16)
    (batch,) = sampler(torch.Generator().manual_seed(3))
    ref = (img * 255).round()
    for patch in (batch * 255).round():
        found = any(
            torch.equal(dihedral(ref[:, i:i + 5, j:j + 5], t), patch)
            for i in range(8) for j in range(11) for t in range(8)
        )
        assert found, "a patch is not a dihedral transform of any 5x5 window of the image"


def test_paired_patches_share_window_and_transform():
    noisy = torch.rand(3, 9, 11)
    clean = 1 - noisy
    sampler = PatchSampler([(noisy, clean)], patch_size=4, batch_size=6)
    n, c = sampler(torch.Generator().manual_seed(0))
    torch.testing.assert_close(n, 1 - c, atol=1 / 255, rtol=0, msg="noisy and clean crops differ in place")
    assert sampler.paired


def test_small_image_is_refused_with_its_name():
    class Named(list):
        names = ["big.png", "tiny.png"]

    with pytest.raises(ValueError, match=r"tiny\.png is 6×9 .* smaller than patch_size 8"):
        PatchSampler(Named([torch.rand(3, 10, 10), torch.rand(3, 6, 9)]), patch_size=8, batch_size=1)


def test_losses_match_hand_computation():
    out = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 0.5]]]])  # B=2, one channel, 1x2
    target = torch.zeros_like(out)
    assert l2_loss(out, target).item() == pytest.approx((0 + 1 + 4 + 0.25) / 4)
    assert l2_sum_loss(out, target).item() == pytest.approx((0 + 1 + 4 + 0.25) / (2 * 2))
    expected = sum(math.sqrt(v * v + 1e-6) for v in (0.0, 1.0, 2.0, 0.5)) / 4
    assert charbonnier_loss(out, target).item() == pytest.approx(expected)


def test_same_seed_same_weights_other_seed_differs():
    a, ra = _train(0)
    b, rb = _train(0)
    c, _ = _train(1)
    assert _same(a, b), "two runs with seed 0 must give bit-identical weights"
    assert ra.losses == rb.losses
    assert not _same(a, c), "seed 1 must give other weights"


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    full, full_result = _train(0, iterations=6)

    class Interrupt(PatchSampler):
        calls = 0

        def __call__(self, generator):
            Interrupt.calls += 1
            if Interrupt.calls == 5:  # killed during step 5, after the checkpoint of step 4
                raise KeyboardInterrupt
            return super().__call__(generator)

    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(0, iterations=6, checkpoint=path, every=2, sampler=Interrupt(IMAGES, 8, 2))
    assert load_checkpoint(path)["iteration"] == 4
    # A fresh process would build the model from another state: start from other weights on purpose.
    resumed, result = _train(123, iterations=6, checkpoint=path, every=2)
    assert result.resumed_from == 4
    assert _same(full, resumed), "a resumed run must end with the weights of an uninterrupted one"
    assert result.losses == full_result.losses[4:]
    state = load_checkpoint(path)
    assert state["iteration"] == 6
    # StepLR every 2 steps with gamma 0.5 over 6 steps: lr = 1e-3 · 0.5³.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5**3)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "iteration": 1, "model_name": "x", "model_kwargs": {}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file may be left behind"

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {}, "iteration": 2, "model_name": "x", "model_kwargs": {}})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1, "a failed write must leave the previous checkpoint intact"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_rebuilds_surgery_model(tmp_path):
    path = tmp_path / "c.pt"
    model, _ = _train(0, iterations=2, checkpoint=path, recipe="dncnn_dconv")
    rebuilt, state = model_from_checkpoint(path)
    assert state["recipe"] == "dncnn_dconv"
    assert any(type(m).__name__ == "DConv" for m in rebuilt.modules())
    x = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0, msg="rebuilt model differs")


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dynfilter training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_train_and_denoise_commands(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "run"
    args = ["train", "--preset", "smoke", "--model", "dncnn", "--kwargs", "depth=3,channels=4",
            "--recipe", "dncnn_dconv", "--iters", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "builtin: PSNR" in printed
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    # Asking for more iterations continues the same run; other settings are refused.
    assert main([*args[:-3], "--iters", "3", "--no-eval", "--out", str(out), "--no-progress"]) == 0
    assert "resumed at 2" in capsys.readouterr().out
    assert main([*args, "--sigma", "25"]) == 2
    assert "different settings" in capsys.readouterr().err

    grey = tmp_path / "grey.png"
    Image.fromarray((torch.rand(13, 17) * 255).byte().numpy(), mode="L").save(grey)
    assert main(["denoise", str(grey), str(tmp_path / "o.png"), "--checkpoint", str(out / "checkpoint.pt"),
                 "--add-noise", "50"]) == 0
    captured = capsys.readouterr()
    assert "converting" in captured.err and "PSNR" in captured.out
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (17, 13) and im.mode == "RGB"
    assert main(["denoise", str(grey), str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / "no.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
