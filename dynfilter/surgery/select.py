"""Selectors: which submodules of a model a surgery plan touches.

A selector is a predicate on ``(qualified_name, module)``. Selectors compose with ``&``, ``|`` and ``~``::

    select.by_type(nn.Conv2d) & select.by_name("layer1.*") & ~select.by_name("*.downsample.*")

Anything :func:`as_selector` accepts may stand in for a selector: a module class (or a tuple of them), a
glob string, or a plain ``fn(name, module) -> bool``. Where a match falls in a sequence is chosen
afterwards with a *position* (:func:`pick`), counted over the matches that can take the replacement.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Sequence, Union

from torch import nn

__all__ = [
    "Selector",
    "SelectorLike",
    "Position",
    "by_type",
    "by_name",
    "by_regex",
    "where",
    "everything",
    "as_selector",
    "pick",
    "check_position",
]

Predicate = Callable[[str, nn.Module], bool]


class Selector:
    """A named predicate ``(qualified_name, module) -> bool`` that composes with ``&``, ``|`` and ``~``.

    Args:
        fn (Callable[[str, nn.Module], bool]): the predicate.
        description (str): how the selector prints, e.g. ``"type Conv2d"``.

    >>> from torch import nn
    >>> s = by_type(nn.Conv2d) & ~by_name("head*")
    >>> s("body.0", nn.Conv2d(1, 1, 3)), s("head", nn.Conv2d(1, 1, 3)), s
    (True, False, (type Conv2d & not name 'head*'))
    """

    def __init__(self, fn: Predicate, description: str) -> None:
        self.fn = fn
        self.description = description

    def __call__(self, name: str, module: nn.Module) -> bool:
        return bool(self.fn(name, module))

    def __and__(self, other: SelectorLike) -> Selector:
        other = as_selector(other)
        return Selector(lambda n, m: self(n, m) and other(n, m), f"({self.description} & {other.description})")

    def __or__(self, other: SelectorLike) -> Selector:
        other = as_selector(other)
        return Selector(lambda n, m: self(n, m) or other(n, m), f"({self.description} | {other.description})")

    def __rand__(self, other: SelectorLike) -> Selector:
        return as_selector(other) & self

    def __ror__(self, other: SelectorLike) -> Selector:
        return as_selector(other) | self

    def __invert__(self) -> Selector:
        return Selector(lambda n, m: not self(n, m), f"not {self.description}")

    def __repr__(self) -> str:
        return self.description


SelectorLike = Union[Selector, type, tuple, str, Callable[[str, nn.Module], bool]]
Position = Union[int, slice, str, Sequence[int], None]


def by_type(*types: type | str) -> Selector:
    """Modules that are instances of any of ``types``.

    A string matches the class name (``"RDB"``) or the fully qualified class name
    (``"backbones.rdn.RDB"``) of the module's class or any of its bases, so structures from
    packages dynfilter does not import can still be selected.

    >>> by_type(nn.Conv2d, "BatchNorm2d")("x", nn.BatchNorm2d(3))
    True
    """
    if not types:
        raise ValueError("by_type needs at least one module class or class name")
    classes = tuple(t for t in types if isinstance(t, type))
    names = tuple(t for t in types if isinstance(t, str))
    bad = [t for t in types if not isinstance(t, (type, str))]
    if bad:
        raise ValueError(f"by_type expects module classes or class names, got {bad!r}")

    def fn(_: str, module: nn.Module) -> bool:
        if classes and isinstance(module, classes):
            return True
        mro = type(module).__mro__
        return any(n in (c.__name__, f"{c.__module__}.{c.__qualname__}") for c in mro for n in names)

    shown = ", ".join(t.__name__ if isinstance(t, type) else t for t in types)
    return Selector(fn, f"type {shown}")


def by_name(*patterns: str) -> Selector:
    """Modules whose qualified name matches any glob in ``patterns`` (``fnmatch``, case-sensitive).

    ``*`` also matches dots, so ``"layer1.*"`` reaches every depth below ``layer1``; use
    :func:`by_regex` for one level only. The root module's name is ``""``.

    >>> by_name("layer1.*")("layer1.0.conv1", nn.Identity()), by_name("layer1.*")("layer10", nn.Identity())
    (True, False)
    """
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"by_name expects one or more glob strings, got {patterns!r}")
    return Selector(
        lambda name, _: any(fnmatch.fnmatchcase(name, p) for p in patterns),
        "name " + " or ".join(repr(p) for p in patterns),
    )


def by_regex(pattern: str) -> Selector:
    r"""Modules whose whole qualified name matches the regular expression ``pattern`` (``re.fullmatch``).

    >>> by_regex(r"blocks\.\d+")("blocks.3", nn.Identity()), by_regex(r"blocks\.\d+")("blocks.3.conv", nn.Identity())
    (True, False)
    """
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ValueError(f"by_regex expects a valid regular expression, got {pattern!r}: {exc}") from None
    return Selector(lambda name, _: compiled.fullmatch(name) is not None, f"regex {pattern!r}")


def where(fn: Predicate, description: str | None = None) -> Selector:
    """Modules for which ``fn(name, module)`` is true.

    >>> where(lambda n, m: n.endswith("conv2"))("layer1.0.conv2", nn.Identity())
    True
    """
    if not callable(fn):
        raise ValueError(f"where expects a callable fn(name, module) -> bool, got {fn!r}")
    return Selector(fn, description or f"where {getattr(fn, '__name__', 'fn')}")


def everything() -> Selector:
    """Every module, the root included.

    >>> everything()("", nn.Identity())
    True
    """
    return Selector(lambda _n, _m: True, "everything")


def as_selector(value: SelectorLike) -> Selector:
    """Turn a class, tuple of classes, glob string, predicate or :class:`Selector` into a :class:`Selector`.

    >>> as_selector(nn.Conv2d), as_selector("body.*"), as_selector((nn.Conv2d, nn.Linear))
    (type Conv2d, name 'body.*', type Conv2d, Linear)
    """
    if isinstance(value, Selector):
        return value
    if isinstance(value, type):
        return by_type(value)
    if isinstance(value, tuple) and value and all(isinstance(t, (type, str)) for t in value):
        return by_type(*value)
    if isinstance(value, str):
        return by_name(value)
    if callable(value) and not isinstance(value, nn.Module):
        return where(value)
    raise ValueError(
        "a selector must be a Selector, a module class, a tuple of classes, a glob string or a callable "
        f"fn(name, module) -> bool, got {value!r}"
    )


def _middle(n: int) -> int:
    # The lower median: exact middle for odd n, the earlier of the two middles for even n.
    return (n - 1) // 2


def check_position(position: Position) -> None:
    """Raise ``ValueError`` unless ``position`` is a valid position (see :func:`pick`).

    >>> check_position("middle")
    """
    if position is None or isinstance(position, slice) or position in ("first", "middle", "last"):
        return
    if isinstance(position, int) and not isinstance(position, bool):
        return
    if (
        isinstance(position, Sequence)
        and not isinstance(position, str)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in position)
    ):
        return
    raise ValueError(f"position must be 'first', 'middle', 'last', an int, a slice or a list of ints, got {position!r}")


def pick(names: Sequence[str], position: Position) -> list[str]:
    """The names that ``position`` chooses among ``names`` (in model order).

    ``position`` is ``None`` (all), ``"first"``, ``"last"``, ``"middle"`` (index ``(n − 1) // 2``: the exact
    middle for odd ``n``, the earlier of the two middles for even ``n``), an ``int`` (negative counts from
    the end), a ``slice``, or a sequence of ints.

    Raises:
        ValueError: an index outside ``names`` or an unknown position.

    >>> pick(["a", "b", "c", "d"], "middle"), pick(["a", "b", "c"], "middle"), pick(["a", "b", "c"], slice(1, None))
    (['b'], ['b'], ['b', 'c'])
    """
    check_position(position)
    names = list(names)
    n = len(names)
    if position is None:
        return names
    if isinstance(position, slice):
        return names[position]
    if isinstance(position, str):
        indices = [{"first": 0, "last": n - 1, "middle": _middle(n)}[position]]
    elif isinstance(position, int):
        indices = [position]
    else:
        indices = list(position)
    out = []
    for i in indices:
        if not -n <= i < n:
            raise ValueError(f"position {position!r} is out of range: there are {n} eligible matches {names}")
        if names[i] not in out:
            out.append(names[i])
    return out
