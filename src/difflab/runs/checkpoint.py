"""Run directories and checkpoints: safetensors + JSON, written atomically, loaded without pickle.

A run directory holds::

    config.json              {"format": "difflab-run/3", "kind": …, "components": {…},
                              "config": the TrainConfig by section, "job": …}
    <component>.safetensors       raw weights of each component (e.g. denoiser, classifier)
    <component>.ema.safetensors   its EMA weights — what `difflab sample` / `eval` use
    checkpoint.safetensors   everything needed to resume exactly, in ONE file: every module of
                             the objective (raw and EMA weights, a distillation round's teacher),
                             AdamW state, torch RNG states, the objective's own state (the
                             importance sampler's history of L_t) and the loss log; step and
                             optimiser hyper-parameters in its metadata
    loss.csv                 the loss log (step, mean loss), rewritten with every checkpoint
    loss.png                 the loss curve, drawn when a training session ends
    metrics.json, samples.png, reverse_process.png, reverse_process.gif   written after training

A run's ``kind`` says what it is ("diffusion", "consistency-training", "progressive",
"consistency-distillation", "noisy-classifier", …) and its ``components`` which networks it has
(:data:`KINDS`); a later model kind (a latent model: autoencoder + denoiser) is one more entry.
config.json is written and read by :mod:`.run_config`, which also reads the formats before
this one. Runs of ``difflab-run/1`` (``ema.safetensors`` and ``model.safetensors``, or
``classifier.safetensors``, and a checkpoint with keys model.*, ema.*) still load and resume.

Every file is written to a temporary file in the same directory, fsync'ed and renamed over the
old one (``os.replace`` is atomic on POSIX and Windows), so a run killed at any moment leaves the
previous checkpoint intact. Resume reads only ``checkpoint.safetensors``, so it never mixes two
checkpoints. Nothing here unpickles: tensors go through safetensors, the rest through JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ..errors import CheckpointError, DifflabError
from ..training.state import TrainState
from .lock import LOCK_FILE
from .safe_files import (
    CheckpointWriteError,
    header_problem,
    kept_checkpoint,
    step_of,
    write_error,
)

FORMAT = "difflab-checkpoint/2"
LEGACY_FORMAT = "difflab-checkpoint/1"  # keys model.*, ema.*, tsampler.* (read, never written)
# the components of each kind of run, and which module of the objective's checkpoint holds
# each component's raw and EMA weights (None: no EMA file)
KINDS: dict[str, dict[str, tuple[str, str | None]]] = {
    "diffusion": {"denoiser": ("model", "ema")},
    "consistency-training": {"denoiser": ("model", "ema")},  # ema = the target θ⁻
    "consistency-distillation": {"denoiser": ("model", "ema")},
    "progressive": {"denoiser": ("model", "model")},  # a round's student (no EMA)
    "noisy-classifier": {"classifier": ("model", None)},
    # the autoencoder inside the trainer module "model" (beside its discriminator, which only
    # the checkpoint holds), and its EMA
    "autoencoder": {"autoencoder": ("model.ae", "ema")},
    "progressive-distillation": {},  # the job directory above the rounds: a checkpoint only
    "controlnet": {"control": ("model", "ema")},  # + its frozen base run in base/
    "dsm": {"denoiser": ("model", "ema")},  # a score network's bare net (difflab.ncsn)
    "ssm": {"denoiser": ("model", "ema")},
    # unCLIP (Weng eq. 34): a CLIP run; a prior and a decoder run, each with its CLIP run in clip/
    "clip": {"clip": ("model", "ema")},
    "unclip-prior": {"prior": ("model", "ema")},
    "unclip-decoder": {"decoder": ("model", "ema")},
}
CONFIG, EMA, MODEL, CHECKPOINT, METRICS = (
    "config.json", "ema.safetensors", "model.safetensors", "checkpoint.safetensors", "metrics.json"
)
LOSS_CSV, LOSS_PNG = "loss.csv", "loss.png"
RUN_FILES = (CONFIG, "denoiser.safetensors", "denoiser.ema.safetensors", CHECKPOINT, METRICS,
             LOSS_CSV, LOSS_PNG, "samples.png",
             "reverse_process.png", "reverse_process.gif")
# the files of other kinds of run (an autoencoder run's, a latent run's frozen autoencoder)
AUTOENCODER = "autoencoder.safetensors"  # a latent run's frozen autoencoder (runs/latent.py)
OTHER_FILES = (AUTOENCODER, "autoencoder.ema.safetensors", "reconstructions.png",
               *(weight_name for c in ("clip", "prior", "decoder")
                 for weight_name in (f"{c}.safetensors", f"{c}.ema.safetensors")))
CLASSIFIER = "classifier.safetensors"  # the weights of a noisy-classifier run (classifier_run)


class RunExistsError(DifflabError):
    """The output directory already holds a run and neither overwrite nor resume was asked."""


# --- atomic files --------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.
    A write that fails (disk full, read-only directory) leaves the old file as it was, removes
    its temporary file and raises :class:`CheckpointWriteError` (an OSError) in one line."""
    path = Path(path)
    try:
        write_replacing(path, data)
    except OSError as err:
        if isinstance(err, CheckpointWriteError):
            raise
        raise write_error(f"cannot write {path}: {err.strerror or one_line(err)}", err) from None
    _fsync_dir(path.parent)


