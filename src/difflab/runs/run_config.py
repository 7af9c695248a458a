"""A run directory's config.json: written in this format (``difflab-run/3``: format, kind,
components, the config by section and, for a distillation, its job), read in it and the two
before it.

- ``difflab-run/2`` is this format but for one meaning: a consistency-training run trained with
  its lr decayed linearly to 0 from the first update (or constant, with ``lr_schedule =
  "constant"``), whatever its ``lr_schedule``, ``warmup`` and ``lr_min_ratio`` said; it is read
  with the values it trained with (:func:`lr_as_trained`) and rewritten as /3 when it resumes.
- ``difflab-run/1``: a flat config, its kind read from ``method`` and the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .checkpoint import CLASSIFIER, CONFIG, KINDS, check_run_dir, read_json, weight_file, write_json

RUN_FORMAT = "difflab-run/3"
OLDER_RUN_FORMAT = "difflab-run/2"  # read as RUN_FORMAT after lr_as_trained (see above)


def write_run_config(run_dir: str | os.PathLike, kind: str, config: dict[str, Any],
                     job: dict[str, Any] | None = None) -> None:
    """config.json of a run of ``kind`` (:data:`KINDS`): format, kind, components, the config
    (by section) and, for a distillation, the ``job`` (teacher and settings) it resumes with."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    components = {name: {"weights": weight_file(name, False),
                         **({"ema": weight_file(name, True)} if ema else {})}
                  for name, (_, ema) in KINDS[kind].items()}
    payload = {"format": RUN_FORMAT, "kind": kind, "components": components, "config": config}
    if job is not None:
        payload["job"] = job
    write_json(Path(run_dir) / CONFIG, payload)


def read_run_config(run_dir: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, config dict, job dict) of a run directory, this format or the two before it (see
    the module's docstring). CheckpointError if invalid."""
    run_dir = check_run_dir(run_dir)
    raw = read_json(run_dir / CONFIG)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{run_dir / CONFIG} is corrupt (not a JSON object)")
    if "format" not in raw:  # difflab-run/1
        kind = "noisy-classifier" if (run_dir / CLASSIFIER).is_file() else raw.get("method",
                                                                                   "diffusion")
        if not isinstance(kind, str):
            raise CheckpointError(f"{run_dir / CONFIG} is corrupt (method {kind!r})")
        return kind, lr_as_trained(raw) if kind == "consistency-training" else raw, {}
    if raw["format"] not in (RUN_FORMAT, OLDER_RUN_FORMAT):
        raise CheckpointError(f"{run_dir / CONFIG} has format {raw['format']!r}, which this "
                              f"version of difflab cannot read (it reads {RUN_FORMAT}); upgrade "
                              "difflab")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise CheckpointError(f"{run_dir / CONFIG} is corrupt (kind {kind!r})")
    if not isinstance(raw.get("config"), dict):
        raise CheckpointError(f"{run_dir / CONFIG} is corrupt (its config is not a table)")
    job = raw.get("job") or {}
    if not isinstance(job, dict):
        raise CheckpointError(f"{run_dir / CONFIG} is corrupt (its job is not a table)")
    if raw["format"] == OLDER_RUN_FORMAT and kind == "consistency-training":
        return kind, lr_as_trained(raw["config"]), job
    return kind, raw["config"], job


def lr_as_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The config (flat or by section) of a consistency-training run of format 1 or 2 with the
    learning rate it trained with: no warm-up, and unless ``lr_schedule = "constant"`` a linear
    decay to 0 (then its ``lr_schedule``, ``warmup`` and ``lr_min_ratio`` were not read)."""
    sectioned = isinstance(config.get("optimiser"), dict)
    fields = dict(config["optimiser"] if sectioned else config)
    fields["warmup"] = 0
    if fields.get("lr_schedule", "cosine") != "constant":
        fields.update(lr_schedule="linear", lr_min_ratio=0.0)
    return {**config, "optimiser": fields} if sectioned else fields
