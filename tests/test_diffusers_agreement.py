"""Our schedules, steps and samplers agree with diffusers' DDPMScheduler and DDIMScheduler.

Compared to atol 1e-5 on seeded random (4, 1, 8, 8) tensors, with a fixed fake model eps(x, t)
and the same noise on both sides:

- betas and ᾱ of the linear ("linear") and cosine ("squaredcos_cap_v2") schedules, and
  ``add_noise`` against ``Schedule.q_sample``, as shipped (float32);
- one DDPM step (our ``variance="posterior"`` is diffusers' "fixed_small", ``"beta"`` is
  "fixed_large"), one DDIM step (eta 0 and 1), and full DDPM and DDIM sampling loops, each with
  clipping of the predicted x_0 on and off.

Precision: steps and loops are compared in float64, with the same float64 constants on both
sides, so that only the formulas are compared. In float32, diffusers loses digits where 1 - ᾱ_t
cancels near t = 0 (it rebuilds β_t as 1 - ᾱ_t/ᾱ_{t-1}: ~2e-4 at t = 1, 2; our posterior weights
are computed in float64, which a test below checks), and diffusers' float32 cumprod
drifts by ~1e-5 relative at the end of the cosine schedule, which 1/sqrt(ᾱ_t) amplifies (~1e-3
at t = T-1 for unclipped DDIM). The shipped float32 steps are compared at mid-range t.

Where we deliberately differ from diffusers' defaults (the tests configure diffusers like us):
- DDIM timesteps: ours are linspace(0, T-1, steps), from T-1 down to 0; diffusers' default
  "leading" spacing is arange(steps) * (T // steps), and its step always goes to
  t - T // num_inference_steps;
- DDPM variance: our default is β_t (diffusers "fixed_large"), diffusers' is β̃_t ("fixed_small");
- clipping of the predicted x_0 to [-1, 1]: diffusers' default is clip_sample=True, ours
  clip_x0=False.
"""
import pytest
import torch

try:
    from diffusers import DDIMScheduler, DDPMScheduler
except ImportError as err:  # pragma: no cover
    raise ImportError("diffusers is a test-only dependency: pip install -e '.[test]'") from err

from course_lib import ddpm

ATOL = 1e-5
SHAPE = (4, 1, 8, 8)
DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
KINDS = list(DIFFUSERS_NAME)


def fake_model(x, t):
    """A fixed eps(x, t) that depends on t; t is a (B,) tensor (ours) or a scalar (diffusers)."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return 0.9 * x + 0.1 * torch.sin(x + 0.05 * t)


def randn(seed, dtype=torch.float64):
    """A seeded standard normal tensor of SHAPE."""
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_pair(cls, kind, T, **config):
    """Our schedule and a diffusers scheduler of class ``cls`` with the same betas."""
    ours = ddpm.linear_schedule(T) if kind == "linear" else ddpm.cosine_schedule(T)
    return ours, cls(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[kind], **config)


def to_float64(ours, theirs):
    """Give both sides the same float64 constants, derived from our betas; return our schedule."""
    s = ddpm.Schedule.from_betas(ours.betas.double(), dtype=torch.float64)
    theirs.betas, theirs.alphas, theirs.alphas_cumprod = s.betas, s.alphas, s.alpha_bars
    one = torch.tensor(1.0, dtype=torch.float64)
    if isinstance(theirs, DDPMScheduler):
        theirs.one = one
    else:
        theirs.final_alpha_cumprod = one  # set_alpha_to_one=True: ᾱ = 1 below t = 0
    return s


def close(actual, expected):
    """assert_close with the agreed absolute tolerance (a step's result: its x_prev)."""
    if isinstance(actual, ddpm.StepOutput):
        actual = actual.x_prev
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# --- schedules and the forward process (float32, as shipped) -----------------------------------

@pytest.mark.parametrize("kind, T, beta_range", [
    ("linear", 150, (1e-4, 0.02)),
    ("linear", 1000, (1e-4, 0.02)),
    ("linear", 150, (1e-4 * 1000 / 150, 0.02 * 1000 / 150)),  # 06: DDPM's schedule scaled to T
    ("cosine", 150, None),
    ("cosine", 1000, None),
])
def test_schedule_betas_and_alpha_bars(kind, T, beta_range):
    """betas and ᾱ match DDPMScheduler's betas and alphas_cumprod."""
    if kind == "linear":
        ours = ddpm.linear_schedule(T, *beta_range)
        theirs = DDPMScheduler(num_train_timesteps=T, beta_start=beta_range[0],
                               beta_end=beta_range[1], beta_schedule="linear")
    else:
        ours, theirs = make_pair(DDPMScheduler, kind, T)
    close(ours.betas, theirs.betas)
    close(ours.alpha_bars, theirs.alphas_cumprod)


@pytest.mark.parametrize("kind", KINDS)
def test_add_noise_is_q_sample(kind):
    """add_noise(x0, noise, t) equals q_sample(x0, t, noise) for a batch of different t."""
    ours, theirs = make_pair(DDPMScheduler, kind, 150)
    x0, noise = randn(0, torch.float32), randn(1, torch.float32)
    t = torch.tensor([0, 1, 75, 149])
    close(ours.q_sample(x0, t, noise), theirs.add_noise(x0, noise, t))


# --- single steps (float64, same constants) ----------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variance, variance_type", [("posterior", "fixed_small"),
                                                     ("beta", "fixed_large")])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [0, 1, 75, 149])