def write_replacing(path: Path, data: bytes) -> None:
    """The temporary file, written, fsync'ed and renamed over ``path`` (removed on failure)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600 and the rename keeps that mode: give it the mode a plain
        # open() would (0666 less the umask), as the run directory itself gets
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # (a read-only file system may refuse this too)
            Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    problem = header_problem(data)
    if problem is not None:
        raise CheckpointError(f"{path} is corrupt ({problem})")
    try:
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
        if not (isinstance(metadata, dict)
                and all(isinstance(v, str) for v in metadata.values())):
            raise ValueError("its metadata is not a table of strings")
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, OverflowError,
            RecursionError) as err:
        raise CheckpointError(f"{path} is corrupt ({one_line(err)})") from None
    except BaseException as err:  # a panic inside the Rust parser (pyo3's PanicException)
        if type(err).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path} is corrupt ({one_line(err)})") from None
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
        raise CheckpointError(f"{path} is corrupt ({one_line(err)})") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


# --- run directories -----------------------------------------------------------------------------


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """The step of ``run_dir``'s checkpoint, read from its header alone (None if unreadable)."""
    return step_of(Path(run_dir) / CHECKPOINT)


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


def remove_stale_temps(run_dir: str | os.PathLike) -> None:
    """Delete the temporary files of writes that a killed process left half done (a write is
    a temporary file renamed over the old one; the old one is intact)."""
    for name in (*RUN_FILES, *OTHER_FILES, CLASSIFIER, EMA, MODEL, LOCK_FILE):
        for path in Path(run_dir).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)


def check_new_run_dir(run_dir: str | os.PathLike, overwrite: bool = False) -> bool:
    """RunExistsError where :func:`prepare_run_dir` would refuse ``run_dir``; else whether it
    holds files to replace. (A trainer's lock file, :mod:`.lock`, does not count.)"""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if not overwrite:
            raise RunExistsError(
                f"run directory {run_dir} already exists; pass --overwrite to replace it "
                "or --resume to continue it"
            )
        if not (run_dir / CONFIG).is_file():
            raise RunExistsError(
                f"refusing to overwrite {run_dir}: it is not empty and not a difflab run directory"
            )
        return True
    return False


