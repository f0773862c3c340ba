"""Build backbones by name: ``register`` a factory, ``build(name, **kwargs)``, list ``available()``.

Modelled on timm's ``_registry.py`` / ``create_model``: each registered factory fills a dict of default
arguments for one variant and user keyword arguments override it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, TypeVar, overload

from torch import nn

__all__ = ["register", "build", "available", "instantiate"]

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}


@overload
def register(fn: F) -> F: ...
@overload
def register(fn: str | None = None) -> Callable[[F], F]: ...


def register(fn: F | str | None = None) -> F | Callable[[F], F]:
    """Register a model factory under its function name, or under an explicit name.

    Use as ``@register`` or ``@register("name")``. Registering a name twice raises ``ValueError``.

    >>> @register("_doctest_tiny")
    ... def tiny(**kwargs):
    ...     return nn.Identity()
    >>> "_doctest_tiny" in available()
    True
    >>> _ = _FACTORIES.pop("_doctest_tiny")
    """

    def add(factory: F, name: str) -> F:
        if not name or not isinstance(name, str):
            raise ValueError(f"a registered model name must be a non-empty string, got {name!r}")
        if name in _FACTORIES:
            raise ValueError(f"model name {name!r} is already registered (by {_FACTORIES[name].__module__})")
        _FACTORIES[name] = factory
        return factory

    if callable(fn):
        return add(fn, fn.__name__)
    return lambda factory: add(factory, fn if fn is not None else factory.__name__)


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_FACTORIES)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` override the variant's defaults.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or an argument the model
            does not take.

    >>> import backbones
    >>> backbones.build("dncnn", depth=5, channels=16).body[0]
    Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    return _FACTORIES[name](**kwargs)


def instantiate(cls: type[nn.Module], defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> nn.Module:
    """``cls(**{**defaults, **overrides})``, with a ``ValueError`` naming any argument ``cls`` does not take.

    This is what a registered factory calls after filling ``defaults`` for its variant.
    """
    kwargs = {**defaults, **overrides}
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} got unknown argument(s) {unknown}; it accepts {accepted}")
    return cls(**kwargs)
