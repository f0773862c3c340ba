"""The model registry: names, overrides, errors, and what every registered model promises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones import registry

REQUIRED = {
    "dncnn",
    "rdn",
    "adfnet",
    "adfnet_l",
    "adfnet_wo_dcb",
    "adfnet_wo_mdcb",
    "adfnet_wo_dcb_mdcb",
    "adfnet_wo_mfi",
    "adfnet_dyn_encoder",
    "adfnet_dyn_all",
}


def small_kwargs(name: str) -> dict:
    """Narrow versions so that every registered model can run forward and backward quickly."""
    if name.startswith("adfnet"):
        return {"widths": (8, 16, 16, 32)}
    if name.startswith("dncnn"):
        return {"depth": 4, "channels": 8}
    if name.startswith("rdn"):
        return {"num_blocks": 2, "channels": 8, "layers_per_block": 2}
    return {}


def test_available_lists_required_names_sorted():
    names = backbones.available()
    assert REQUIRED <= set(names)
    assert names == sorted(names)


def test_build_returns_the_right_classes():
    with torch.device("meta"):
        assert type(backbones.build("dncnn")) is backbones.DnCNN
        assert type(backbones.build("rdn")) is backbones.RDN
        assert type(backbones.build("adfnet_l")) is backbones.ADFNet


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*adfnet.*dncnn.*rdn"):
        backbones.build("resnet50")


def test_unknown_argument_is_named():
    with pytest.raises(ValueError, match=r"DnCNN got unknown argument\(s\) \['width'\].*'channels'"):
        backbones.build("dncnn", width=32)


def test_user_kwargs_override_variant_defaults():
    with torch.device("meta"):
        wide_grey = backbones.build("adfnet_l", in_channels=1)
        undone = backbones.build("adfnet_wo_dcb", decoder="dynamic")
    assert wide_grey.widths == (64, 128, 256, 512) and wide_grey.in_channels == 1
    assert undone.block_names["decoder"] == ("DCB", "MDCB")


def test_duplicate_registration_raises_and_keeps_the_first(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    first = registry._FACTORIES["dncnn"]
    with pytest.raises(ValueError, match="'dncnn' is already registered"):
        registry.register("dncnn")(lambda **kw: nn.Identity())
    assert registry._FACTORIES["dncnn"] is first


def test_register_by_function_name_and_by_explicit_name(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", {})

    @registry.register
    def tiny(**kwargs):
        return nn.Conv2d(1, 1, 1, **kwargs)

    @registry.register("tiny_named")
    def other(**kwargs):
        return nn.Identity()

    assert registry.available() == ["tiny", "tiny_named"]
    assert registry.build("tiny", bias=False).bias is None
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("")(other)


def _loss_and_backward(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    out = model(x)
    ((out - target) ** 2).mean().backward()
    return out


@pytest.mark.parametrize("name", backbones.available())
def test_every_model_keeps_odd_shapes_and_trains_every_parameter(name):
    model = backbones.build(name, **small_kwargs(name))
    assert model.size_multiple in (1, 8) and isinstance(model.size_multiple, int)
    x = torch.rand(2, model.in_channels, 13, 19)
    target = torch.rand_like(x)
    assert _loss_and_backward(model, x, target).shape == x.shape
    # A second step: the DCN offset/mask convs start at zero (spec §5), so the offset-feature convs
    # before them only receive gradient once those have moved.
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    _loss_and_backward(model, x, target)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], f"{name}: parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name, multiple", [("dncnn", 1), ("rdn", 1), ("adfnet", 8), ("adfnet_l", 8)])
def test_size_multiple_is_a_class_attribute(name, multiple):
    with torch.device("meta"):
        model = backbones.build(name)
    assert type(model).size_multiple == multiple
