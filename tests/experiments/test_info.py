"""``dynfilter info`` and the shared ``--kwargs`` parser."""

from __future__ import annotations

import pytest

from experiments.cli import build_parser, main
from experiments.cli._args import parse_kwargs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("depth=5,channels=32", {"depth": 5, "channels": 32}),
        (" depth = 5 , ", {"depth": 5}),
        ("lr=1e-4, scale=-2, x=+3", {"lr": 1e-4, "scale": -2, "x": 3}),
        ("a=True,b=false,c=None,d=none", {"a": True, "b": False, "c": None, "d": None}),
        ("widths=(16,32,64,128)", {"widths": (16, 32, 64, 128)}),
        ("decoder=(cb,mdcb),encoder=dynamic", {"decoder": ("cb", "mdcb"), "encoder": "dynamic"}),
        ("name='a-b',dims=[1,2]", {"name": "a-b", "dims": [1, 2]}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse_kwargs(text, expected):
    assert parse_kwargs(text) == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("depth=", "expected comma-separated key=value pairs"),
        ("5", "every item must be key=value"),
        ("**x", "every item must be key=value"),
        ("a=1,a=2", r"given twice: \['a'\]"),
        ("a=1)(b=2", "expected comma-separated key=value pairs"),
        ("a=f(1)", r"unsupported value 'f\(1\)'"),
        ("a=-x", "unsupported value"),
    ],
)
def test_parse_kwargs_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_kwargs(text)


def run_info(*argv: str) -> dict:
    args = build_parser().parse_args(["info", *argv])
    return args.run(args)


def test_info_dncnn_grid_point(capsys):
    result = run_info("dncnn", "--kwargs", "depth=5,channels=32")
    # conv 3→32 (896) + 3 × (conv 32→32 + BN = 9,312) + conv 32→3 (867)
    assert result["parameters"] == 896 + 3 * 9_312 + 867 == 29_699
    assert result["kwargs"] == {"depth": 5, "channels": 32}
    assert [(r["name"], r["type"]) for r in result["modules"]] == [("body", "Sequential")]
    out = capsys.readouterr().out
    assert "dncnn (DnCNN)" in out and "29,699" in out


def test_info_depth_two_shows_blocks():
    rows = {r["name"]: r for r in run_info("adfnet", "--depth", "2")["modules"]}
    assert (rows["fe1.0"]["type"], rows["fe1.0"]["parameters"]) == ("CB", 27_744)  # spec §7
    assert (rows["dfe3.1"]["type"], rows["dfe3.1"]["parameters"]) == ("MDCB", 474_428)
    assert rows["fe1"]["parameters"] == 27_744 + 122_040


def test_info_without_model_lists_models(capsys):
    assert "adfnet_wo_mfi" in run_info()["models"]
    assert "rdn" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "nope"], "unknown model 'nope'; known models: adfnet"),
        (["info", "dncnn", "--kwargs", "width=3"], "unknown argument"),
        (["info", "rdn", "--depth", "0"], "--depth must be at least 1"),
    ],
)
def test_info_errors_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
