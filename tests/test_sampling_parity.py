"""Our numpy DDIM and DPM-Solver++(2M) against diffusers, step by step, on a fake denoiser."""

from __future__ import annotations

import numpy as np
import pytest

from vald.sampling import add_noise, sample_ddim, sample_dpmpp_2m
from vald.schedules import NoiseSchedule, plan_ddim, plan_dpmpp_2m

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
}
CONFIGS = [
    SD15,
    {**SD15, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"beta_schedule": "linear", "timestep_spacing": "linspace", "set_alpha_to_one": True},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading", "prediction_type": "sample"},
]


TARGET = np.random.default_rng(7).standard_normal((2, 4, 8, 8)).astype(np.float32)


def make_fake_denoiser(config):
    """A stand-in UNet that nearly knows x0 (so latents stay O(1)), answering in the config's prediction type."""
    schedule = NoiseSchedule.from_config(config)
    kind = schedule.prediction_type.value

    def denoiser(x: np.ndarray, t: int) -> np.ndarray:
        a = schedule.alphas_cumprod[t]
        x0_hat = TARGET[: x.shape[0]] + 0.1 * np.tanh(x + np.sin(t / 97.0))
        eps = (x - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)
        out = {"epsilon": eps, "sample": x0_hat, "v_prediction": np.sqrt(a) * eps - np.sqrt(1 - a) * x0_hat}[kind]
        return out.astype(np.float32)

    return denoiser


def _diffusers_loop(scheduler, fake_denoiser, x0, noise, steps, strength, eta=0.0, variance_noises=None):
    scheduler.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    t_start = max(steps - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    # diffusers runs in float64 here so that its own float32 rounding does not count against us
    x = scheduler.add_noise(torch.from_numpy(x0).double(), torch.from_numpy(noise).double(), timesteps[:1])
    trajectory = []
    for i, t in enumerate(timesteps):
        out = torch.from_numpy(fake_denoiser(x.numpy().astype(np.float32), int(t))).double()
        kwargs = {}
        if variance_noises is not None:
            kwargs = {"eta": eta, "variance_noise": torch.from_numpy(variance_noises[i]).double()}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        trajectory.append(x.numpy())
    return [int(t) for t in timesteps], trajectory


def assert_close_scaled(ours, theirs, tol=1e-5):
    """Max abs error <= tol, measured relative to the state's scale where that exceeds 1 (float32 spacing)."""
    scale = max(1.0, float(np.abs(theirs).max()))
    assert float(np.abs(ours - theirs).max()) <= tol * scale


def _recording(fake_denoiser):
    states = []

    def denoiser(x, t):
        states.append(x.copy())
        return fake_denoiser(x, t)

    return denoiser, states


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("steps", "strength"), [(50, 1.0), (50, 0.6), (7, 0.5), (1, 1.0)])
def test_ddim_matches_diffusers_step_by_step(config, steps, strength):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    ref_ts, ref = _diffusers_loop(
        diffusers.DDIMScheduler(**config), make_fake_denoiser(config), x0, noise, steps, strength
    )
    schedule = NoiseSchedule.from_config(config)
    plan = plan_ddim(schedule, steps, strength)
    assert plan.timesteps.tolist() == ref_ts
    x_t = add_noise(x0, noise, plan.start_alpha_bar)
    denoiser, states = _recording(make_fake_denoiser(config))
    final = sample_ddim(denoiser, x_t, plan)
    # states[i + 1] is the input to step i + 1, i.e. the output of step i
    for ours, theirs in zip([*states[1:], final], ref, strict=True):
        assert_close_scaled(ours, theirs)


