"""Run directories and checkpoints: safetensors + JSON, written atomically, loaded without pickle.

A run directory holds::

    config.json              the TrainConfig (JSON)
    ema.safetensors          EMA weights — what `difflab sample` / `eval` use
    model.safetensors        raw weights
    checkpoint.safetensors   everything needed to resume exactly, in ONE file: raw and EMA
                             weights, AdamW state, torch RNG states, the importance sampler's
                             history of L_t and the loss log; step and optimiser
                             hyper-parameters in its metadata
    loss.csv                 the loss log (step, mean loss), rewritten with every checkpoint
    loss.png                 the loss curve, drawn when a training session ends
    metrics.json, samples.png, reverse_process.png, reverse_process.gif   written after training

Every file is written to a temporary file in the same directory, fsync'ed and renamed over the
old one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any moment leaves the
previous checkpoint intact. Resume reads only ``checkpoint.safetensors``, so it never mixes two
checkpoints. Nothing here unpickles: tensors go through safetensors, the rest through JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ..errors import DifflabError

FORMAT = "difflab-checkpoint/1"
CONFIG, EMA, MODEL, CHECKPOINT, METRICS = (
    "config.json", "ema.safetensors", "model.safetensors", "checkpoint.safetensors", "metrics.json"
)
LOSS_CSV, LOSS_PNG = "loss.csv", "loss.png"
RUN_FILES = (CONFIG, EMA, MODEL, CHECKPOINT, METRICS, LOSS_CSV, LOSS_PNG, "samples.png",
             "reverse_process.png", "reverse_process.gif")
CLASSIFIER = "classifier.safetensors"  # the weights of a noisy-classifier run (classifier_run)


class CheckpointError(DifflabError):
    """A run directory that is missing, incomplete or corrupt (the message is one line)."""


class RunExistsError(DifflabError):
    """The output directory already holds a run and neither overwrite nor resume was asked."""


# --- atomic files --------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: str | os.PathLike, tensors: dict[str, Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors are made contiguous CPU copies)."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file and its metadata; a missing or damaged file → CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupt ({_one_line(err)})") from None
    return tensors, metadata


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({_one_line(err)})") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


# --- run directories -----------------------------------------------------------------------------


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """The path of an existing run directory (one with a config.json), else CheckpointError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist; give a directory "
                              "written by 'difflab train'")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a difflab run directory (it has no {CONFIG}); "
                              "give a directory written by 'difflab train'")
    return run_dir


def prepare_run_dir(run_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``run_dir`` for a new run. An existing non-empty directory is an error unless
    ``overwrite``, and even then only difflab's own files are removed (never anything else)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunExistsError(
                f"run directory {run_dir} already exists; pass --overwrite to replace it "
                "or --resume to continue it"
            )
        if not (run_dir / CONFIG).is_file():
            raise RunExistsError(
                f"refusing to overwrite {run_dir}: it is not empty and not a difflab run directory"
            )
        for name in (*RUN_FILES, CLASSIFIER):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# --- training state ------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a resumed run needs, as plain tensors and numbers."""

    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any]  # torch.optim state_dict
    generator: Tensor  # uint8 state of the batch / noise torch.Generator
    torch_rng: Tensor  # uint8 state of torch's global CPU generator
    elapsed: float = 0.0  # training seconds so far, over all sessions
    # optional named tensors: the importance sampler's state (vlb.ImportanceSampler.state_dict)
    # and the loss log's (losslog.LossLog.state_dict); empty in runs saved before they existed
    t_sampler: dict[str, Tensor] = field(default_factory=dict)
    log: dict[str, Tensor] = field(default_factory=dict)


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()`` to tensors ("optim.<param>.<key>") and a JSON part."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors` (lists back to tuples, e.g. AdamW's betas)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in extra["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in extra["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: str | os.PathLike, state: TrainState) -> None:
    """Write checkpoint.safetensors, then model.safetensors and ema.safetensors (each atomic)."""
    run_dir = Path(run_dir)
    optim_tensors, optim_extra = optimizer_to_tensors(state.optimizer)
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.items()})
    tensors.update(optim_tensors)
    tensors.update({f"tsampler.{k}": v for k, v in state.t_sampler.items()})
    tensors.update({f"log.{k}": v for k, v in state.log.items()})
    tensors["rng.generator"] = state.generator
    tensors["rng.torch"] = state.torch_rng
    metadata = {"format": FORMAT, "step": str(state.step), "elapsed": repr(state.elapsed),
                "optimizer": json.dumps(optim_extra)}
    save_tensors(run_dir / CHECKPOINT, tensors, metadata)
    save_tensors(run_dir / MODEL, state.model, {"format": FORMAT, "step": str(state.step)})
    save_tensors(run_dir / EMA, state.ema, {"format": FORMAT, "step": str(state.step)})


def load_checkpoint(run_dir: str | os.PathLike) -> TrainState:
    """Read checkpoint.safetensors of a run; anything missing or malformed → CheckpointError."""
    path = Path(run_dir) / CHECKPOINT
    tensors, metadata = load_tensors(path)
    try:
        if metadata.get("format") != FORMAT:
            raise ValueError(f"unknown format {metadata.get('format')!r}")
        groups: dict[str, dict[str, Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {},
                                                "tsampler": {}, "log": {}}
        for name, value in tensors.items():
            prefix, rest = name.split(".", 1)
            groups[prefix][rest if prefix != "optim" else name] = value
        optimizer = optimizer_from_tensors(groups["optim"], json.loads(metadata["optimizer"]))
        return TrainState(
            step=int(metadata["step"]),
            model=groups["model"],
            ema=groups["ema"],
            optimizer=optimizer,
            generator=groups["rng"]["generator"],
            torch_rng=groups["rng"]["torch"],
            elapsed=float(metadata.get("elapsed", 0.0)),
            t_sampler=groups["tsampler"],
            log=groups["log"],
        )
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({_one_line(err)})") from None


def load_weights(run_dir: str | os.PathLike, which: str = "ema") -> dict[str, Tensor]:
    """The EMA ("ema") or raw ("model") weights of a run."""
    return load_tensors(check_run_dir(run_dir) / (EMA if which == "ema" else MODEL))[0]
