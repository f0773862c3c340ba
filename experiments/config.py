"""Experiment configs: packaged presets and user YAML files, command-line overrides, validation.

A config is a YAML mapping. Its top-level sections set the defaults of every study in it, and each
study may override any of them (deep merge). The sections are the typed settings of
:mod:`experiments.settings`, which own the defaults and check every key and value::

    seeds: [0]
    data:    {train: builtin-train, test: [builtin], data_root: null, channels: 3}
    noise:   {sigma: 50}
    train:   {iterations: 300, batch_size: 8, patch_size: 40, ...}
    test:    {seed: 20, seed_mode: fixed, recalibrate_bn: true, bn_batches: 100}
    measure: {size: [128, 128], latency_repeats: 10, latency_threads: 1}
    studies:
      dncnn:
        backbone: dncnn                     # any name in backbones.available()
        model: {batch_norm: true}           # fixed model arguments
        grid: {depth: [5, 10, 15], channels: [32, 64]}
        variants:
          baseline: {}
          dconv: {recipe: dncnn_dconv, recipe_kwargs: {}}
          dconv_warm: {recipe: dncnn_dconv, recipe_kwargs: {keep_conv: true}, protocol: warm_start, branch_at: 200}

A variant's ``protocol`` says how its enhanced model is trained (:data:`experiments.run.PROTOCOLS`):
``scratch`` (the default, as the paper) from the seed's initial weights for ``train.iterations`` steps, or
``warm_start``: surgery on the baseline of the same seed trained ``branch_at`` steps, keeping its output,
then trained to ``train.iterations`` on the baseline's own stream. ``test.recalibrate_bn`` re-estimates
BatchNorm statistics before testing (models without BatchNorm are tested as trained).

:data:`DEFAULTS` (the settings classes' defaults) fills whatever a file leaves out, so a user config can
be a few lines. Unknown keys and values of the wrong type are errors, naming the key (a typo must not
silently fall back to a default). The expansion of a study into runs lives
in :mod:`experiments.sweep`; this module only loads, merges and checks.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .settings import SECTIONS as SETTINGS
from .settings import plain, section

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "SECTIONS",
    "STUDY_KEYS",
    "preset_path",
    "load_config",
    "deep_merge",
    "set_path",
    "get_path",
    "apply_overrides",
    "validate_config",
    "study_config",
    "dump_config",
    "add_config_arguments",
    "config_from_args",
]

PRESETS: tuple[str, ...] = ("smoke", "quick", "standard", "paper", "budget")

DEFAULTS: dict[str, Any] = {
    "description": "",
    "seeds": [0],
    **{name: plain(cls()) for name, cls in SETTINGS.items()},
    "studies": {},
}

# Sections a study may override, and the keys a study holds besides them.
SECTIONS: tuple[str, ...] = tuple(SETTINGS)
STUDY_KEYS: tuple[str, ...] = ("backbone", "model", "grid", "variants", "seeds", "description") + SECTIONS
_VARIANT_KEYS = ("recipe", "recipe_kwargs", "protocol", "branch_at")
# Replaced whole rather than merged, so that a later file can drop grid axes or variants.
_REPLACED = ("grid", "variants")


def preset_path(name: str) -> Path:
    """The packaged YAML file of preset ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} (or pass --config FILE)")
    return Path(str(resources.files("experiments") / "presets" / f"{name}.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in: mappings merge key by key, anything else replaces.

    A study's ``grid`` and ``variants`` are replaced whole.

    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in _REPLACED:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_path(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"a config key path looks like 'train.iterations', got {path!r}")
    return parts


def get_path(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``path = "a.b"``; ``default`` where a key is missing."""
    node: Any = config
    for part in _parse_path(path):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``path = "a.b"``, creating mappings on the way."""
    parts = _parse_path(path)
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` strings (``--set train.iterations=50``); values are parsed as YAML.

    >>> apply_overrides({"train": {"iterations": 5}}, ["train.iterations=7", "seeds=[0, 1]"])
    {'train': {'iterations': 7}, 'seeds': [0, 1]}
    """
    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"an override looks like KEY=VALUE (e.g. train.iterations=100), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"the value of override {item!r} is not valid YAML: {exc}") from exc
        set_path(out, key.strip(), value)
    return out


def _check_keys(where: str, given: Mapping[str, Any], known: Iterable[str]) -> None:
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {known}")


def _check_sections(where: str, config: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> None:
    """Each section of ``config`` (merged over ``base``'s) must build its settings class."""
    for name in SECTIONS:
        if name in config:
            if not isinstance(config[name], Mapping):
                raise ValueError(f"{where}{name} must be a mapping, got {config[name]!r}")
            merged = deep_merge((base or {}).get(name) or {}, config[name])
            section(SETTINGS[name], merged, f"{where}{name}")


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first unknown key or malformed study of ``config``."""
    _check_keys("the config", config, DEFAULTS)
    _check_sections("", config)
    studies = config.get("studies") or {}
    if not isinstance(studies, Mapping):
        raise ValueError(f"studies must map a study name to its settings, got {studies!r}")
    for name, study in studies.items():
        if not isinstance(study, Mapping):
            raise ValueError(f"study {name!r} must be a mapping, got {study!r}")
        _check_keys(f"study {name!r}", study, STUDY_KEYS)
        _check_sections(f"study {name!r}: ", study, config)
        if "backbone" not in study:
            raise ValueError(f"study {name!r} names no backbone (add e.g. 'backbone: dncnn')")
        grid = study.get("grid") or {}
        if not isinstance(grid, Mapping):
            raise ValueError(f"study {name!r}: grid must map an axis to a list of values, got {grid!r}")
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"study {name!r}: grid axis {axis!r} needs a non-empty list of values, got {values!r}")
        variants = study.get("variants") or {"baseline": {}}
        if not isinstance(variants, Mapping):
            raise ValueError(
                f"study {name!r}: variants must map a name to {{recipe, recipe_kwargs, protocol, branch_at}}, got {variants!r}"
            )
        for vname, variant in variants.items():
            _check_keys(f"study {name!r} variant {vname!r}", variant or {}, _VARIANT_KEYS)


def load_config(
    preset: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Load a packaged preset or a user file over :data:`DEFAULTS`, then apply ``KEY=VALUE`` overrides.

    Args:
        preset: a name from :data:`PRESETS`.
        config: a YAML file; given together with ``preset`` it is merged over the preset.
        overrides: ``KEY=VALUE`` strings applied last.

    Returns:
        dict: the resolved, validated config.

    >>> load_config("smoke")["train"]["iterations"] > 0
    True
    """
    merged = copy.deepcopy(DEFAULTS)
    if preset is not None:
        path = preset_path(preset)
        merged = deep_merge(merged, _read_yaml(path))
        _validate_from(merged, f"preset {preset!r} ({path})")
    if config is not None:
        merged = deep_merge(merged, _read_yaml(Path(config)))
        _validate_from(merged, f"config file {config}")
    overrides = list(overrides)
    merged = apply_overrides(merged, overrides)
    _validate_from(merged, "the --set override(s) " + ", ".join(overrides) if overrides else "the defaults")
    return merged


def _validate_from(config: Mapping[str, Any], source: str) -> None:
    """:func:`validate_config`, its message prefixed with the source that was merged last (a file, ``--set``).

    Each source is checked right after it is merged, so the first one that brings a bad value is named.
    """
    try:
        validate_config(config)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def study_config(config: Mapping[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    """``(name, settings)`` of one study, its sections merged over the config's top-level ones.

    ``name`` may be ``None`` when the config holds exactly one study.
    """
    studies = config.get("studies") or {}
    if not studies:
        raise ValueError("the config defines no studies (add a 'studies:' mapping)")
    if name is None:
        if len(studies) != 1:
            raise ValueError(f"the config defines several studies; name one of: {', '.join(studies)}")
        name = next(iter(studies))
    if name not in studies:
        raise ValueError(f"unknown study {name!r}; this config defines: {', '.join(studies)}")
    study = studies[name]
    resolved: dict[str, Any] = {"name": name, "backbone": study["backbone"]}
    resolved["model"] = dict(study.get("model") or {})
    resolved["grid"] = dict(study.get("grid") or {})
    resolved["variants"] = {k: dict(v or {}) for k, v in (study.get("variants") or {"baseline": {}}).items()}
    resolved["seeds"] = list(study.get("seeds", config.get("seeds", [0])))
    for part in SECTIONS:
        resolved[part] = deep_merge(config.get(part) or {}, study.get(part) or {})
    return name, resolved


def dump_config(config: Mapping[str, Any]) -> str:
    """``config`` as YAML text, keys in the order given."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def add_config_arguments(parser: Any, default_preset: str | None = None) -> None:
    """Add ``--preset``, ``--config`` and ``--set KEY=VALUE`` to an argparse parser."""
    parser.add_argument(
        "--preset", choices=PRESETS, default=None,
        help=f"a packaged config (default: {default_preset or 'none'}); see experiments/presets/",
    )
    parser.add_argument("--config", metavar="FILE", help="a YAML config of your own (merged over --preset if both)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.batch_size=8 (repeatable; values are YAML)",
    )


def config_from_args(args: Any, shortcuts: Mapping[str, str], default_preset: str | None = None) -> dict[str, Any]:
    """Load the config named by ``args.preset``/``args.config``, then ``args.overrides``, then the
    shortcut flags: ``shortcuts`` maps an ``args`` attribute to a config path (set when not ``None``)."""
    preset = args.preset if args.preset is not None or args.config is not None else default_preset
    config = load_config(preset, args.config, args.overrides)
    flags = []
    for attr, path in shortcuts.items():
        value = getattr(args, attr, None)
        if value is not None:
            set_path(config, path, value)
            flags.append(f"--{attr.replace('_', '-')}")
    _validate_from(config, "the flag(s) " + ", ".join(flags) if flags else "the config")
    return config
