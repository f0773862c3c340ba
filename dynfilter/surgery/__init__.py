"""Surgery: rewrite a model's convs and blocks with dynamic ones, from a plan you read first.

``plan(model, select=..., replace=...)`` changes nothing and prints as a table (name, old → new type,
parameters before → after, carried weights); ``plan.apply()`` performs it on a copy. Selectors live in
:mod:`~dynfilter.surgery.select`, replacements in :mod:`~dynfilter.surgery.replace`, the paper's
experiments in :mod:`~dynfilter.surgery.recipes`. See ``docs/surgery.md``.

>>> import torch
>>> from torch import nn
>>> from dynfilter import surgery
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
>>> p = surgery.plan(net, select=nn.Conv2d, replace=surgery.replace.to_dconv(), position="last")
>>> surgery.apply(net, p)(torch.randn(1, 3, 8, 8)).shape
torch.Size([1, 8, 8, 8])
"""

from . import recipes, replace, select
from .plan import Entry, Plan, apply, plan, unwrap
from .replace import Replacement
from .select import Selector

__all__ = ["plan", "apply", "unwrap", "Plan", "Entry", "Selector", "Replacement", "select", "replace", "recipes"]
