"""Helpers the tests share (`from helpers import …`: pytest puts tests/ on the path)."""

from __future__ import annotations

import functools

import pytest

from difflab.runs import checkpoint as ckpt


@functools.cache
def has_text() -> bool:
    """Whether the frozen MiniLM text encoder (the `text` extra and its weights) loads."""
    try:
        from difflab.nn.text_encoder import load_text_encoder

        load_text_encoder()
        return True
    except ImportError:
        return False


needs_text = pytest.mark.skipif(not has_text(), reason="the `text` extra is not installed")


def part_of(state: ckpt.TrainState, name: str) -> dict:
    """A part of a checkpoint by its old name: a module, the importance sampler or the log."""
    if name in ("model", "ema"):
        return state.modules[name]
    if name == "t_sampler":
        return {k.split(".", 1)[1]: v for k, v in state.extra.items()
                if k.startswith("tsampler.")}
    return getattr(state, name)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``difflab ARGV`` in this process: (exit code, stdout, stderr)."""
    from difflab.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> bool:
    """The CLI's answer to a user's mistake: exit code 2 and one line ``difflab: error: …``."""
    return code == 2 and err.count("\n") == 1 and err.startswith("difflab: error: ")