def test_ddim_eta_uses_given_noise_like_diffusers():
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    steps = 20
    variance = [rng.standard_normal(x0.shape).astype(np.float32) for _ in range(steps)]
    fake_denoiser = make_fake_denoiser(SD15)
    _, ref = _diffusers_loop(diffusers.DDIMScheduler(**SD15), fake_denoiser, x0, noise, steps, 1.0, 0.5, variance)
    schedule = NoiseSchedule.from_config(SD15)
    plan = plan_ddim(schedule, steps, 1.0)
    x_t = add_noise(x0, noise, plan.start_alpha_bar)
    final = sample_ddim(fake_denoiser, x_t, plan, eta=0.5, noises=variance)
    assert_close_scaled(final, ref[-1])


@pytest.mark.parametrize("config", CONFIGS[:3])
@pytest.mark.parametrize(("steps", "strength"), [(25, 1.0), (25, 0.6), (20, 0.3), (3, 1.0)])
def test_dpmpp_2m_matches_diffusers_step_by_step(config, steps, strength):
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler(**config).config)
    ref_ts, ref = _diffusers_loop(scheduler, make_fake_denoiser(config), x0, noise, steps, strength)
    schedule = NoiseSchedule.from_config(config)
    plan = plan_dpmpp_2m(schedule, steps, strength)
    assert plan.timesteps.tolist() == ref_ts
    x_t = add_noise(x0, noise, plan.start_alpha_bar)
    denoiser, states = _recording(make_fake_denoiser(config))
    final = sample_dpmpp_2m(denoiser, x_t, plan)
    for ours, theirs in zip([*states[1:], final], ref, strict=True):
        assert_close_scaled(ours, theirs)


class TorchOps:
    """The sampler's state as torch tensors (on a GPU these would be CUDA tensors: the latents stay there)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def state(self, x):
        return x.to(self.dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=self.dtype)

    def net(self, x):
        return x.to(torch.float32)

    def clip(self, x, limit):
        return x.clamp(-limit, limit)

    def result(self, x):
        return x.to(torch.float32)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-9), ("float32", 2e-5)])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1], {**CONFIGS[0], "clip_sample": True}])
def test_the_same_loop_runs_on_device_style_arrays(config, dtype, tolerance):
    """One sampling loop, two array types: torch tensors in, torch tensors through every step, torch out."""
    from vald.sampling import invert_ddim

    ops = TorchOps(getattr(torch, dtype))
    numpy_denoiser = make_fake_denoiser(config)
    calls = []

    def torch_denoiser(x, t):
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32  # never a numpy array on the way
        calls.append(t)
        return torch.from_numpy(numpy_denoiser(x.numpy(), t))

    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    schedule = NoiseSchedule.from_config(config)
    ddim, dpm = plan_ddim(schedule, 20, 0.7), plan_dpmpp_2m(schedule, 20, 0.7)
    x_t = add_noise(x0, rng.standard_normal(x0.shape).astype(np.float32), ddim.start_alpha_bar)
    noises = [rng.standard_normal(x0.shape).astype(np.float32) for _ in range(len(ddim.timesteps))]
    pairs = [
        (sample_ddim(numpy_denoiser, x_t, ddim), sample_ddim(torch_denoiser, torch.from_numpy(x_t), ddim, ops=ops)),
        (
            sample_ddim(numpy_denoiser, x_t, ddim, eta=0.5, noises=noises),
            sample_ddim(torch_denoiser, torch.from_numpy(x_t), ddim, eta=0.5, noises=noises, ops=ops),
        ),
        (invert_ddim(numpy_denoiser, x0, ddim), invert_ddim(torch_denoiser, torch.from_numpy(x0), ddim, ops=ops)),
    ]
    if not config.get("clip_sample"):
        pairs.append(
            (
                sample_dpmpp_2m(numpy_denoiser, x_t, dpm),
                sample_dpmpp_2m(torch_denoiser, torch.from_numpy(x_t), dpm, ops=ops),
            )
        )
    for host, device in pairs:
        assert isinstance(device, torch.Tensor) and isinstance(host, np.ndarray)
        np.testing.assert_allclose(device.numpy(), host, rtol=0, atol=tolerance)
    assert calls  # the torch denoiser was what ran
