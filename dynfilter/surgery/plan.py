"""Plan, then apply: find what a selector picks, check it can take the replacement, report, then swap.

:func:`plan` changes nothing: it builds each new module from a private copy of the old one and
records, per swap, the qualified name, the old and new module, the parameter counts and the carried
weights. Printing the :class:`Plan` shows that table. :meth:`Plan.apply` (or :func:`apply`) performs it on
a deep copy (or in place), walking to each parent and swapping with ``setattr`` (as timm's
``convert_sync_batchnorm`` does), keeping device, dtype and the training flag, and re-copying the carried
weights from the model it is applied to.

Wrapped models: ``torch.compile`` (``OptimizedModule``), ``nn.DataParallel`` and ``DistributedDataParallel``
are unwrapped; plans and results refer to the inner model and are not re-wrapped. TorchScript is refused.

Keeping the output. Each entry says whether the rewritten model computes exactly what the original
did before any training (``keeps_output``; the table's "output" column), and if not, why
(``output_note``). ``plan(..., preserve_output=True)`` asks every replacement for its output-keeping
form (an inserted DConv with ``init="identity"``, an inserted residual block with the last layer of its
branch zeroed); matches that have none (a conv swapped for a DConv drops the conv) cannot take it: strict
plans raise, lenient ones skip them.

Shared modules (one instance reachable under several names) count once. With ``shared="tie"`` (default)
every name is pointed at the same new module, so the sharing survives; ``shared="error"`` raises instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .replace import Replacement, ReplacementLike, as_replacement
from .select import Position, Selector, SelectorLike, as_selector, check_position, pick

__all__ = ["Entry", "Plan", "plan", "apply", "unwrap"]

_MAX_LISTED = 60


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe(module: nn.Module) -> str:
    """``Conv2d``, or ``Sequential(Conv2d, DConv)`` / ``Sequential(3×MDCB)`` for a plain Sequential."""
    if type(module) is not nn.Sequential:
        return type(module).__name__
    parts: list[list] = []
    for child in module:
        name = _describe(child)
        if parts and parts[-1][0] == name:
            parts[-1][1] += 1
        else:
            parts.append([name, 1])
    return "Sequential(" + ", ".join(n if k == 1 else f"{k}×{n}" for n, k in parts) + ")"


def _summarise_carried(new: nn.Module, carried: dict[str, str]) -> str:
    """Carried keys grouped by the new module's top-level child: ``offset.*, dcn.*``, ``conv3.*←conv2.*``."""
    if not carried:
        return "—"
    by_head: dict[str, list[str]] = {}
    for key in new.state_dict():
        by_head.setdefault(key.split(".")[0], []).append(key)
    out = []
    for head, keys in by_head.items():
        got = [k for k in keys if k in carried]
        if not got:
            continue
        old_heads = set()
        for k in got:
            suffix = k[len(head) + 1 :]
            old = carried[k]
            old_heads.add(old[: len(old) - len(suffix)].rstrip(".") if suffix and old.endswith(suffix) else None)
        if len(got) == len(keys) and len(old_heads) == 1 and None not in old_heads and "." in keys[0]:
            (old_head,) = old_heads
            out.append(f"{head}.*" if old_head == head else f"{head}.*←{old_head + '.*' if old_head else '*'}")
        else:
            out.extend(k if carried[k] == k else f"{k}←{carried[k]}" for k in got)
    return ", ".join(out)


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model inside ``torch.compile`` / ``DataParallel`` / ``DistributedDataParallel`` wrappers.

    Returns:
        (nn.Module, list[str]): the inner model and one note per wrapper removed.

    Raises:
        ValueError: for TorchScript modules, whose structure cannot be rewritten.

    >>> inner = nn.Linear(2, 2)
    >>> unwrap(nn.DataParallel(inner))[0] is inner
    True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"surgery works on an nn.Module, got {type(model).__name__}")
    notes = []
    while True:
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(
                "cannot rewrite a TorchScript module: rewrite the eager model, then script it again"
            )
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
            notes.append("unwrapped torch.compile: the result is the eager model; compile it again")
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            notes.append(f"unwrapped {type(model).__name__}: the result is the inner model; wrap it again")
            model = model.module
        else:
            return model, notes