def test_ddpm_step(kind, variance, variance_type, clip, t):
    """ddpm_step equals DDPMScheduler.step given the same noise (none at t = 0)."""
    ours, theirs = make_pair(DDPMScheduler, kind, 150, variance_type=variance_type,
                             clip_sample=clip)
    ours = to_float64(ours, theirs)
    x = randn(t)
    eps = fake_model(x, t)
    out = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    noise = randn(7)  # what diffusers draws from the same seed
    step = ddpm.ddpm_step(x, t, eps, ours, noise=noise, variance=variance, clip_x0=clip)
    close(step, out.prev_sample)
    close(step.x0, out.pred_original_sample)  # the step's x̂_0 is diffusers' pred_original_sample


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t, num_inference_steps", [(99, 10), (50, 5), (10, 10), (3, 20),
                                                     (0, 100)])
def test_ddim_step(kind, eta, clip, t, num_inference_steps):
    """ddim_step(t -> t - T // n) equals DDIMScheduler.step with n inference steps."""
    ours, theirs = make_pair(DDIMScheduler, kind, 100, clip_sample=clip, set_alpha_to_one=True,
                             steps_offset=0)
    ours = to_float64(ours, theirs)
    theirs.set_timesteps(num_inference_steps)
    t_prev = max(t - 100 // num_inference_steps, -1)  # diffusers: any negative step means ᾱ = 1
    x, noise = randn(t), randn(7)
    eps = fake_model(x, t)
    out = theirs.step(eps, t, x, eta=eta, variance_noise=noise)
    step = ddpm.ddim_step(x, t, eps, ours, t_prev, eta=eta, noise=noise, clip_x0=clip)
    close(step, out.prev_sample)
    close(step.x0, out.pred_original_sample)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [False, True])
def test_float32_steps_as_shipped_at_mid_t(kind, clip):
    """The shipped float32 DDPM and DDIM steps agree at mid-range t (see the module docstring)."""
    ours, ddpm_sched = make_pair(DDPMScheduler, kind, 150, variance_type="fixed_large",
                                 clip_sample=clip)
    x, noise = randn(0, torch.float32), randn(7, torch.float32)
    eps = fake_model(x, 75)
    expected = ddpm_sched.step(eps, 75, x, generator=torch.Generator().manual_seed(7)).prev_sample
    close(ddpm.ddpm_step(x, 75, eps, ours, noise=noise, variance="beta", clip_x0=clip), expected)

    _, ddim_sched = make_pair(DDIMScheduler, kind, 150, clip_sample=clip)
    ddim_sched.set_timesteps(15)
    expected = ddim_sched.step(eps, 75, x, eta=1.0, variance_noise=noise).prev_sample
    close(ddpm.ddim_step(x, 75, eps, ours, 65, eta=1.0, noise=noise, clip_x0=clip), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0, 1, 2])
def test_float32_clipped_ddpm_step_near_t0_matches_float64(kind, t):
    """Our float32 posterior mean (clipped x_0) keeps its digits at small t, where 1 - ᾱ_t cancels."""
    ours, theirs = make_pair(DDPMScheduler, kind, 1000, variance_type="fixed_small",
                             clip_sample=True)
    reference = to_float64(ours, theirs)
    x, noise = randn(t, torch.float32), randn(7, torch.float32)
    eps = fake_model(x, t)
    expected = ddpm.ddpm_step(x.double(), t, eps.double(), reference, noise=noise.double(),
                              variance="posterior", clip_x0=True).x_prev
    step = ddpm.ddpm_step(x, t, eps, ours, noise=noise, variance="posterior", clip_x0=True)
    close(step.x_prev.double(), expected)


def test_diffusers_defaults_are_posterior_variance_with_clipping():
    """DDPMScheduler() defaults equal variance="posterior", clip_x0=True, not our defaults."""
    ours, theirs = make_pair(DDPMScheduler, "linear", 150)
    ours = to_float64(ours, theirs)
    x, noise, t = 3 * randn(0), randn(7), 10  # 3x: the predicted x_0 leaves [-1, 1]
    eps = fake_model(x, t)
    expected = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    close(ddpm.ddpm_step(x, t, eps, ours, noise=noise, variance="posterior", clip_x0=True),
          expected)
    ours_default = ddpm.ddpm_step(x, t, eps, ours, noise=noise).x_prev
    assert (ours_default - expected).abs().max() > 100 * ATOL


