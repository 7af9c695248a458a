"""Flags generated from the fields of :class:`difflab.config.TrainConfig` (``train`` and
``train-classifier``), their help text, and the config built from them, with the config's
errors rewritten to name the flag (``config key 'loss' = 'hybrid'`` → ``--loss 'hybrid'``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from ..config import TrainConfig, field_help, load_config
from .common import UsageError, flag, one_line

_TYPES = {"int": int, "float": float, "str": str}
ALIASES = {"method": ("--objective",)}  # `difflab train --objective dsm` = `--method dsm`


def add_config_flags(p: argparse.ArgumentParser, names: Iterable[str] | None = None, *,
                     show_defaults: bool = True) -> None:
    """One flag per TrainConfig field (those in ``names``, default all), default None (not
    given); bool fields get --x/--no-x."""
    defaults = TrainConfig()
    wanted = None if names is None else set(names)
    for f in fields(TrainConfig):
        if wanted is not None and f.name not in wanted:
            continue
        text = field_help(f.name)  # the help beside the field (difflab.config)
        if show_defaults and "(default" not in text:  # a help text may state its own
            text += f" (default: {getattr(defaults, f.name)!r})"
        if str(f.type) == "bool":
            p.add_argument(flag(f.name), dest=f.name, default=None, help=text,
                           action=argparse.BooleanOptionalAction)
            continue
        p.add_argument(flag(f.name), *ALIASES.get(f.name, ()), dest=f.name,
                       type=_TYPES[str(f.type)], default=None,
                       metavar=f.name if f.name == "T" else f.name.upper(), help=text)


def given_fields(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """{field: value} of the config flags given on the command line."""
    names = [f.name for f in fields(TrainConfig)] if names is None else names
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def config_from_flags(preset: str | None, values: dict[str, Any],
                      base: TrainConfig | None = None) -> TrainConfig:
    """``load_config(preset, values)`` (or, with ``base``, ``base`` with ``values`` applied);
    its errors (a bad value, a malformed or missing preset) become one :class:`UsageError`
    that names the flags given."""
    try:
        if base is not None:
            return TrainConfig.from_dict(values, base=base)
        return load_config(preset, values)
    except (ValueError, OSError) as err:
        if isinstance(err, OSError) and err.filename is None:
            raise
        msg = one_line(err)
        for f in fields(TrainConfig):  # "config key 'loss' = 'hybrid'" → "--loss 'hybrid'"
            msg = msg.replace(f"config key {f.name!r} = ", f"{flag(f.name)} ")
        for key in values:
            msg = msg.replace(f"config key {key!r}", flag(key))
        raise UsageError(msg) from None