@dataclass
class Entry:
    """One module of a plan: swapped (``new`` set, ``reason`` ``None``) or skipped (``reason`` says why).

    Attributes:
        name (str): qualified name (``""`` for the root).
        old (nn.Module): the module in the planned model.
        new (nn.Module | None): the replacement, already on ``old``'s device and dtype.
        aliases (tuple[str, ...]): other names of the same (shared) module.
        reason (str | None): why it is not swapped.
        carried (dict[str, str]): ``{new_key: old_key}`` of state-dict entries copied from ``old``.
        replacement (str): the replacement's label.
        keeps_output (bool): the new module computes exactly what ``old`` did, before training.
        output_note (str): why the output may change (empty when it is kept).
    """

    name: str
    old: nn.Module
    new: nn.Module | None = None
    aliases: tuple[str, ...] = ()
    reason: str | None = None
    carried: dict[str, str] = field(default_factory=dict)
    replacement: str = ""
    keeps_output: bool = False
    output_note: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def params_before(self) -> int:
        return _n_params(self.old)

    @property
    def params_after(self) -> int:
        return _n_params(self.new) if self.new is not None else self.params_before

    def row(self) -> dict:
        """The entry as plain data (for printing, JSON and the CLI)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "old": _describe(self.old),
            "new": _describe(self.new) if self.new is not None else None,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "carried": dict(self.carried),
            "replacement": self.replacement,
            "reason": self.reason,
            "keeps_output": self.keeps_output,
            "output_note": self.output_note,
        }


def _shown(name: str) -> str:
    return name or "(root)"


class Plan:
    """What a surgery will do to ``model``; printing it shows the table, :meth:`apply` performs it.

    In the "carried weights" column, ``dcn.*`` means the new ``dcn`` takes the old ``dcn``'s state,
    ``conv3.*←conv2.*`` that the new ``conv3`` takes the old ``conv2``'s, and ``conv.*←*`` that the new
    ``conv`` takes the whole old module's; ``—`` means nothing is carried.

    Plans for the same model add up (``plan_a + plan_b``) when they touch disjoint modules.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    >>> from dynfilter.surgery import replace
    >>> p = plan(net, select=nn.Conv2d, replace=replace.to_dconv(), strict=False)
    >>> [e.name for e in p], [e.name for e in p.skipped]
    (['1'], ['0'])
    >>> type(p.apply()[1]).__name__
    'DConv'
    """

    def __init__(
        self,
        model: nn.Module,
        entries: list[Entry],
        skipped: list[Entry] | None = None,
        steps: list[str] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.model = model
        self.entries = list(entries)
        self.skipped = list(skipped or [])
        self.steps = list(steps or [])
        self.notes = list(notes or [])

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        """Qualified names of the modules to be swapped."""
        return [e.name for e in self.entries]

    @property
    def params_before(self) -> int:
        return _n_params(self.model)

    @property
    def keeps_output(self) -> bool:
        """Whether the rewritten model computes exactly what the planned one does, before training."""
        return all(e.keeps_output for e in self.entries)

    @property
    def params_after(self) -> int:
        # Entries are disjoint (nested matches are pruned), so the differences add up.
        return self.params_before + sum(e.params_after - e.params_before for e in self.entries)

    def apply(self, inplace: bool = False) -> nn.Module:
        """Perform the plan on the planned model; see :func:`apply`."""
        return apply(self.model, self, inplace=inplace)

    def __add__(self, other: Plan) -> Plan:
        if not isinstance(other, Plan):
            return NotImplemented
        if other.model is not self.model:
            raise ValueError("can only add plans made for the same model instance")
        _check_disjoint(self.entries + other.entries)
        return Plan(
            self.model,
            self.entries + other.entries,
            self.skipped + other.skipped,
            self.steps + other.steps,
            self.notes + [n for n in other.notes if n not in self.notes],
        )

    def key_map(self, rewritten: nn.Module) -> dict[str, str]:
        """``{key in rewritten: key in the planned model}`` for every state-dict entry that comes from it.

        Untouched modules keep their keys; a swapped module's entries map through its carried weights
        (``body.4.conv.weight ← body.4.weight``); new weights are absent. What an optimizer state or a
        trained checkpoint needs to follow the parameters through surgery.

        >>> net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        >>> from dynfilter.surgery import replace
        >>> p = plan(net, "1", replace.conv_then_dconv())
        >>> {k: v for k, v in p.key_map(p.apply()).items() if k != v}
        {'1.conv.weight': '1.weight', '1.conv.bias': '1.bias'}
        """
        old = set(self.model.state_dict())
        prefixes = sorted(((n, e) for e in self.entries for n in e.names), key=lambda ne: -len(ne[0]))
        out: dict[str, str] = {}
        for key in unwrap(rewritten)[0].state_dict():
            match = next(((n, e) for n, e in prefixes if n == "" or key == n or key.startswith(n + ".")), None)
            if match is None:
                if key in old:
                    out[key] = key
                continue
            name, entry = match
            local = key[len(name) + 1:] if name else key
            if local in entry.carried:
                out[key] = f"{name}.{entry.carried[local]}" if name else entry.carried[local]
        return out

    def rows(self) -> list[dict]:
        """Swapped entries as plain data."""
        return [e.row() for e in self.entries]

    def __str__(self) -> str:
        lines = [f"Surgery plan for {type(self.model).__name__}: {len(self)} replacement(s)"]
        lines += [f"  step: {s}" for s in self.steps]
        header = ("name", "old → new", "params before → after", "carried weights", "output")
        table = [
            (
                _shown(e.name) + "".join(f" (= {_shown(a)})" for a in e.aliases),
                f"{_describe(e.old)} → {_describe(e.new)}",
                f"{e.params_before:,} → {e.params_after:,}",
                _summarise_carried(e.new, e.carried),
                "kept" if e.keeps_output else "changed",
            )
            for e in self.entries
        ]
        if table:
            widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
            for r in [header, *table]:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        before, after = self.params_before, self.params_after
        lines.append(f"total parameters: {before:,} → {after:,} ({after - before:+,})")
        changed: dict[str, list[str]] = {}
        for e in self.entries:
            if not e.keeps_output:
                changed.setdefault(e.output_note, []).append(_shown(e.name))
        for note, names in changed.items():
            more = f", … and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
            lines.append(f"output changed at {', '.join(names[:_MAX_LISTED])}{more}: {note}")
        if self.skipped:
            lines.append(f"matched but not replaced ({len(self.skipped)}):")
            by_reason: dict[tuple[str, str], list[str]] = {}
            for e in self.skipped:
                by_reason.setdefault((_describe(e.old), e.reason or ""), []).append(_shown(e.name))
            for (kind, reason), names in by_reason.items():
                more = f", … and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
                lines.append(f"  {kind} {', '.join(names[:_MAX_LISTED])}{more}: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Plan: {len(self)} replacement(s) in {type(self.model).__name__}: {self.names}>"


def _is_under(name: str, parent: str) -> bool:
    return name != parent and (parent == "" or name.startswith(parent + "."))


def _check_disjoint(entries: list[Entry]) -> None:
    names = [n for e in entries for n in e.names]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a == b or _is_under(a, b) or _is_under(b, a):
                raise ValueError(f"plans overlap: {_shown(a)!r} and {_shown(b)!r} would both be rewritten")


def _module_groups(model: nn.Module) -> list[tuple[tuple[str, ...], nn.Module]]:
    """Every module once, in ``named_modules`` order, with all the names it is reachable under."""
    groups: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        groups.setdefault(id(module), ([], module))[0].append(name)
    return [(tuple(names), module) for names, module in groups.values()]


def _listing(groups: list[tuple[tuple[str, ...], nn.Module]]) -> str:
    shown = [f"{_shown(names[0])} ({type(m).__name__})" for names, m in groups[:_MAX_LISTED]]
    more = f", … and {len(groups) - _MAX_LISTED} more" if len(groups) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def _reference_tensor(*modules: nn.Module) -> torch.Tensor | None:
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                return t
    return None


def _settle(new: nn.Module, old: nn.Module, model: nn.Module) -> nn.Module:
    """Put ``new`` on ``old``'s device and dtype (the model's, if ``old`` has no tensors) and training flag."""
    ref = _reference_tensor(old, model)
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    return new.train(old.training)


@torch.no_grad()
def _copy_carried(old: nn.Module, new: nn.Module, carried: dict[str, str]) -> None:
    old_sd, new_sd = old.state_dict(), new.state_dict()
    for new_key, old_key in carried.items():
        src, dst = old_sd[old_key], new_sd[new_key]
        if src.shape != dst.shape:
            raise ValueError(f"cannot carry {old_key} {tuple(src.shape)} into {new_key} {tuple(dst.shape)}")
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)


def _outermost(
    groups: list[tuple[tuple[str, ...], nn.Module]],
) -> tuple[list[tuple[tuple[str, ...], nn.Module]], list[Entry]]:
    """Split eligible matches into those not inside another one, and skipped entries for the rest."""
    all_names = {n for names, _ in groups for n in names}
    outer, nested = [], []
    for names, m in groups:
        parent = next((p for n in names for p in all_names if _is_under(n, p)), None)
        if parent is None:
            outer.append((names, m))
        else:
            why = f"inside {_shown(parent)!r}, which is also selected"
            nested.append(Entry(names[0], m, aliases=names[1:], reason=why))
    return outer, nested


def _build(replacement: Replacement, names: tuple[str, ...], old: nn.Module, model: nn.Module) -> Entry:
    """The entry for one chosen module: its new module and carried weights, or why the build declined."""
    private = copy.deepcopy(old)  # builders may reuse it; the model itself is never touched
    try:
        new = replacement.build(names[0], private)
    except TypeError as exc:  # e.g. a block keyword argument the block does not take
        message = f"{replacement.label} could not build a replacement for {_shown(names[0])!r}: {exc}"
        raise ValueError(message) from None
    except ValueError as exc:
        new, why = None, f"declined: {exc}"
    else:
        why = "declined by the factory (returned None)"
    if new is None:
        return Entry(names[0], old, aliases=names[1:], reason=why, replacement=replacement.label)
    carried = replacement.carry(private, new)
    _settle(new, old, model)
    _copy_carried(private, new, carried)
    note = replacement.preserve_reason(names[0], old)
    return Entry(names[0], old, new=new, aliases=names[1:], carried=carried, replacement=replacement.label,
                 keeps_output=note is None, output_note=note or "")


def plan(
    model: nn.Module,
    select: SelectorLike,
    replace: ReplacementLike,
    *,
    position: Position = None,
    exclude: SelectorLike | None = None,
    strict: bool = True,
    shared: str = "tie",
    preserve_output: bool = False,
) -> Plan:
    """Plan to replace the submodules of ``model`` that ``select`` picks; ``model`` is not changed.

    Steps: (1) every module (root included, each shared instance once) matching ``select`` under any of
    its names and ``exclude`` under none is a *match*; (2) the replacement says whether each match can
    take it; (3) among eligible matches, any inside another eligible match is dropped (outermost wins);
    (4) ``position`` chooses among the rest, in model order; (5) the new modules are built.

    Args:
        model (nn.Module): the model; ``torch.compile``/``DataParallel``/DDP wrappers are unwrapped.
        select: a :class:`~dynfilter.surgery.select.Selector`, a module class or tuple of classes, a
            name glob, or ``fn(name, module) -> bool``.
        replace: a :class:`~dynfilter.surgery.replace.Replacement` or ``fn(name, module) -> nn.Module``.
        position: ``None`` (all), ``"first"``, ``"middle"`` (index ``(n − 1) // 2``), ``"last"``, an int, a
            slice or a list of ints, counted over the eligible matches.
        exclude: anything ``select`` accepts; matching modules are left alone.
        strict (bool): raise when nothing matches, when (without ``position``) a match cannot take the
            replacement, or when a position finds no eligible match. Non-strict plans skip and report.
        shared (str): ``"tie"`` points every name of a shared module at one new module; ``"error"`` raises.
        preserve_output (bool): use the replacement's output-keeping form, so that the rewritten model
            computes exactly what ``model`` does until it is trained; a match the replacement cannot
            keep the output of is ineligible (strict plans raise, naming the reason).

    Returns:
        Plan: the swaps, the skipped matches with reasons, and notes.

    Raises:
        ValueError: see ``strict`` and ``shared``; the message lists the candidates or the reasons.

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    >>> from dynfilter.surgery import replace
    >>> plan(net, nn.Conv2d, replace.conv_then_dconv(), position="last").names
    ['2']
    """
    if shared not in ("tie", "error"):
        raise ValueError(f"shared must be 'tie' or 'error', got {shared!r}")
    check_position(position)
    model, notes = unwrap(model)
    selector: Selector = as_selector(select)
    excluded = as_selector(exclude) if exclude is not None else None
    replacement: Replacement = as_replacement(replace)
    if preserve_output:
        replacement = replacement.preserving()
    step = f"{replacement.label} on {selector.description}"
    step += f", position {position!r}" if position is not None else ""
    step += f", excluding {excluded.description}" if excluded is not None else ""
    step += ", keeping the output" if preserve_output else ""

    groups = _module_groups(model)
    matches = [
        (names, m)
        for names, m in groups
        if any(selector(n, m) for n in names) and not (excluded and any(excluded(n, m) for n in names))
    ]
    if not matches:
        if strict:
            raise ValueError(
                f"selector {selector.description} matched nothing in {type(model).__name__}; "
                f"the candidates were: {_listing(groups)}"
            )
        return Plan(model, [], [], [step], notes + [f"selector {selector.description} matched nothing"])

    eligible, ineligible = [], []
    for names, m in matches:
        why = replacement.reason(names[0], m)
        if why is None and preserve_output:
            note = replacement.preserve_reason(names[0], m)
            if note is not None and strict:
                raise ValueError(
                    f"preserve_output=True, but {replacement.label} cannot keep the output at {_shown(names[0])!r} "
                    f"({_describe(m)}): {note}. Pass strict=False to skip such matches"
                )
            why = None if note is None else f"cannot keep the output: {note}"
        if why is None:
            eligible.append((names, m))
        else:
            ineligible.append(Entry(names[0], m, aliases=names[1:], reason=why, replacement=replacement.label))
    outer, nested = _outermost(eligible)
    skipped = ineligible + nested

    candidates = {names[0]: (names, m) for names, m in outer}
    try:
        chosen = set(pick(list(candidates), position))
    except ValueError as exc:
        reasons = "; ".join(f"{_shown(e.name)}: {e.reason}" for e in ineligible)
        message = f"{exc}" + (f" (not eligible: {reasons})" if reasons else "")
        if strict:
            raise ValueError(message) from None
        chosen = set()
        notes.append(message)
    if strict and position is None and ineligible:
        reasons = "; ".join(f"{_shown(e.name)} ({_describe(e.old)}): {e.reason}" for e in ineligible)
        raise ValueError(
            f"{len(ineligible)} match(es) of {selector.description} cannot take {replacement.label}: {reasons}. "
            "Narrow the selector, add exclude=, pick a position=, or pass strict=False to skip them"
        )

    entries = []
    for first, (names, m) in candidates.items():
        if first not in chosen:
            skipped.append(Entry(first, m, aliases=names[1:], reason=f"not at position {position!r}"))
            continue
        if len(names) > 1:
            if shared == "error":
                raise ValueError(
                    f"{_shown(first)!r} is shared with {', '.join(map(repr, names[1:]))}; "
                    "pass shared='tie' to replace it once under every name"
                )
            notes.append(f"{_shown(first)} is shared with {', '.join(names[1:])}: all will point to one new module")
        entry = _build(replacement, names, m, model)
        if entry.reason is not None and strict:
            raise ValueError(f"{_shown(first)!r} ({_describe(m)}) cannot take {replacement.label}: {entry.reason}")
        (skipped if entry.reason is not None else entries).append(entry)
    if strict and not entries:
        raise ValueError(f"nothing to replace: every match of {selector.description} was skipped")
    order = {names[0]: i for i, (names, _) in enumerate(groups)}
    skipped.sort(key=lambda e: order[e.name])
    return Plan(model, entries, skipped, [step], notes)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise ValueError(f"the model has no submodule {name!r}; was the plan made for another model?") from None


def apply(model: nn.Module, plan: Plan, *, inplace: bool = False) -> nn.Module:
    """Perform ``plan`` on ``model`` (unwrapped) and return the rewritten model.

    ``model`` may be the planned model or another one with the same structure (e.g. freshly loaded
    weights): the carried weights are copied from the model given here, the rest of each new module
    comes from the plan. Untouched modules keep their parameters bit for bit.

    Args:
        model (nn.Module): the model to rewrite.
        plan (Plan): from :func:`plan` or a recipe.
        inplace (bool): rewrite ``model`` itself instead of a deep copy.

    Returns:
        nn.Module: the rewritten (unwrapped) model; the new module itself when the root was replaced.

    Raises:
        ValueError: a planned name is missing or holds a different type of module.

    >>> net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    >>> from dynfilter.surgery import replace
    >>> new = apply(net, plan(net, "0", replace.to_dconv()))
    >>> type(new[0]).__name__, type(net[0]).__name__
    ('DConv', 'Conv2d')
    """
    if not isinstance(plan, Plan):
        raise ValueError(f"apply expects a Plan, got {type(plan).__name__}")
    target, _ = unwrap(model)
    if not inplace:
        target = copy.deepcopy(target)
    # Every new module is built and checked before the first swap, so a failure leaves the model as it was.
    built = []
    for entry in plan.entries:
        old = _get(target, entry.name)
        if type(old) is not type(entry.old):
            raise ValueError(
                f"the plan expects {type(entry.old).__name__} at {_shown(entry.name)!r}, "
                f"this model has {type(old).__name__}"
            )
        new = _settle(copy.deepcopy(entry.new), old, target)
        _copy_carried(old, new, entry.carried)
        built.append((entry, new))
    root = target
    for entry, new in built:
        for name in entry.names:
            if name == "":
                root = new
                continue
            parent_name, _, leaf = name.rpartition(".")
            setattr(_get(target, parent_name), leaf, new)
    return root