# --- full sampling loops (float64, same constants, same seeded noise) --------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variance, variance_type", [("posterior", "fixed_small"),
                                                     ("beta", "fixed_large")])
@pytest.mark.parametrize("clip", [False, True])
def test_sample_ddpm_matches_diffusers_loop(kind, variance, variance_type, clip):
    """sample_ddpm over all T steps equals a DDPMScheduler loop with the same seed.

    We draw noise at every step and diffusers only for t > 0; t = 0 is the last step, so the
    streams line up and our last draw is unused.
    """
    T = 50
    ours, theirs = make_pair(DDPMScheduler, kind, T, variance_type=variance_type, clip_sample=clip)
    ours = to_float64(ours, theirs)
    assert theirs.timesteps.tolist() == list(range(T - 1, -1, -1))
    x = randn(0)
    g = torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        x = theirs.step(fake_model(x, t), t, x, generator=g).prev_sample
    got = ddpm.sample_ddpm(fake_model, randn(0), ours, variance=variance, clip_x0=clip,
                           disable=True, generator=torch.Generator().manual_seed(1))
    close(got, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_sample_ddim_matches_diffusers_loop(kind, eta, clip):
    """sample_ddim(T=100, steps=10) equals a DDIMScheduler loop over our timesteps 99, 88, .., 0.

    diffusers' "linspace" spacing gives our timesteps, but its step goes to t - T // n; with
    n = 9 that is our stride of 11 (diffusers also draws noise at every step when eta > 0).
    """
    T, steps = 100, 10
    ours, theirs = make_pair(DDIMScheduler, kind, T, clip_sample=clip, set_alpha_to_one=True,
                             steps_offset=0, timestep_spacing="linspace")
    ours = to_float64(ours, theirs)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ddpm.ddim_timesteps(T, steps) == list(range(99, -1, -11))
    theirs.num_inference_steps = 9
    x = randn(0)
    g = torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        x = theirs.step(fake_model(x, t), t, x, eta=eta, generator=g).prev_sample
    got = ddpm.sample_ddim(fake_model, randn(0), ours, steps=steps, eta=eta, clip_x0=clip,
                           disable=True, generator=torch.Generator().manual_seed(1))
    close(got, x)


def test_ddim_timestep_spacing_differs_from_diffusers_default():
    """Our DDIM timesteps include T-1; diffusers' default "leading" spacing stops at T - T//n."""
    theirs = DDIMScheduler(num_train_timesteps=100)
    theirs.set_timesteps(10)
    assert theirs.timesteps.tolist() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert ddpm.ddim_timesteps(100, 10) == [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]


def test_guidance_rescale_matches_diffusers():
    """Our guidance rescale (Lin et al. 2024 §3.4) is diffusers' rescale_noise_cfg."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    cond, guided = randn(1), 2.5 * randn(1) - 1.5 * randn(2)
    for phi in (0.0, 0.3, 0.7, 1.0):
        assert torch.allclose(ddpm.rescale_guidance(guided, cond, phi),
                              rescale_noise_cfg(guided, cond, guidance_rescale=phi), atol=1e-12)


def test_projected_guidance_matches_diffusers():
    """Our ProjectedGuidance (Sadat et al. 2025) is diffusers' normalized_guidance on x̂₀ in the
    paper's form (added to x̂₀(c), scaled by w), without momentum, with and without a norm threshold
    and for several parallel weights."""
    from diffusers.guiders.adaptive_projected_guidance import normalized_guidance
    schedule = ddpm.cosine_schedule(20)
    t = torch.tensor([3, 11, 19, 0])
    eps = {True: randn(1), False: randn(2)}

    def model(x, t, c, c_mask):   # the doubled batch: eps(x, c) for mask 1, then eps(x, ∅)
        assert c_mask[:4].all() and not c_mask[4:].any()
        return torch.cat((eps[True], eps[False]))

    x = randn(0)
    x0 = {k: schedule.predict_x0(x, t, e) for k, e in eps.items()}
    for w, parallel, threshold in ((3.0, 0.0, 0.0), (2.0, 0.5, 0.0), (4.0, 0.0, 2.0), (1.0, 1.0, 0.0)):
        ours = ddpm.ProjectedGuidance(model, schedule, w, parallel=parallel,
                                      norm_threshold=threshold)(x, t, c=torch.zeros(4, 3))
        x0_theirs = normalized_guidance(x0[True], x0[False], w, eta=parallel, norm_threshold=threshold,
                                        use_original_formulation=True)   # the paper's Algorithm 1
        ab = schedule.alpha_bars[t].view(-1, 1, 1, 1)
        assert torch.allclose(schedule.predict_x0(x, t, ours), x0_theirs, atol=1e-6)
        assert torch.allclose(ours, (x - ab.sqrt() * x0_theirs) / (1 - ab).sqrt(), atol=1e-6)