def prepare_run_dir(run_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``run_dir`` for a new run. An existing non-empty directory is an error unless
    ``overwrite``, and even then only difflab's own files are removed (never anything else)."""
    run_dir = Path(run_dir)
    if check_new_run_dir(run_dir, overwrite):
        for name in (*RUN_FILES, *OTHER_FILES, CLASSIFIER, EMA, MODEL):  # and difflab-run/1's names
            (run_dir / name).unlink(missing_ok=True)
        remove_stale_temps(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# --- training state ------------------------------------------------------------------------------


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


def weight_file(component: str, ema: bool) -> str:
    """The weight file of a component: ``<component>.safetensors`` or ``<component>.ema…``."""
    return f"{component}.ema.safetensors" if ema else f"{component}.safetensors"


def save_checkpoint(run_dir: str | os.PathLike, state: TrainState,
                    kind: str | None = None) -> None:
    """Write checkpoint.safetensors, then each component's weight files of a run of ``kind``
    (:data:`KINDS`; None: the checkpoint only), each atomically."""
    run_dir = Path(run_dir)
    try:
        write_checkpoint(run_dir, state, kind)
    except OSError as err:
        reason = err.strerror or one_line(err)
        if isinstance(err, CheckpointWriteError):
            reason = str(err).rsplit(": ", 1)[-1]
        raise write_error(f"cannot write the checkpoint of step {state.step} in {run_dir}: "
                          f"{reason}; {kept_checkpoint(run_dir / CHECKPOINT)}", err) from None


def write_checkpoint(run_dir: Path, state: TrainState, kind: str | None) -> None:
    """The writes of :func:`save_checkpoint` (its OSErrors not yet reworded)."""
    optim_tensors, optim_extra = optimizer_to_tensors(state.optimizer)
    tensors = {f"module.{name}.{k}": v for name, sd in state.modules.items()
               for k, v in sd.items()}
    tensors.update(optim_tensors)
    tensors.update({f"extra.{k}": v for k, v in state.extra.items()})
    tensors.update({f"log.{k}": v for k, v in state.log.items()})
    tensors["rng.generator"] = state.generator
    tensors["rng.torch"] = state.torch_rng
    metadata = {"format": FORMAT, "step": str(state.step), "elapsed": repr(state.elapsed),
                "optimizer": json.dumps(optim_extra),
                "modules": json.dumps(sorted(state.modules))}
    save_tensors(run_dir / CHECKPOINT, tensors, metadata)
    meta = {"format": FORMAT, "step": str(state.step)}
    for component, (raw, ema) in KINDS.get(kind or "", {}).items():
        save_tensors(run_dir / weight_file(component, False), submodule(state.modules, raw),
                     meta)
        if ema is not None:
            save_tensors(run_dir / weight_file(component, True), submodule(state.modules, ema),
                         meta)


def submodule(modules: dict[str, dict[str, Tensor]], name: str) -> dict[str, Tensor]:
    """The state dict of ``name``: a module of the checkpoint ("model"), or a submodule of one
    ("model.ae": the keys of "model" under "ae.", that prefix removed)."""
    module, _, prefix = name.partition(".")
    state = modules[module]
    if not prefix:
        return state
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def load_checkpoint(run_dir: str | os.PathLike) -> TrainState:
    """Read checkpoint.safetensors of a run (this format or the one before it); anything
    missing or malformed → CheckpointError."""
    path = Path(run_dir) / CHECKPOINT
    tensors, metadata = load_tensors(path)
    try:
        fmt = metadata.get("format")
        if fmt not in (FORMAT, LEGACY_FORMAT):
            raise ValueError(f"unknown format {fmt!r}")
        modules: dict[str, dict[str, Tensor]] = {}
        groups: dict[str, dict[str, Tensor]] = {"optim": {}, "rng": {}, "extra": {}, "log": {}}
        for name, value in tensors.items():
            prefix, rest = name.split(".", 1)
            if fmt == LEGACY_FORMAT and prefix in ("model", "ema"):
                modules.setdefault(prefix, {})[rest] = value
            elif fmt == LEGACY_FORMAT and prefix == "tsampler":
                groups["extra"][name] = value
            elif prefix == "module":
                module, key = rest.split(".", 1)
                modules.setdefault(module, {})[key] = value
            else:
                groups[prefix][rest if prefix != "optim" else name] = value
        optimizer = optimizer_from_tensors(groups["optim"], json.loads(metadata["optimizer"]))
        return TrainState(
            step=int(metadata["step"]),
            modules=modules,
            optimizer=optimizer,
            generator=groups["rng"]["generator"],
            torch_rng=groups["rng"]["torch"],
            elapsed=float(metadata.get("elapsed", 0.0)),
            extra=groups["extra"],
            log=groups["log"],
        )
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({one_line(err)})") from None


def load_weights(run_dir: str | os.PathLike, which: str = "ema",
                 component: str = "denoiser") -> dict[str, Tensor]:
    """The EMA ("ema") or raw ("model") weights of a run's component (either format)."""
    run_dir = check_run_dir(run_dir)
    ema = which == "ema"
    path = run_dir / weight_file(component, ema)
    if not path.is_file() and ema:
        path = run_dir / weight_file(component, False)  # no EMA file: the raw weights
    if not path.is_file():  # difflab-run/1
        legacy = {"classifier": CLASSIFIER}.get(component, EMA if ema else MODEL)
        if (run_dir / legacy).is_file():
            path = run_dir / legacy
    return load_tensors(path)[0]
