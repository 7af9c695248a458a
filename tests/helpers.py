"""Helpers the tests share (`from helpers import …`: pytest puts tests/ on the path)."""

from __future__ import annotations

from difflab.runs import checkpoint as ckpt


def part_of(state: ckpt.TrainState, name: str) -> dict:
    """A part of a checkpoint by its old name: a module, the importance sampler or the log."""
    if name in ("model", "ema"):
        return state.modules[name]
    if name == "t_sampler":
        return {k.split(".", 1)[1]: v for k, v in state.extra.items()
                if k.startswith("tsampler.")}
    return getattr(state, name)
