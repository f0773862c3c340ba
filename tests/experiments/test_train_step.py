"""Trainer options (precision, channels_last, compile): gradients against the fp32 eager step, checkpoints, config.

Tolerances, on the relative error of the whole gradient vector ``‖g − g_fp32‖ / ‖g_fp32‖`` after one
step on the same weights and batch:

- fp32 with channels_last or compile: ``1e-4``. The same float32 arithmetic with sums in another order
  (measured 0 to 1.6e-6); a layout or op mistake gives errors of order 1.
- bf16: ``0.15``; fp16: ``0.05``. Autocast rounds every conv's inputs and weights to 8 (bf16) or 11 (fp16)
  significant bits, a relative 2⁻⁹ ≈ 2e-3 or 2⁻¹² ≈ 2.4e-4 each, on each of the ~10 tensors a gradient
  passes through forward and back, and these tiny models' batch norms over a 2×12×12 batch amplify it:
  measured 0.6–5.5 % (bf16) and 0.07–2.2 % (fp16) on the three models below. The error must also be
  above 0, which shows that autocast ran.

Compile is tested with the ``aot_eager`` backend: the same forward and backward graphs that inductor
receives, traced through the custom ops' fake kernels and autograd formulas, without generating C++ (which
takes ~40 s per model on this CPU; ``dynfilter bench --suite train`` runs inductor and compares the loss).
"""

from __future__ import annotations

import copy

import pytest
import torch

from experiments import train_step as train_step_mod
from experiments.checkpoint import build_model, load_checkpoint
from experiments.config import load_config, study_config
from experiments.noise import GaussianNoise
from experiments.run import settings_hash
from experiments.settings import RunSettings, Train, section
from experiments.sweep import expand
from experiments.train import PatchSampler, fit, l2_loss
from experiments.train_step import TrainStep, check_precision, memory_format

# (backbone, kwargs, recipe, recipe kwargs, patch side): each custom op in a training step.
MODELS = {
    "dncnn+dconv": ("dncnn", {"depth": 3, "channels": 8}, "dncnn_dconv", {"init": "published"}, 12),  # dynamic_filter
    "rdn+mdcb": ("rdn", {"num_blocks": 3, "channels": 8, "layers_per_block": 2, "growth": 8}, "rdn_mdcb",
                 {"offset_channels": 8}, 12),  # modulated_deform_conv2d
    "adfnet": ("adfnet", {"widths": (8, 8, 8, 16)}, None, None, 16),  # both
}
EAGER_OPTIONS = [{"precision": "bf16"}, {"precision": "fp16"}, {"channels_last": True}]
TOLERANCE = {"fp32": 1e-4, "bf16": 0.15, "fp16": 0.05}


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    backbone, kwargs, recipe, recipe_kwargs, side = MODELS[name]
    model = build_model(backbone, kwargs, recipe, recipe_kwargs, seed=0)
    for m in model.modules():
        if hasattr(m, "conv_offset_mask"):  # zero offsets would sample the grid points only
            torch.nn.init.normal_(m.conv_offset_mask.weight, std=0.01)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, side, side, generator=g)
    return model, x, torch.rand(x.shape, generator=g)


def _gradient(model, x, y, lr=0.0, **option) -> tuple[float, torch.Tensor]:
    """Loss and gradient of one TrainStep (SGD with lr 0 keeps the weights; the gradients stay in .grad)."""
    model = copy.deepcopy(model).to(memory_format=memory_format(option.get("channels_last", False))).train()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=lr), l2_loss, compile_backend="aot_eager", **option)
    loss = float(step(x, y))
    assert all(p.grad is not None for p in model.parameters()), "every parameter must get a gradient"
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


