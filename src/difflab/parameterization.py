"""What a network predicts, and how to present it to the samplers as an ε-model.

Conversions between ε, x̂_0, v and the score at one step t, given ᾱ_t broadcast to x_t's shape:

- ε ↔ x_0: Weng eq. (11), x_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t;
- score:   Weng eq. (21), s(x_t, t) = −ε / √(1−ᾱ_t);
- v:       Salimans & Ho 2022, §4, v = √ᾱ_t ε − √(1−ᾱ_t) x_0.

Every sampler sees a model as ``model(x_t, t, **cond) -> ε̂``. A network that predicts something
else is wrapped once: ``EpsFromX0(net, schedule)``, ``EpsFromV(...)``, ``EpsFromScore(...)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .schedules import Schedule

Model = Callable[..., Tensor]  # model(x_t, t, **cond) -> prediction, x_t: (B, …), t: int64 (B,)


def x0_from_eps(x_t: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t — Weng eq. (11)."""
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x_t: Tensor, x0: Tensor, ab: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t) — Weng eq. (3) solved for ε."""
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def v_from_eps_x0(eps: Tensor, x0: Tensor, ab: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 — Salimans & Ho 2022, §4."""
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def eps_from_v(x_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """ε = √(1−ᾱ_t) x_t + √ᾱ_t v (inverts v, using x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε)."""
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def x0_from_v(x_t: Tensor, v: Tensor, ab: Tensor) -> Tensor:
    """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v."""
    return ab.sqrt() * x_t - (1 - ab).sqrt() * v


def score_from_eps(eps: Tensor, ab: Tensor) -> Tensor:
    """s(x_t, t) = ∇ log q(x_t) = −ε / √(1−ᾱ_t) — Weng eq. (21)."""
    return -eps / (1 - ab).sqrt()


def eps_from_score(score: Tensor, ab: Tensor) -> Tensor:
    """ε = −√(1−ᾱ_t) s(x_t, t) — Weng eq. (21) inverted."""
    return -(1 - ab).sqrt() * score


class _EpsWrapper(nn.Module):
    """Base of the wrappers: holds the network (so .parameters() and state_dict pass through)."""

    def __init__(self, net: Model, schedule: Schedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def _ab(self, x_t: Tensor, t: Tensor) -> Tensor:
        return Schedule.broadcast(self.schedule.alpha_bar_at(t), x_t)  # (B, 1, …)


class EpsFromX0(_EpsWrapper):
    """Present an x_0-predicting network as an ε-model (Weng eq. 11 inverted)."""

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return eps_from_x0(x_t, self.net(x_t, t, **cond), self._ab(x_t, t))


class EpsFromV(_EpsWrapper):
    """Present a v-predicting network as an ε-model (Salimans & Ho 2022)."""

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return eps_from_v(x_t, self.net(x_t, t, **cond), self._ab(x_t, t))


class EpsFromScore(_EpsWrapper):
    """Present a score network s_θ(x_t, t) ≈ ∇ log q(x_t) as an ε-model (Weng eq. 21)."""

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return eps_from_score(self.net(x_t, t, **cond), self._ab(x_t, t))


class LearnedVariance(nn.Module):
    """A network whose output stacks [ε̂, v_raw] along ``dim`` (channels), presented as a model
    that returns (ε̂, v) with v = (v_raw + 1)/2 — the mixing vector of Weng eq. (23),
    Σ_θ = exp(v log β_t + (1 − v) log β̃_t) (Nichol & Dhariwal 2021, §3.1, who map the raw
    output from [−1, 1] to [0, 1] the same way). ``samplers.ddpm`` uses v; every other sampler
    uses ε̂ alone.
    """

    def __init__(self, net: Model, dim: int = 1):
        super().__init__()
        self.net = net
        self.dim = dim

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> tuple[Tensor, Tensor]:
        eps, v_raw = self.net(x_t, t, **cond).chunk(2, dim=self.dim)
        return eps, (v_raw + 1) / 2
