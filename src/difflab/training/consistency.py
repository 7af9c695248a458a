"""Consistency distillation (Weng eq. 31) and consistency training (eq. 32) as objectives of the
one loop — Song et al. 2023, Algorithms 2 and 3; the losses, solvers and the schedules N(k),
μ(k) are in :mod:`difflab.distill.consistency_training`.

The trained module is f_θ (:class:`~difflab.distill.ConsistencyModel` around F_θ); its EMA policy
is the target network θ⁻ ← μ θ⁻ + (1 − μ) θ after every update; the checkpoint holds the bare
networks F_θ ("model") and F_θ⁻ ("ema"). :func:`consistency_distill` and
:func:`consistency_train` run the loop in memory (no run directory), for tests and scripts.

Improved consistency training (:class:`ImprovedConsistencyTraining`, Song & Dhariwal 2023) has
no EMA target (θ⁻ = stopgrad θ); its "ema" module is only the EMA of θ that is sampled, as a
diffusion run's, with the decay ``ema_decay`` (warmed up by ``ema_decay_at``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distill.consistency import ConsistencyModel, karras_sigmas, karras_timesteps, sigma_table
from ..distill.consistency_training import (
    Solver,
    cd_loss,
    ct_ema_decay,
    ct_loss,
    ct_num_levels,
    heun_step,
    ict_loss,
    ict_num_levels,
    lognormal_level_probs,
)
from ..distill.distances import Distance, l2, pseudo_huber
from ..parameterization import Model
from ..schedules import Schedule
from .diffusion import LRSchedule
from .ema import ema_, ema_decay_at, frozen_copy
from .loop import Objective, fit


class _ConsistencyObjective(Objective):
    """What both consistency objectives share: f_θ, its target θ⁻, data and conditions."""

    def __init__(self, model: ConsistencyModel, data: Tensor, *, batch: int, iters: int,
                 lr: float | LRSchedule, lr_decay: bool = False,
                 weight_decay: float = 0.0, grad_clip: float = 1.0,
                 cond_data: dict[str, Tensor] | None = None,
                 target: ConsistencyModel | None = None, distance: Distance = l2):
        """``lr``: a learning rate, constant or (``lr_decay``) decayed linearly to 0 over
        ``iters`` updates, or a :class:`.diffusion.LRSchedule` (then ``lr_decay`` must be
        False)."""
        if isinstance(lr, LRSchedule) and lr_decay:
            raise ValueError("lr_decay applies to a constant lr; give a schedule with its own "
                             "decay instead (e.g. LRSchedule(..., kind='linear'))")
        self.net = model
        self.target = target if target is not None else frozen_copy(model)
        self.data, self.batch, self.iters = data, batch, iters
        if not isinstance(lr, LRSchedule):  # lr · (1 − k/K) is the linear kind's, bit for bit
            lr = LRSchedule(lr, iters, 0, "linear" if lr_decay else "constant", 0.0)
        self.schedule_lr, self.lr = lr, lr.lr  # the schedule and its peak
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.cond_data, self.distance = cond_data or {}, distance

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net.net, "ema": self.target.net}

    def _levels(self, step: int) -> int:
        raise NotImplementedError

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=g)  # (B,)
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0, **{k: v[idx] for k, v in self.cond_data.items()}}
        out["n"] = torch.randint(0, self._levels(step) - 1, (self.batch,), generator=g)  # (B,)
        out["z"] = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, …)
        self._step = step
        return out

    def lr_at(self, step: int) -> float:
        return self.schedule_lr(step)

    def _mu(self, step: int) -> float:
        raise NotImplementedError

    def after_update(self, step: int) -> None:
        ema_(self.target, self.net, self._mu(step - 1))  # θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)

    @staticmethod
    def _split(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, dict]:
        cond = {k: v for k, v in batch.items() if k not in ("x0", "n", "z")}
        return batch["x0"], batch["n"], batch["z"], cond


class ConsistencyDistillation(_ConsistencyObjective):
    """L_CD (eq. 31) against the ε-model ``teacher`` on ``schedule``: N Karras levels snapped to
    the schedule's steps, Φ = one ``solver`` step of the teacher's probability-flow ODE, a
    constant target decay μ."""

    def __init__(self, model: ConsistencyModel, teacher: Model, schedule: Schedule,
                 data: Tensor, *, N: int = 18, rho: float = 7.0, solver: Solver = heun_step,
                 mu: float = 0.95, **kw):
        super().__init__(model, data, **kw)
        self.teacher, self.schedule, self.solver, self.mu = teacher, schedule, solver, mu
        self.ts = karras_timesteps(schedule, N, rho)  # (M,) increasing
        table = sigma_table(schedule)
        if float(table[self.ts[0]]) < model.sigma_min or \
                float(table[self.ts[-1]]) > model.sigma_max:
            raise ValueError("the model's [σ_min, σ_max] must contain the schedule's levels")

    def to(self, device: torch.device) -> None:
        super().to(device)
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(device)

    def _levels(self, step: int) -> int:
        return self.ts.numel()

    def _mu(self, step: int) -> float:
        return self.mu

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0, n, z, cond = self._split(batch)
        return cd_loss(model, self.target, self.teacher, self.schedule, x0, self.ts,
                       solver=self.solver, distance=self.distance, cond=cond, n=n, z=z)


class ConsistencyTraining(_ConsistencyObjective):
    """L_CT (eq. 32): no teacher; update k of K = ``iters`` uses N(k) Karras levels in
    [σ_min, σ_max] and the target decay μ(k) (s0, s1, μ0 as in Song et al. 2023, App. C)."""

    def __init__(self, model: ConsistencyModel, data: Tensor, *, s0: int = 2, s1: int = 150,
                 mu0: float = 0.9, rho: float = 7.0, **kw):
        super().__init__(model, data, **kw)
        self.s0, self.s1, self.mu0, self.rho = s0, s1, mu0, rho

    def _levels(self, step: int) -> int:
        return ct_num_levels(step, self.iters, self.s0, self.s1)

    def metrics(self) -> dict[str, float]:
        return {"ct_s1": self.s1}

    def _mu(self, step: int) -> float:
        return ct_ema_decay(step, self.iters, self.s0, self.s1, self.mu0)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0, n, z, cond = self._split(batch)
        sigmas = karras_sigmas(self._levels(self._step), self.net.sigma_min, self.net.sigma_max,
                               self.rho)
        return ct_loss(model, self.target, x0, sigmas, distance=self.distance, cond=cond, n=n,
                       z=z)


class ImprovedConsistencyTraining(_ConsistencyObjective):
    """Improved consistency training — Song & Dhariwal 2023, Alg. 1 (the maths in
    :func:`~difflab.distill.consistency_training.ict_loss`): update k of K = ``iters`` uses
    N(k) = :func:`~difflab.distill.consistency_training.ict_num_levels` (k, K, s0, s1) Karras
    levels in [σ_min, σ_max], pairs drawn from the discretised lognormal (P_mean, P_std),
    weight 1/(σ_{n+1} − σ_n), the pseudo-Huber distance, θ⁻ = stopgrad θ and one dropout seed
    per update shared by both branches. The "ema" module is the sampled EMA of θ.

    Measured on digits (benchmarks/results/ict_digits.md; 180 s of training on one thread of a
    shared CPU, the digits U-Net, ~500 updates, c_noise = 10 ln σ): FD 204 in 1 step and 139 in
    2, against 1297 and 529 for the original CT (:class:`ConsistencyTraining`) at the same wall
    time, and 62 for a diffusion model's DDIM-50 — hence ``ct_variant = "improved"`` is the
    default. A warm start from a diffusion run trained for half the time (``ct_init_from``):
    181 and 116. With the digits preset's c_noise = 250 ln σ (``ct_noise_scale``), 240 s of one
    core, four seeds: 97-127 in 1 step against the diffusion model's 43-51 (1.9-2.8×), and 68-95
    in 2 steps re-noised to the level :func:`difflab.samplers.consistency_levels.search_levels`
    finds (results/ict_digits_search_seed*.md). On MNIST-5k at 16×16, held out (720 s of one
    core, two seeds, results/ict_mnist16_seed*.md), where the diffusion model stays 4-5× above
    the FD floor and so does not memorise: 92 and 86 in 1 step against DDIM-50's 26 and 23
    (3.6 and 3.8×), with the 1-step FD falling slowly from the fifth stage on (93-99 there, 86-92
    at the end), and 2 steps at the default re-noising level little better (88 ± 0.5 and 87 ±
    1.4 against 92 ± 2.0 and 86 ± 3.9). At 2700 s (results/ict_mnist16_45min_seed*.md) the gap
    widens: 45 and 47 in 1 step against DDIM-50's 10.0 and 9.6 (4.5 and 4.9×), still falling
    by 3-4 per stage at the end. An exact warm start (a v-prediction diffusion run for W/2, then
    W/2 of iCT) gave 99 on MNIST 16×16 and 134 on digits (seed 0), and ECT's curriculum (Geng
    et al. 2024) from the same start 96 and 147: no better than the cold start
    (benchmarks/ict_warm_probe.py, results/ict_warm_probe_*_seed0.md).

    The curriculum doubles N every K/8 updates, which doubles the weight 1/(σ_{n+1} − σ_n): on
    digits the gradient norm before clipping doubles with it at every stage (median 2.2 in the
    first stage, 110 in the last, while the loss stays level), so the clip at 1 binds from start
    to end, and it matters: without it the 1-step FD at 800 updates is worse on all four seeds
    (mean 153 against 112). AdamW's β2 = 0.99 (a second moment of one stage's memory at 800
    updates) and weight decay 0.01, alone or together, did not change the 1-step FD beyond the
    spread of seeds (benchmarks/results/ict_optimiser.md), so the optimiser is every objective's.
    """

    def __init__(self, model: ConsistencyModel, data: Tensor, *, s0: int = 10, s1: int = 1280,
                 p_mean: float = -1.1, p_std: float = 2.0, rho: float = 7.0,
                 ema_decay: float = 0.999, distance: Distance = pseudo_huber, **kw):
        super().__init__(model, data, distance=distance, **kw)
        self.s0, self.s1, self.rho = s0, s1, rho
        self.p_mean, self.p_std, self.ema_decay = p_mean, p_std, ema_decay

    def _levels(self, step: int) -> int:
        return ict_num_levels(step, self.iters, self.s0, self.s1)

    def _sigmas(self, step: int) -> Tensor:
        return karras_sigmas(self._levels(step), self.net.sigma_min, self.net.sigma_max,
                             self.rho)

    def draw(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=g)  # (B,)
        x0 = self.data[idx]  # (B, …)
        out = {"x0": x0, **{k: v[idx] for k, v in self.cond_data.items()}}
        probs = lognormal_level_probs(self._sigmas(step), self.p_mean, self.p_std)
        out["n"] = torch.multinomial(probs, self.batch, replacement=True, generator=g)  # (B,)
        out["z"] = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # (B, …)
        out["seed"] = torch.randint(0, 2**62, (1,), generator=g).repeat(self.batch)  # (B,)
        self._step = step
        return out

    def metrics(self) -> dict[str, float]:
        return {"ct_s1": self.s1}

    def after_update(self, step: int) -> None:
        ema_(self.target, self.net, ema_decay_at(self.ema_decay, step))

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        batch = dict(batch)
        seed = int(batch.pop("seed")[0])
        x0, n, z, cond = self._split(batch)
        return ict_loss(model, x0, self._sigmas(self._step), n, z, distance=self.distance,
                        cond=cond, dropout_seed=seed)


def consistency_distill(model: ConsistencyModel, teacher: Model, schedule: Schedule,
                        data: Tensor, *, N: int = 18, rho: float = 7.0,
                        solver: Solver = heun_step, distance: Distance = l2, mu: float = 0.95,
                        iters: int = 2000, batch: int = 256, lr: float = 1e-4,
                        lr_decay: bool = False, weight_decay: float = 0.0, grad_clip: float = 1.0,
                        generator: torch.Generator | None = None,
                        cond_data: dict[str, Tensor] | None = None,
                        target: ConsistencyModel | None = None,
                        log: list[float] | None = None) -> ConsistencyModel:
    """Consistency distillation — Song et al. 2023, Alg. 2; Weng eq. (31) — in memory. Trains
    ``model`` (θ, in place; returned in eval mode) against the ε-model ``teacher``.

    Its σ range must cover the teacher's levels: build it with ``ConsistencyModel.from_schedule``.
    N, ρ: the Karras levels (N = 18 and Heun were the paper's best on CIFAR-10, Weng Fig. 12).
    ``target``: a copy of the model that holds θ⁻ (deep-copied from ``model`` when None).
    The learning rate is constant as in the paper; ``lr_decay=True`` decays it linearly to 0.
    ``log`` receives each update's loss.
    """
    obj = ConsistencyDistillation(model, teacher, schedule, data, N=N, rho=rho, solver=solver,
                                  mu=mu, batch=batch, iters=iters, lr=lr, lr_decay=lr_decay,
                                  weight_decay=weight_decay, grad_clip=grad_clip,
                                  cond_data=cond_data, target=target, distance=distance)
    return _fit_logged(obj, generator, log)


def consistency_train(model: ConsistencyModel, data: Tensor, *, s0: int = 2, s1: int = 150,
                      mu0: float = 0.9, rho: float = 7.0, distance: Distance = l2,
                      iters: int = 2000, batch: int = 256, lr: float = 1e-4,
                      lr_decay: bool = False, weight_decay: float = 0.0, grad_clip: float = 1.0,
                      generator: torch.Generator | None = None,
                      cond_data: dict[str, Tensor] | None = None,
                      target: ConsistencyModel | None = None,
                      log: list[float] | None = None) -> ConsistencyModel:
    """Consistency training — Song et al. 2023, Alg. 3; Weng eq. (32) — in memory: no teacher;
    step k of K = ``iters`` uses N(k) Karras levels and the target decay μ(k)
    (:func:`~difflab.distill.ct_num_levels`, :func:`~difflab.distill.ct_ema_decay`; s0 = 2,
    s1 = 150, μ0 = 0.9 are the paper's CIFAR-10 values). Other arguments as in
    :func:`consistency_distill`.

    Like distillation with Euler steps, its fixed point at N levels is biased (measured on 1-D
    N(0.5, 0.3²), MLP 32×2, 1500-3000 steps, s1 = 20: one-step std 0.24-0.25, as the 18-level
    Euler ladder of the exact teacher, 0.25). With s1 = 150 it needs far more than 1500 steps:
    the paper trains 800k.
    """
    obj = ConsistencyTraining(model, data, s0=s0, s1=s1, mu0=mu0, rho=rho, batch=batch,
                              iters=iters, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              grad_clip=grad_clip, cond_data=cond_data, target=target,
                              distance=distance)
    return _fit_logged(obj, generator, log)


def improved_consistency_train(model: ConsistencyModel, data: Tensor, *, s0: int = 10,
                               s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0,
                               rho: float = 7.0, distance: Distance = pseudo_huber,
                               ema_decay: float = 0.999, iters: int = 2000, batch: int = 256,
                               lr: float = 1e-4, lr_decay: bool = False,
                               weight_decay: float = 0.0, grad_clip: float = 1.0,
                               generator: torch.Generator | None = None,
                               cond_data: dict[str, Tensor] | None = None,
                               log: list[float] | None = None) -> tuple[ConsistencyModel,
                                                                        ConsistencyModel]:
    """Improved consistency training (Song & Dhariwal 2023, Alg. 1) in memory; see
    :class:`ImprovedConsistencyTraining`. Returns (f_θ, its EMA), both in eval mode."""
    obj = ImprovedConsistencyTraining(model, data, s0=s0, s1=s1, p_mean=p_mean, p_std=p_std,
                                      rho=rho, ema_decay=ema_decay, distance=distance,
                                      batch=batch, iters=iters, lr=lr, lr_decay=lr_decay,
                                      weight_decay=weight_decay, grad_clip=grad_clip,
                                      cond_data=cond_data)
    net = _fit_logged(obj, generator, log)
    return net, obj.target


def _fit_logged(obj: _ConsistencyObjective, generator, log) -> ConsistencyModel:
    fit(obj, steps=obj.iters, generator=generator or torch.Generator(),
        on_update=None if log is None else lambda _, value: log.append(value))
    obj.target.eval()
    return obj.net.eval()