def _check_against_fp32(name: str, option: dict) -> None:
    model, x, y = _model(name)
    loss0, g0 = _gradient(model, x, y)
    loss, g = _gradient(model, x, y, **option)
    error = float((g - g0).norm() / g0.norm())
    precision = option.get("precision", "fp32")
    assert error <= TOLERANCE[precision], f"{name} {option}: gradient off by {error:.3g} relative"
    if precision != "fp32":
        assert error > 0, f"{name} {option}: bit-identical to fp32, so autocast did not run"
    assert loss == pytest.approx(loss0, rel=TOLERANCE[precision])


@pytest.mark.parametrize("option", EAGER_OPTIONS, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name", list(MODELS))
def test_eager_options_match_the_fp32_gradient(name, option):
    _check_against_fp32(name, option)


@pytest.mark.parametrize(("name", "option"), [
    ("dncnn+dconv", {"compile": True}),
    ("rdn+mdcb", {"compile": True}),
    ("dncnn+dconv", {"precision": "bf16", "channels_last": True, "compile": True}),
], ids=["dncnn+dconv-compile", "rdn+mdcb-compile", "dncnn+dconv-all"])
def test_compiled_step_matches_the_fp32_gradient(name, option):
    # Each op compiled alone at the fp32 tolerance; all options at once on the dynamic filter (the deformable
    # conv's full combination costs 10 s more here; dynfilter bench --suite train runs it on every model).
    _check_against_fp32(name, option)


def test_bf16_channels_last_step_lowers_the_loss():
    model, x, y = _model("rdn+mdcb")
    model = model.to(memory_format=torch.channels_last).train()
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=1e-3), l2_loss, precision="bf16", channels_last=True)
    losses = [float(step(x, y)) for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0], f"8 Adam steps on one batch should lower the loss: {losses}"


def _fit(precision: str, iterations: int, checkpoint, seed: int = 0, **options):
    model = build_model("dncnn", {"depth": 3, "channels": 4}, "dncnn_dconv", seed=seed)
    images = [torch.rand(3, 20, 23, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    settings = Train(iterations=iterations, lr=1e-3, lr_step=2, checkpoint_every=2, precision=precision, **options)
    result = fit(model, PatchSampler(images, patch_size=8, batch_size=2), l2_loss, settings, seed=0,
                 noise=GaussianNoise(25), checkpoint=checkpoint, progress=False,
                 meta={"model_name": "dncnn", "model_kwargs": {"depth": 3, "channels": 4}, "recipe": "dncnn_dconv"})
    return model, result


def test_fp16_checkpoint_keeps_the_scaler_and_resumes_exactly(tmp_path):
    full, _ = _fit("fp16", 4, tmp_path / "full.pt")
    state = load_checkpoint(tmp_path / "full.pt")
    assert set(state["scaler"]) >= {"scale", "_growth_tracker"}
    part = tmp_path / "part.pt"
    _fit("fp16", 2, part)
    saved = load_checkpoint(part)["scaler"]
    resumed, result = _fit("fp16", 4, part, seed=123)  # other initial weights: the checkpoint must win
    assert result.resumed_from == 2
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert load_checkpoint(part)["scaler"] == state["scaler"] and saved["scale"] > 0
    _fit("fp32", 1, tmp_path / "fp32.pt")
    assert "scaler" not in load_checkpoint(tmp_path / "fp32.pt"), "only fp16 has a scaler"


def test_fit_with_every_option_trains_and_leaves_a_contiguous_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_step_mod, "COMPILE_BACKEND", "aot_eager")
    model, result = _fit("bf16", 3, tmp_path / "c.pt", channels_last=True, compile=True)
    assert result.iterations == 3 and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert all(p.is_contiguous() for p in model.parameters()), "testing and inference get the usual layout"
    reference, _ = _fit("fp32", 3, None)
    assert reference.state_dict().keys() == model.state_dict().keys()


def test_fp16_is_refused_where_no_gradient_scaler_runs():
    check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"train.precision fp16 .* runs on cuda and cpu devices, not mps; use bf16"):
        check_precision("fp16", "mps")
    with pytest.raises(ValueError, match="train.precision must be one of fp32, bf16, fp16, got 'half'"):
        TrainStep(torch.nn.Conv2d(1, 1, 1), None, l2_loss, precision="half")


