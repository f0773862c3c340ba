"""BatchNorm re-estimation: the running statistics become the plain average of the batch statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.batchnorm import recalibrate_batchnorm


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.9), nn.ReLU(),
                        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.9))
    with torch.no_grad():  # non-trivial affine parameters, so the second BN sees a transformed input
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return net.eval()


def test_running_stats_are_the_average_of_the_batch_statistics():
    net = _net()
    batches = [torch.randn(5, 2, 6, 7, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(4)]
    params = {k: v.clone() for k, v in net.named_parameters()}
    assert recalibrate_batchnorm(net, batches) == 2

    # Independent truth: the batch statistics computed by hand, layer by layer, in training mode.
    means1, vars1, means2, vars2 = [], [], [], []
    with torch.no_grad():
        for x in batches:
            a = net[0](x)
            means1.append(a.mean((0, 2, 3)))
            vars1.append(a.var((0, 2, 3), unbiased=True))
            mu, var = a.mean((0, 2, 3), keepdim=True), a.var((0, 2, 3), unbiased=False, keepdim=True)
            b = net[3](F.relu((a - mu) / torch.sqrt(var + net[1].eps) * net[1].weight.view(1, -1, 1, 1)
                              + net[1].bias.view(1, -1, 1, 1)))
            means2.append(b.mean((0, 2, 3)))
            vars2.append(b.var((0, 2, 3), unbiased=True))
    for bn, means, vars_ in ((net[1], means1, vars1), (net[4], means2, vars2)):
        torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), rtol=1e-5, atol=1e-5)
        assert bn.momentum == 0.9 and int(bn.num_batches_tracked) == len(batches)
    assert not net.training, "the model's mode is restored"
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]), f"{k} changed"


def test_no_batchnorm_and_no_batches():
    plain = nn.Sequential(nn.Conv2d(1, 1, 1))
    assert recalibrate_batchnorm(plain, iter(())) == 0
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(_net(), [])


def test_batchnorm_command_retests_a_results_folder(tmp_path, capsys):
    import pandas as pd

    from experiments.cli import main
    from experiments.results import ResultsTable

    common = ["--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--set", "test.recalibrate_bn=false"]
    assert main(["sweep", "dncnn", *common, "--set", "studies.dncnn.grid.depth=[3]"]) == 0
    rows = ResultsTable(tmp_path).read().set_index("id")
    assert not rows["bn_recalibrated"].any()
    assert main(["batchnorm", str(tmp_path), "--batches", "3"]) == 0
    assert "batchnorm.csv" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "batchnorm.csv").set_index("id")
    assert sorted(table.index) == sorted(rows.index)
    for run_id, row in table.iterrows():
        assert row["as_trained_psnr_builtin"] == rows.loc[run_id, "psnr_builtin"]  # as in the results row
        assert row["psnr_builtin"] != row["as_trained_psnr_builtin"] and row["bn_recalibrated"]
    # batchnorm.csv is a results table: plot reads it and pairs the re-tested runs.
    assert main(["plot", str(tmp_path / "batchnorm.csv"), "--out", str(tmp_path / "bn")]) == 0
    assert "dncnn depth=3 channels=8 dconv  builtin:" in capsys.readouterr().out
    assert main(["batchnorm", str(tmp_path), "--batches", "0"]) == 2
    assert "--batches must be at least 1" in capsys.readouterr().err


def test_a_failed_reestimation_leaves_the_statistics_as_they_were():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    net.train()
    net(torch.randn(4, 1, 5, 5) * 3 + 1)  # statistics of their own
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def failing():
        yield torch.randn(4, 1, 5, 5)
        raise RuntimeError("a batch could not be drawn")

    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(net, [])
    with pytest.raises(RuntimeError, match="could not be drawn"):
        recalibrate_batchnorm(net, failing())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net[1].momentum == 0.1 and net.training
