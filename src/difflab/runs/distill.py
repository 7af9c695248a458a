"""Run directories for fast sampling: distilled students and consistency models as runs that
``difflab sample`` and ``difflab eval`` load like any other (Weng §"Fewer Sampling Steps &
Distillation"), trained by the one loop (:func:`difflab.training.fit`) with its checkpoints.

- :func:`difflab.runs.distill_progressive.distill_progressive` — Salimans & Ho 2022, Alg. 2
  (Weng Fig. 9-10): rounds N → N/2 → … from a run's EMA network. OUT is the job's directory
  (kind "progressive-distillation": the job's settings and ONE checkpoint, written every
  ``checkpoint_every`` updates, inside rounds too); round r is saved as ``OUT/steps-<N_r>``, a
  run of kind "progressive" whose config says ``prediction`` (x0, v) and
  ``distilled_steps = N_r``, and whose sampler defaults are DDIM, N_r steps, trailing spacing
  (the grid it was distilled on).
- :func:`difflab.runs.distill_consistency.distill_consistency` — consistency distillation,
  Song et al. 2023, Alg. 2 (Weng eq. 31), into a run of kind "consistency-distillation" (its
  checkpoint in the run directory).
- :func:`resume_distillation` (here) continues either from its checkpoint, exactly.

What both share is in :mod:`difflab.runs.distill_common`; this module resumes either and
gathers the public names. The network is built by
:func:`difflab.build.model.build_model` from the run's config; a consistency run's EMA weights
hold the target network θ⁻, its raw weights the online θ. Conditioning: the loops take
per-example ``cond_data`` (:func:`cond_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import checkpoint as ckpt
from .distill_common import (
    CHECKPOINT_EVERY,
    EpsOnly,
    check_free,
    cond_data,
    guided_teacher,
    load_teacher,
    raw_network,
)
from .distill_consistency import (
    DISTANCES,
    SOLVERS,
    distance_fn,
    distill_consistency,
    run_consistency,
)
from .distill_progressive import (
    DEFAULT_START_STEPS,
    distill_progressive,
    round_steps,
    run_progressive,
)
from .load import read_run


def resume_distillation(out: str | Path, *, progress: bool = False,
                        max_steps: int | None = None,
                        report: Callable[[Path, dict], None] | None = None):
    """Continue an interrupted ``difflab distill`` from the checkpoint in ``out``, exactly:
    the round directories (progressive) or (run directory, metrics) (consistency)."""
    out = Path(out)
    kind, _, job = read_run(out)
    ckpt.remove_stale_temps(out)  # of writes a killed run left half done
    if kind == "progressive-distillation":
        return run_progressive(out, job, resume=True, progress=progress, max_steps=max_steps,
                                report=report)
    if kind == "consistency-distillation" and job:
        return run_consistency(out, job, resume=True, progress=progress, max_steps=max_steps)
    raise ckpt.CheckpointError(f"{out} is not a distillation to resume (its kind is {kind!r}); "
                               "give the OUT directory of 'difflab distill'")


__all__ = ["CHECKPOINT_EVERY", "DEFAULT_START_STEPS", "DISTANCES", "SOLVERS", "EpsOnly",
           "check_free", "cond_data", "distance_fn", "distill_consistency", "distill_progressive",
           "guided_teacher", "load_teacher", "raw_network", "resume_distillation", "round_steps"]
