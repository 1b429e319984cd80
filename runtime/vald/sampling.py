"""Samplers: pure functions over a denoiser.

A *denoiser* is any callable ``denoiser(x_t, t) -> model_output`` where
``x_t`` is a float32 latent batch ``[B, C, h, w]``, ``t`` an integer training
timestep, and ``model_output`` has the shape of ``x_t`` and means what the
schedule's ``prediction_type`` says (epsilon, v or x0).  The samplers know
nothing about networks, guidance or backends.  Every random draw is passed in.

**Where the arithmetic runs** is one parameter, ``ops`` (:class:`ArrayOps`): the loop itself uses only
operators and Python-float scalars, and ``ops`` says how the state is held (``state``), what the denoiser
is given (``net``), how to clip, and how the result comes back (``result``).  :data:`HOST` keeps the state
in float64 numpy arrays (every backend today); a GPU backend whose denoiser takes device arrays passes ops
over them (e.g. torch CUDA tensors in float32), and the same loop then runs on the device with no copy of
the latents per step.  ``tests/test_sampling_parity.py`` runs the loop on torch tensors this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from vald.schedules import DdimPlan, DpmPlan, PredictionType

Array = NDArray[np.float32]
Denoiser = Callable[[Any, int], Any]  # on the host: float32 array in, float32 array out
OnStep = Callable[[int, int], None]
Constrain = Callable[[Any, int], Any]


class ArrayOps(Protocol):
    """How the sampler holds its state and talks to the denoiser.

    ``state``, ``net``, ``clip`` and ``result`` are all the loops use; the denoiser and the mask constraints
    around them also stack and split batches (``cat``, ``split``), check finiteness, and run
    the UNet session on arrays of this kind (``run``).
    """

    name: str

    def state(self, x: Any) -> Any:
        """An input (latents, noise, a model output, a mask) as the loop's state type."""
        ...

    def net(self, x: Any) -> Any:
        """The state as the denoiser takes it."""
        ...

    def clip(self, x: Any, limit: float) -> Any:
        """Clip to ``[-limit, limit]``."""
        ...

    def result(self, x: Any) -> Any:
        """The final state as the caller wants it."""
        ...

    def cat(self, xs: Sequence[Any]) -> Any:
        """Concatenate along the batch axis."""
        ...

    def split(self, x: Any, parts: int) -> list[Any]:
        """``parts`` equal slices along the batch axis."""
        ...

    def finite(self, x: Any) -> bool:
        """Whether every value is finite."""
        ...

    def run(self, session: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run a session on feeds of this array kind; outputs of this kind (float32)."""
        ...


class HostOps:
    """numpy on the host: float64 state, float32 to the network and back."""

    name = "host"

    def state(self, x: Any) -> NDArray[np.float64]:
        """float64 copy."""
        return np.asarray(x, dtype=np.float64)

    def net(self, x: Any) -> Array:
        """float32 copy."""
        return np.asarray(x, dtype=np.float32)

    def clip(self, x: Any, limit: float) -> NDArray[np.float64]:
        """np.clip."""
        out: NDArray[np.float64] = np.clip(x, -limit, limit)
        return out

    def result(self, x: Any) -> Array:
        """float32."""
        return np.asarray(x, dtype=np.float32)

    def cat(self, xs: Sequence[Any]) -> Any:
        """np.concatenate."""
        return np.concatenate(xs)

    def split(self, x: Any, parts: int) -> list[Any]:
        """np.split."""
        return list(np.split(x, parts))

    def finite(self, x: Any) -> bool:
        """np.isfinite over all values."""
        return bool(np.all(np.isfinite(x)))

    def run(self, session: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """``session.run``: numpy in, float32 numpy out."""
        out: dict[str, Any] = session.run(feeds)
        return out


HOST = HostOps()


def add_noise(x0: Array, noise: Array, alpha_bar: float) -> Array:
    """Forward diffusion q(x_t | x_0) = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (DDPM eq. 4)."""
    x_t: Array = (np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * noise).astype(np.float32)
    return x_t


def split_prediction(
    model_output: Any, x_t: Any, alpha_bar: float, prediction_type: PredictionType, ops: ArrayOps = HOST
) -> tuple[Any, Any]:
    """Return ``(x0_pred, eps)`` from a model output at ``alpha_bar`` (DDIM eq. 12 rearranged)."""
    a, b = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    out, x = ops.state(model_output), ops.state(x_t)
    if prediction_type is PredictionType.EPSILON:
        return (x - b * out) / a, out
    if prediction_type is PredictionType.V_PREDICTION:
        return a * x - b * out, a * out + b * x
    return out, (x - a * out) / b


def sample_ddim(
    denoiser: Denoiser,
    x_t: Array,
    plan: DdimPlan,
    *,
    eta: float = 0.0,
    noises: Sequence[Any] | None = None,
    on_step: OnStep | None = None,
    constrain: Constrain | None = None,
    ops: ArrayOps = HOST,
) -> Any:
    """DDIM (Song et al. 2021, eq. 12 and 16) from ``x_t`` at ``plan.timesteps[0]`` down to x_0.

    ``noises`` (one per step, shape of ``x_t``) is required when ``eta > 0``.
    ``constrain(x_prev, i)``, if given, replaces the state after step ``i`` (e.g. to
    keep known latents outside a mask, as in masked img2img).
    """
    if eta > 0 and (noises is None or len(noises) < len(plan.timesteps)):
        raise ValueError("sample_ddim with eta > 0 needs one noise array per step")
    x = ops.state(x_t)  # on the host the state is float64; the network sees float32
    for i, t in enumerate(plan.timesteps):
        alpha_bar_t, alpha_bar_prev = float(plan.alpha_bar[i]), float(plan.alpha_bar_prev[i])
        model_output = denoiser(ops.net(x), int(t))
        x0_pred, eps = split_prediction(model_output, x, alpha_bar_t, plan.prediction_type, ops)
        if plan.clip_sample_range is not None:
            x0_pred = ops.clip(x0_pred, plan.clip_sample_range)
        # eq. 16: sigma_t(eta) = eta * sqrt((1 - a_prev)/(1 - a_t)) * sqrt(1 - a_t/a_prev)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
        std_dev = eta * math.sqrt(variance)
        # eq. 12: x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z
        x_prev = math.sqrt(alpha_bar_prev) * x0_pred + math.sqrt(1 - alpha_bar_prev - std_dev**2) * eps
        if eta > 0 and noises is not None:
            x_prev = x_prev + std_dev * ops.state(noises[i])
        x = x_prev if constrain is None else constrain(x_prev, i)
        if on_step is not None:
            on_step(i + 1, len(plan.timesteps))
    return ops.result(x)


def invert_ddim(
    denoiser: Denoiser, x0: Any, plan: DdimPlan, *, on_step: OnStep | None = None, ops: ArrayOps = HOST
) -> Any:
    """Deterministic DDIM inversion: run eq. 12 (eta = 0) backwards from ``x0`` up to ``plan.timesteps[0]``.

    Step ``i`` (in reverse plan order) moves the state from ``alpha_bar_prev[i]`` to
    ``alpha_bar[i]`` with the model evaluated at timestep ``t_i`` on the current,
    less noisy state (the usual first-order approximation of the implicit update).
    Sampling the result with the same plan and denoiser reconstructs ``x0``
    up to that approximation.
    """
    x = ops.state(x0)
    n = len(plan.timesteps)
    for k, i in enumerate(reversed(range(n))):
        alpha_bar_from, alpha_bar_to = float(plan.alpha_bar_prev[i]), float(plan.alpha_bar[i])
        model_output = denoiser(ops.net(x), int(plan.timesteps[i]))
        x0_pred, eps = split_prediction(model_output, x, alpha_bar_from, plan.prediction_type, ops)
        x = math.sqrt(alpha_bar_to) * x0_pred + math.sqrt(1 - alpha_bar_to) * eps
        if on_step is not None:
            on_step(k + 1, n)
    return ops.result(x)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x_t: Array,
    plan: DpmPlan,
    *,
    on_step: OnStep | None = None,
    ops: ArrayOps = HOST,
) -> Any:
    """DPM-Solver++(2M), midpoint variant (Lu et al. 2022, arXiv:2211.01095, Alg. 2).

    With ``alpha_s = 1/sqrt(1+sigma_s^2)``, ``sigma'_s = sigma_s alpha_s`` and
    ``lambda = log(alpha/sigma')``, step ``s -> t`` with ``h = lambda_t - lambda_s`` is
    ``x_t = (sigma'_t/sigma'_s) x_s - alpha_t (e^{-h} - 1) D``, where ``D`` is the
    current x0 prediction (first order) or ``m0 + (m0 - m1) / (2 r0)`` (second order).
    """
    x = ops.state(x_t)
    previous: Any = None
    lambdas: list[float] = []
    for i, t in enumerate(plan.timesteps):
        sigma_s, sigma_t = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        alpha_bar_s = 1.0 / (sigma_s**2 + 1.0)
        m0, _ = split_prediction(denoiser(ops.net(x), int(t)), x, alpha_bar_s, plan.prediction_type, ops)
        alpha_t = 1.0 / math.sqrt(sigma_t**2 + 1.0)
        sig_t, sig_s = sigma_t * alpha_t, sigma_s / math.sqrt(sigma_s**2 + 1.0)
        lambda_s = math.log(1.0 / math.sqrt(sigma_s**2 + 1.0)) - math.log(sig_s)
        lambdas.append(lambda_s)
        if sigma_t == 0.0:
            x = m0  # lambda_t = inf: the first-order update reduces to x0_pred
        else:
            h = math.log(alpha_t) - math.log(sig_t) - lambda_s
            if plan.orders[i] == 1 or previous is None:
                d = m0
            else:
                r0 = (lambdas[-1] - lambdas[-2]) / h
                d = m0 + 0.5 * (1.0 / r0) * (m0 - previous)
            x = (sig_t / sig_s) * x - alpha_t * (math.exp(-h) - 1.0) * d
        previous = m0
        if on_step is not None:
            on_step(i + 1, len(plan.timesteps))
    return ops.result(x)
