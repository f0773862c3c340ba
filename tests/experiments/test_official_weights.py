"""A published ADFNet checkpoint (the official code's key names) loads wherever a bare state dict does."""

from __future__ import annotations

import pytest
import torch

from backbones.adfnet import ADFNet, load_official_state_dict
from experiments.checkpoint import model_from_checkpoint
from tests.backbones.test_official_checkpoint import published_state_dict


def test_a_published_adfnet_checkpoint_loads_by_model_name(tmp_path):
    # `dynfilter export adfnet --checkpoint official.pt` (and `eval --model adfnet`) read the official key names.
    published = published_state_dict()
    reference = ADFNet()
    load_official_state_dict(reference, published)
    # ADFNet_RGB / Gray save the bare state dict, ADFNet_Real {epoch, state_dict, optimizer}, DataParallel "module.".
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in published.items()}, "optimizer": {}}
    for i, saved in enumerate((published, wrapped)):
        path = tmp_path / f"official{i}.pt"
        torch.save(saved, path)
        model, _ = model_from_checkpoint(path, model_name="adfnet")
        for (name, got), expected in zip(model.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


def test_a_bare_state_dict_that_fits_neither_way_names_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"head.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="do not fit adfnet.*missing keys"):
        model_from_checkpoint(path, model_name="adfnet")
