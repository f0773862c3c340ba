"""Two training processes under torchrun (gloo, CPU) follow the one-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from experiments.checkpoint import build_model, load_checkpoint
from experiments.cli import main

ARGS = ["--preset", "smoke", "--model", "dncnn", "--kwargs", "depth=3,channels=4,batch_norm=False",
        "--iters", "3", "--batch-size", "4", "--patch-size", "8", "--no-eval", "--no-progress", "--device", "cpu"]


def test_two_gloo_processes_match_one_process(tmp_path):
    root = Path(__file__).resolve().parents[2]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        pixels = torch.randint(0, 256, (24, 30, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        Image.fromarray(pixels.numpy()).save(images / f"{i}.png")
    args = [*ARGS, "--train-data", str(images)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "experiments.train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 processes)" in proc.stdout

    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    ddp, one = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert ddp["iteration"] == one["iteration"] == 3
    assert not any(k.startswith("module.") for k in ddp["model"]), "the checkpoint must hold the unwrapped model"
    for key, value in one["model"].items():
        # Same batches, gradients averaged over the ranks: equal up to the order of float sums.
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    # And the comparison is not vacuous: training moved the weights away from their seeded start.
    start = build_model("dncnn", {"depth": 3, "channels": 4, "batch_norm": False, "in_channels": 3}, seed=0)
    assert not torch.allclose(start.state_dict()["body.0.weight"], ddp["model"]["body.0.weight"], atol=1e-6)
