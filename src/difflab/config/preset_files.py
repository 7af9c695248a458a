"""Presets: TOML files of config keys, flat or in sections, that may inherit from another.

A preset is flat (``steps = 1500``), in sections (``[optimiser]`` then ``steps = 1500``; see
``SECTIONS``), or both. ``base = "digits"`` at the top makes it start from another preset, whose
keys it overrides: ``base`` is the name of a built-in preset, or a path ending in ``.toml``
(relative to the file that names it). Bases resolve recursively; a cycle is an error. The
built-in presets live in ``difflab/config/presets/*.toml`` (``default`` is the swiss-roll model
that ``difflab train`` trains with no arguments).

Every problem is a one-line :class:`~difflab.errors.ConfigError` that names the key or file.
"""

from __future__ import annotations

import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checks import CONSISTENCY_METHODS, SCORE_METHODS
from .train_config import TrainConfig, flatten

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

BASE = "base"  # the key that names a preset's parent
# a consistency-training run evaluates with these unless its flags say otherwise (a preset's
# sampler is a diffusion sampler)
CONSISTENCY_EVAL = {"eval_sampler": "consistency", "eval_steps": 1, "eval_eta": 0.0}
# and a score network (method dsm or ssm) with annealed Langevin dynamics over its ladder
SCORE_EVAL = {"eval_sampler": "langevin", "eval_eta": 0.0}
# consistency training's learning rate unless flags say otherwise: linear decay to 0 from the
# first update (Song et al. 2023 keep it constant; here both a constant lr and the presets'
# warm-up and cosine, tuned for diffusion, gave iCT a worse 1-step FD on digits and on MNIST
# 16×16: benchmarks/results/ict_optimiser.md)
CONSISTENCY_TRAINING_LR = {"lr_schedule": "linear", "warmup": 0, "lr_min_ratio": 0.0}


def method_defaults(method: Any) -> dict[str, Any]:
    """The config values a method brings with it (see CONSISTENCY_EVAL, SCORE_EVAL,
    CONSISTENCY_TRAINING_LR); {} for diffusion and the others."""
    if method == "consistency-training":
        return {**CONSISTENCY_EVAL, **CONSISTENCY_TRAINING_LR}
    if method in CONSISTENCY_METHODS:
        return CONSISTENCY_EVAL
    return SCORE_EVAL if method in SCORE_METHODS else {}


def _builtin_root() -> Traversable:
    return resources.files("difflab") / "config" / "presets"


def builtin_presets() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_root().iterdir() if p.name.endswith(".toml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    """The flat table {field: value} of a preset, its bases applied: a path to a .toml file, or
    the name of a built-in preset."""
    return _merged(_layers(name_or_path, None, ()))


def load_config(preset: str | None = None, overrides: dict[str, Any] | None = None
                ) -> TrainConfig:
    """Defaults ← preset (if given) ← overrides (e.g. command-line flags; None values skipped).

    A layer (the defaults, each preset from the first base up, the overrides) that sets a method
    other than the one below it brings that method's own values (:func:`method_defaults`) with
    it: they override everything below (a base preset's sampler and learning rate were written
    for its own method) and its own keys override them. So ``--preset digits --method
    consistency-training`` and a preset ``base = "digits"`` that sets that method both decay the
    learning rate linearly without warm-up, unless they set ``lr_schedule`` or ``warmup``."""
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    method = TrainConfig().method
    values: dict[str, Any] = {}
    for layer in _layers(preset, None, ()) if preset else []:
        method = _apply(values, layer, method)
    cfg = TrainConfig.from_dict(values)
    given: dict[str, Any] = {}
    _apply(given, extra, method)
    return TrainConfig.from_dict(given, base=cfg)


def _apply(values: dict[str, Any], layer: dict[str, Any], method: str) -> str:
    """Put ``layer`` over ``values``, with the values of its method first if it sets a method
    other than ``method`` (the one below it); the method in force after it."""
    new = layer.get("method", method)
    if new != method:
        values.update(method_defaults(new))
    values.update(layer)
    return new


# --- reading and inheritance -------------------------------------------------------------------


def _layers(ref: str, near: Traversable | None, chain: tuple[str, ...]
            ) -> list[dict[str, Any]]:
    """The flat tables of the preset ``ref`` (named in a file in folder ``near``, None at the
    top) and of its bases, the first base first; ``chain`` is the presets being resolved below
    it."""
    where, file, folder = _locate(ref, near)
    if where in chain:
        cycle = " → ".join((*chain[chain.index(where):], where))
        raise ConfigError(f"config key {BASE!r}: presets inherit in a cycle: {cycle}")
    table = _parse(file, where)
    base = table.pop(BASE, None)
    flat = flatten(table, where=f"malformed preset {where}")
    if base is None:
        return [flat]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config key {BASE!r} in {where} must name a preset (a built-in name or "
                          f"a .toml path), got {type(base).__name__} {base!r}")
    return [*_layers(base, folder, (*chain, where)), flat]


def _merged(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """One flat table from ``layers``, each over the ones before it."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return out


def _locate(ref: str, near: Traversable | None) -> tuple[str, Traversable, Traversable]:
    """(a name for messages and cycle checks, the file, the folder its relative bases start
    from) of a preset reference. At the top a reference is a path if it ends in .toml or
    exists; inside a preset (``near`` given) only if it ends in .toml."""
    path = Path(ref)
    if near is None and (path.suffix == ".toml" or path.exists()):
        if not path.is_file():
            raise ConfigError(f"preset file {ref!r} does not exist")
        return str(path.resolve()), path, path.parent
    if near is not None and path.suffix == ".toml":
        file = path if path.is_absolute() else near / ref
        if not file.is_file():
            raise ConfigError(f"config key {BASE!r}: preset file {ref!r} does not exist "
                              f"(relative to {near})")
        where = str(Path(str(file)).resolve()) if isinstance(file, Path) else str(file)
        folder = file.parent if isinstance(file, Path) else near
        return where, file, folder
    root = _builtin_root()
    file = root / f"{ref}.toml"
    if not file.is_file():
        key = "" if near is None else f"config key {BASE!r}: "
        raise ConfigError(f"{key}unknown preset {ref!r}; built-in presets: "
                          f"{', '.join(builtin_presets())} (or give a path to a .toml file)")
    return f"built-in preset {ref!r}", file, root


def _parse(file: Traversable, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"malformed preset {where}: {err}") from None
