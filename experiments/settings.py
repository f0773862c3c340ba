"""Typed settings of a run: frozen dataclasses that own every default and check every key and type.

A run's settings are :class:`RunSettings`: what to build (backbone, its arguments, the surgery recipe and
its arguments, the protocol), the seed, and one section per subject::

    RunSettings(backbone="dncnn", model={"depth": 5, "channels": 32}, variant="dconv", recipe="dncnn_dconv",
                seed=0, data=Data(...), noise=Noise(sigma=50), train=Train(iterations=300, ...), test=Test(...))

:meth:`RunSettings.to_dict` is the plain nested dict that is hashed into run ids and stored in
checkpoints; :meth:`RunSettings.from_dict` reads it back. Sections are built from YAML mappings by
:func:`section`, which refuses unknown keys (a typo must not fall back to a default) and values of the
wrong type, naming the key and what was expected. :data:`SECTIONS` maps each config section to its class;
their defaults are the config defaults (:data:`experiments.config.DEFAULTS`). :class:`Measure` (MACs
and latency of a finished model) belongs to a study, not to a run, and is not hashed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "Data",
    "Noise",
    "Train",
    "Test",
    "Measure",
    "PRECISIONS",
    "RunSettings",
    "SECTIONS",
    "RUN_SECTIONS",
    "section",
    "plain",
]


@dataclass(frozen=True)
class Data:
    """Images: the training set (a set name or folder, or ``{noisy: DIR, clean: DIR}`` for paired real
    noise), the test sets, where standard sets live, and the channels everything is converted to."""

    train: str | dict = "builtin-train"
    test: tuple[str, ...] = ("builtin",)
    data_root: str | None = None
    channels: int = 3


@dataclass(frozen=True)
class Noise:
    """The synthetic noise: AWGN of ``sigma`` on the 0–255 scale, for training and testing."""

    sigma: float = 50.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"noise.sigma must be a finite number >= 0 on the 0-255 scale, got {self.sigma!r}")


#: ``train.precision`` values: float32, bfloat16 autocast, float16 autocast with a gradient scaler.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Train:
    """Training (defaults: the published colour AWGN training, spec §8a): steps, patches, Adam + StepLR.

    ``lr`` is multiplied by ``lr_gamma`` every ``lr_step`` steps; ``batch_size`` is the global batch;
    ``loss`` is ``auto`` (L2, or Charbonnier for paired data), ``l2``, ``l2_sum`` or ``charbonnier``;
    ``augment`` draws one of the 8 flips/rotations per patch; a checkpoint is written every
    ``checkpoint_every`` steps and at the end. ``device`` and ``threads`` say where it runs.

    How each step runs (:mod:`experiments.train_step`): ``precision`` is ``fp32`` (the default),
    ``bf16`` (forward under bfloat16 autocast) or ``fp16`` (float16 autocast with a gradient scaler);
    ``channels_last`` keeps the weights and batches in NHWC memory; ``compile`` runs the forward, loss and
    backward under ``torch.compile``. Weights and the optimiser stay float32 in every case.

    >>> Train(iterations=10, lr_step=4).betas
    (0.9, 0.999)
    """

    iterations: int = 1000
    batch_size: int = 16
    patch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_step: int = 200_000
    lr_gamma: float = 0.5
    loss: str = "auto"
    augment: bool = True
    checkpoint_every: int = 200
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.iterations < 0:
            raise ValueError(f"train.iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1 or self.patch_size < 1:
            raise ValueError(f"train.batch_size and train.patch_size must be positive, got {self.batch_size} and {self.patch_size}")
        if self.lr_step < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"train.lr_step and train.checkpoint_every must be >= 1, got {self.lr_step} and {self.checkpoint_every}"
            )
        if not (self.lr > 0 and 0 < self.lr_gamma <= 1):
            raise ValueError(f"need train.lr > 0 and 0 < train.lr_gamma <= 1, got {self.lr} and {self.lr_gamma}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"train.threads must be a positive int or null, got {self.threads}")


@dataclass(frozen=True)
class Test:
    """Testing: the noise seed and how it is used per image (the published colour protocol re-seeds
    with 20 before every image), an optional image limit, and BatchNorm re-estimation before testing
    (over ``bn_batches`` noisy training batches; a no-op for models without BatchNorm)."""

    __test__ = False  # not a pytest test class
    seed: int = 20
    seed_mode: str = "fixed"
    max_images: int | None = None
    recalibrate_bn: bool = True
    bn_batches: int = 100

    def __post_init__(self) -> None:
        if self.seed_mode not in ("fixed", "per_image"):
            raise ValueError(f"test.seed_mode must be fixed or per_image, got {self.seed_mode!r}")
        if self.bn_batches < 1:
            raise ValueError(f"test.bn_batches must be >= 1, got {self.bn_batches}")


@dataclass(frozen=True)
class Measure:
    """Cost of a finished model: MACs of one ``1×C×H×W`` image of ``size`` and its median latency."""

    size: tuple[int, int] = (128, 128)
    latency_repeats: int = 10
    latency_warmup: int = 2
    latency_threads: int | None = 1


#: Config section → its settings class.
SECTIONS: dict[str, type] = {"data": Data, "noise": Noise, "train": Train, "test": Test, "measure": Measure}
#: The sections that belong to a run (and its hash); ``measure`` belongs to the study.
RUN_SECTIONS: tuple[str, ...] = ("data", "noise", "train", "test")

_NONE = type(None)


def _kinds(annotation: str) -> tuple[str, ...]:
    """``"int | None"`` → ``("int", "None")``: the few annotation forms these classes use."""
    return tuple(part.strip() for part in annotation.split("|"))


def _convert(where: str, value: Any, annotation: str) -> Any:
    """``value`` as the annotated type, or a ``ValueError`` that names ``where`` and what was expected."""
    kinds = _kinds(annotation)
    if value is None and "None" in kinds:
        return None
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "int" and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "dict" and isinstance(value, Mapping):
            return dict(value)
        if kind.startswith("tuple["):
            inner = [k.strip() for k in kind[len("tuple["):-1].split(",")]
            if isinstance(value, str) and inner == ["str", "..."]:  # one name given alone
                return (value,)
            if isinstance(value, (list, tuple)) and inner[-1] == "...":
                return tuple(_convert(f"{where}[{i}]", v, inner[0]) for i, v in enumerate(value))
            if isinstance(value, (list, tuple)) and len(value) == len(inner):
                return tuple(_convert(f"{where}[{i}]", v, k) for i, (v, k) in enumerate(zip(value, inner)))
    expected = " or ".join("null" if k == "None" else k for k in kinds)
    raise ValueError(f"{where} must be {expected}, got {value!r}")


def section(cls: type, mapping: Mapping[str, Any] | None, where: str | None = None) -> Any:
    """An instance of settings class ``cls`` from a YAML mapping: unknown keys and wrong types are errors.

    Keys left out take the class's defaults. ``where`` names the section in messages (default: its config name).

    >>> section(Train, {"iterations": 5, "lr": 1}).lr
    1.0
    >>> section(Train, {"batch_size": 2.5})
    Traceback (most recent call last):
    ...
    ValueError: train.batch_size must be int, got 2.5
    >>> section(Noise, {"sigam": 25})
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['sigam'] in noise; known keys: ['sigma']
    """
    name = where or next((k for k, v in SECTIONS.items() if v is cls), cls.__name__.lower())
    mapping = dict(mapping or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {name}; known keys: {known}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: _convert(f"{name}.{k}", v, types[k]) for k, v in mapping.items()})


def plain(value: Any) -> Any:
    """Settings as YAML/JSON-ready data: dataclasses to dicts, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RunSettings:
    """Everything that determines what one run computes (see :mod:`experiments.run` for the protocols).

    Attributes:
        backbone (str): a name in ``backbones.available()``.
        model (dict): the backbone's arguments (``in_channels`` follows ``data.channels``).
        variant (str): the variant's name in its study (a label).
        recipe (str, optional): the surgery recipe applied to the backbone; ``None`` for a baseline.
        recipe_kwargs (dict): its arguments.
        protocol (str): ``scratch`` or ``warm_start``.
        branch_at (int, optional): for ``warm_start``, the baseline's steps before the surgery.
        seed (int): initial weights, patches, flips and noise.
        data, noise, train, test: the sections.
    """

    backbone: str
    model: dict = field(default_factory=dict)
    variant: str = "baseline"
    recipe: str | None = None
    recipe_kwargs: dict = field(default_factory=dict)
    protocol: str = "scratch"
    branch_at: int | None = None
    seed: int = 0
    data: Data = field(default_factory=Data)
    noise: Noise = field(default_factory=Noise)
    train: Train = field(default_factory=Train)
    test: Test = field(default_factory=Test)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seeds must be integers, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict: what is hashed into run ids and stored in checkpoints.

        >>> sorted(RunSettings("dncnn").to_dict())[:4]
        ['backbone', 'branch_at', 'data', 'model']
        """
        return plain(self)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> RunSettings:
        """Read :meth:`to_dict`'s output back (keys it lacks take their defaults; unknown keys are errors).

        >>> s = RunSettings("dncnn", model={"depth": 5}, train=Train(iterations=7))
        >>> RunSettings.from_dict(s.to_dict()) == s
        True
        """
        settings = dict(settings)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in the run settings; known keys: {known}")
        if "backbone" not in settings:
            raise ValueError("the run settings name no backbone")
        fields = {k: v for k, v in settings.items() if k not in RUN_SECTIONS}
        fields["model"] = dict(fields.get("model") or {})
        fields["recipe_kwargs"] = dict(fields.get("recipe_kwargs") or {})
        sections = {k: section(SECTIONS[k], settings.get(k)) for k in RUN_SECTIONS}
        return cls(**fields, **sections)

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with ``changes``; a dotted key sets one field of a section (``**{"train.iterations": 5}``).

        >>> RunSettings("dncnn").replace(**{"train.iterations": 5}).train.iterations
        5
        """
        top: dict[str, Any] = {}
        for key, value in changes.items():
            head, _, rest = key.partition(".")
            if rest:
                current = top.get(head, getattr(self, head))
                top[head] = dataclasses.replace(current, **{rest: value})
            else:
                top[key] = value
        return dataclasses.replace(self, **top)