def test_bad_option_values_name_the_option_the_value_and_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"--set override\(s\) train.precision=fp8: train.precision must be one of "
                                         r"fp32, bf16, fp16, got 'fp8'"):
        load_config("smoke", overrides=["train.precision=fp8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {channels_last: sometimes}\n")
    with pytest.raises(ValueError, match=rf"config file {bad}: train.channels_last must be bool, got 'sometimes'"):
        load_config("smoke", bad)
    study = tmp_path / "study.yaml"
    study.write_text("studies: {dncnn: {backbone: dncnn, train: {compile: 3}}}\n")
    with pytest.raises(ValueError, match=r"study.yaml: study 'dncnn': train.compile must be bool, got 3"):
        load_config(None, study)
    assert section(Train, {"precision": "bf16", "compile": True}).compile is True


def test_defaults_keep_the_ids_and_checkpoints_of_earlier_runs():
    # The ids the smoke and paper presets gave before the options existed (computed at commit 776a9b1).
    before = {"smoke": "dncnn-d3-c8-baseline-s0-ee0be5b3", "paper": "dncnn-d5-c32-baseline-s0-a3ffd019"}
    for preset, run_id in before.items():
        assert expand(study_config(load_config(preset), "dncnn")[1])[0].id == run_id
    stored = RunSettings("dncnn").to_dict()
    for key in ("precision", "channels_last", "compile"):  # a checkpoint's config from before the options
        del stored["train"][key]
    assert settings_hash(stored) == settings_hash(RunSettings("dncnn"))
    bf16 = RunSettings("dncnn").replace(**{"train.precision": "bf16"})
    assert settings_hash(bf16) != settings_hash(stored), "bf16 computes something else: a new id"
    assert settings_hash(RunSettings("dncnn").replace(**{"train.compile": True, "train.channels_last": True})) \
        == settings_hash(stored), "compile and layout change only the kernels, as device and threads do"


def test_sweep_flags_set_the_options_and_every_row_records_them(tmp_path):
    from experiments.cli import main
    from experiments.results import ResultsTable

    out = tmp_path / "res"
    overrides = ["train.iterations=1", "train.precision=bf16", "studies.dncnn.grid.depth=[3]"]
    run = expand(study_config(load_config("smoke", overrides=overrides), "dncnn")[1])[0]
    assert run.id != "dncnn-d3-c8-baseline-s0-ee0be5b3", "a bf16 run is another run than the fp32 one"
    assert main(["sweep", "dncnn", "--preset", "smoke", "--out", str(out), "--iters", "1", "--no-progress",
                 "--precision", "bf16", "--channels-last", "--run", run.id]) == 0
    row = ResultsTable(out).read().iloc[0]
    assert row["id"] == run.id
    assert (row["precision"], bool(row["channels_last"]), bool(row["compile"])) == ("bf16", True, False)


def test_train_command_records_the_options(tmp_path):
    import json

    from experiments.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--model", "dncnn", "--kwargs", "depth=3,channels=4", "--iters", "1",
                 "--precision", "fp16", "--channels-last", "--no-eval", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "result.json").read_text())
    assert (summary["precision"], summary["channels_last"], summary["compile"]) == ("fp16", True, False)
    assert "scaler" in load_checkpoint(out / "checkpoint.pt")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_model_sees_the_layout_and_autocast_asked_for(precision):
    seen = {}

    class Probe(torch.nn.Conv2d):
        def forward(self, x):
            seen["input nhwc"] = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            seen["autocast"] = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            return super().forward(x)

    model = Probe(3, 3, 3, padding=1).to(memory_format=torch.channels_last)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), l2_loss, precision=precision,
                     channels_last=True)
    x = torch.rand(2, 3, 6, 6)
    assert step(x, x).dtype == torch.float32
    expected = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == {"input nhwc": True, "autocast": expected}
    assert (step.scaler is not None) == (precision == "fp16")
