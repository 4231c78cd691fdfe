import dataclasses
import functools

import pytest
import torch

from course_lib import ddpm
from course_lib.unets import OptimizedUNet

SCHEDULES = {"linear": ddpm.linear_schedule(150), "cosine": ddpm.cosine_schedule(150)}


@pytest.fixture(params=list(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]


def test_add_noise_mix():
    x, e = torch.ones(3), torch.zeros(3)
    assert torch.equal(ddpm.add_noise(x, 0.5, noise=e), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ddpm.add_noise(x, 1.5)
    images, noise = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)     # one amount per image
    mixed = ddpm.add_noise(images, torch.tensor([0.0, 0.5, 1.0]), noise)
    assert mixed[:, 0, 0, 0].tolist() == [1.0, 0.5, 0.0] and mixed.shape == images.shape
    with pytest.raises(ValueError, match="one per image"):
        ddpm.add_noise(images, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ddpm.add_noise(images, torch.tensor([0.1, 0.2, 1.2]))


def test_linear_schedule_endpoints():
    s = ddpm.linear_schedule(150)
    assert s.T == 150
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)


def test_alpha_bar_monotone_in_unit_interval(schedule):
    ab = schedule.alpha_bars
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()
    assert torch.allclose(ab, torch.cumprod(1 - schedule.betas.double(), 0).float())


def test_cosine_schedule_follows_its_formula():
    s = ddpm.cosine_schedule(1000)
    f = lambda t: torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2)) ** 2  # noqa
    assert s.alpha_bars[499].item() == pytest.approx((f(500) / f(0)).item(), rel=1e-4)
    assert s.betas.max().item() == pytest.approx(0.999)  # the cap bites at the last step


def test_bad_betas_and_T():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ddpm.Schedule.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="T must be"):
        ddpm.linear_schedule(0)


def test_q_sample_empirical_moments(schedule):
    torch.manual_seed(0)
    x0 = torch.tensor([0.8, -0.3])
    for t in (0, 40, 149):
        noise = torch.randn(200_000, 2)
        xt = schedule.q_sample(x0.expand(200_000, 2), torch.full((200_000,), t), noise)
        ab = schedule.alpha_bars[t]
        assert torch.allclose(xt.mean(0), ab.sqrt() * x0, atol=0.01)
        assert torch.allclose(xt.var(0), (1 - ab).expand(2), atol=0.01)


def test_q_sample_rejects_t_out_of_range(schedule):
    with pytest.raises(ValueError, match=r"\[0, 149\]"):
        schedule.q_sample(torch.zeros(2, 1), torch.tensor([0, 150]), torch.zeros(2, 1))


def test_posterior_closed_form(schedule):
    torch.manual_seed(1)
    x0, xt = torch.randn(4, 3), torch.randn(4, 3)
    for t in (1, 75, 149):
        mean, var = schedule.q_posterior(x0, xt, t)
        # reference in float64 from the betas: float32 ᾱ would lose digits in 1 - ᾱ at small t
        alpha_bars = torch.cumprod(1 - schedule.betas.double(), 0)
        b, a, ab, abp = (schedule.betas[t].double(), 1 - schedule.betas[t].double(),
                         alpha_bars[t], alpha_bars[t - 1])
        want_mean = (abp.sqrt() * b * x0.double() + a.sqrt() * (1 - abp) * xt.double()) / (1 - ab)
        assert torch.allclose(mean.double(), want_mean, atol=1e-5)
        assert var.item() == pytest.approx(((1 - abp) / (1 - ab) * b).item(), rel=1e-3)
    # Bayes: the posterior is the product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0); check its precision
    t = 75
    abp, a = schedule.alpha_bars[t - 1].double(), schedule.alphas[t].double()
    precision = 1 / (1 - abp) + a / (1 - a)
    assert schedule.posterior_variance[t].item() == pytest.approx(1 / precision.item(), rel=1e-4)


def test_reverse_step_with_true_noise_at_first_step_returns_x0(schedule):
    torch.manual_seed(2)
    x0, eps = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    x1 = schedule.q_sample(x0, 0, eps)
    for variance in ("beta", "posterior"):
        assert torch.allclose(ddpm.ddpm_step(x1, 0, eps, schedule, variance=variance).x_prev, x0,
                              atol=1e-5)


def test_ddpm_step_mean_and_variance_use_the_same_t(schedule):
    """With the true noise, the step's mean is the posterior mean; sigma² is beta_t or beta~_t."""
    torch.manual_seed(3)
    x0, eps, z = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    t = 60
    xt = schedule.q_sample(x0, t, eps)
    post_mean, post_var = schedule.q_posterior(x0, xt, t)
    mean = ddpm.ddpm_step(xt, t, eps, schedule, noise=torch.zeros_like(z)).x_prev
    assert torch.allclose(mean, post_mean, atol=1e-5)
    step = ddpm.ddpm_step(xt, t, eps, schedule, noise=z, variance="beta").x_prev
    assert torch.allclose(step - mean, schedule.betas[t].sqrt() * z, atol=1e-6)
    step = ddpm.ddpm_step(xt, t, eps, schedule, noise=z, variance="posterior").x_prev
    assert torch.allclose(step - mean, post_var.sqrt() * z, atol=1e-6)
    with pytest.raises(ValueError, match="variance"):
        ddpm.ddpm_step(xt, t, eps, schedule, variance="sigma")


def test_clip_x0_keeps_prediction_in_range(schedule):
    xt, eps = torch.full((1, 4), 5.0), torch.zeros(1, 4)
    t = 100
    clipped = ddpm.ddpm_step(xt, t, eps, schedule, noise=torch.zeros(1, 4), clip_x0=True).x_prev
    want, _ = schedule.q_posterior(torch.ones(1, 4), xt, t)
    assert torch.allclose(clipped, want, atol=1e-5)
    unclipped = ddpm.ddpm_step(xt, t, eps, schedule, noise=torch.zeros(1, 4)).x_prev
    assert not torch.allclose(unclipped, clipped)


def test_ddim_eta1_all_steps_equals_ddpm_posterior_step(schedule):
    torch.manual_seed(4)
    xt, eps, z = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    for t in (1, 50, 149):
        ddim = ddpm.ddim_step(xt, t, eps, schedule, t - 1, eta=1.0, noise=z).x_prev
        ancestral = ddpm.ddpm_step(xt, t, eps, schedule, noise=z, variance="posterior").x_prev
        assert torch.allclose(ddim, ancestral, atol=1e-4)


def test_ddim_eta0_with_true_noise_returns_x0_in_one_jump(schedule):
    torch.manual_seed(5)
    x0, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    for t in (0, 70, 130):  # (at t=149 the cosine ᾱ is ~1e-5: float32 cannot invert it exactly)
        xt = schedule.q_sample(x0, t, eps)
        out = ddpm.ddim_step(xt, t, eps, schedule, -1, eta=0.0)
        assert torch.allclose(out.x_prev, x0, atol=1e-4) and torch.allclose(out.x0, x0, atol=1e-4)


def test_ddim_rejects_forward_steps(schedule):
    with pytest.raises(ValueError, match="backwards"):
        ddpm.ddim_step(torch.zeros(1), 5, torch.zeros(1), schedule, 7)


@pytest.mark.parametrize("eta", [-0.1, 1.1, 2.0])
def test_ddim_rejects_eta_outside_0_1(schedule, eta):
    """Above 1, sigma² can exceed 1 - ᾱ_prev (on linear_schedule(150)'s last jump of a 10-step run,
    from t = 17 to 0, η may be at most 1.002): the step would leave the forward process's marginals
    without a word, so it is refused, as a negative η is."""
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        ddpm.ddim_step(torch.zeros(1, 1, 2, 2), 17, torch.zeros(1, 1, 2, 2), schedule, 0, eta=eta)
    for ok in (0.0, 1.0):
        ddpm.ddim_step(torch.zeros(1, 1, 2, 2), 17, torch.zeros(1, 1, 2, 2), schedule, 0, eta=ok)


@pytest.mark.parametrize("gamma", [0, -5])
def test_eps_loss_rejects_min_snr_gamma_at_or_below_0(schedule, gamma):
    """γ = 0 would zero the loss (nothing trains) and γ < 0 turn it upside down, silently."""
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        ddpm.diffusion_loss(lambda x, t: x, torch.zeros(2, 1, 4, 4), schedule, min_snr_gamma=gamma)


def test_ddim_timesteps():
    assert ddpm.ddim_timesteps(150, 150) == list(range(149, -1, -1))
    assert ddpm.ddim_timesteps(150, 1) == [149]          # one jump, from pure noise's level
    ts = ddpm.ddim_timesteps(150, 10)
    assert len(ts) == 10 and ts[0] == 149 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError, match="steps <= T"):
        ddpm.ddim_timesteps(150, 151)


def _oracle(x0):
    """A 'perfect' denoiser for a dataset holding the single image x0."""
    def model(x, t, schedule):
        ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return model


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_recover_the_single_training_image(schedule, sampler):
    torch.manual_seed(6)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    model = functools.partial(_oracle(x0), schedule=schedule)
    noise = torch.randn(5, 1, 4, 4)
    rec = ddpm.FrameRecorder(n=5)
    rec_x0 = ddpm.FrameRecorder(n=3, key="x0")
    both = lambda info: (rec(info), rec_x0(info))  # noqa: E731
    if sampler == "ddpm":
        out = ddpm.sample_ddpm(model, noise, schedule, callback=both, disable=True)
    else:
        out = ddpm.sample_ddim(model, noise, schedule, steps=20, callback=both, disable=True)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-3)
    # x after each step, labelled with the step it reached; x̂_0 with the step that predicted it
    first_reached = "t=148" if sampler == "ddpm" else f"t={ddpm.ddim_timesteps(150, 20)[1]}"
    assert len(rec.frames) == 5 and rec.labels[0] == first_reached and rec.labels[-1] == "final"
    assert rec_x0.labels[0] == "t=149" and rec_x0.labels[-1] == "t=0"
    # the oracle's x̂_0 is the training image at every step, even the noisiest
    assert len(rec_x0.frames) == 3
    for frame in rec_x0.frames:
        assert torch.allclose(frame, x0.expand_as(frame), atol=1e-2)


def test_diffusion_loss_is_mse_against_the_noise(schedule):
    """The network sees x_t = q_sample(x_0, t, eps) with the drawn t, and its answer is compared
    with eps; min-SNR-γ weights each image's error by min(SNR_t, γ)/SNR_t (γ = ∞: no weight)."""
    x0 = torch.randn(16, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, schedule.T, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    guess = torch.randn(x0.shape, generator=g)          # the network's fixed answer
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return guess
    loss = ddpm.diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen["t"], t)
    assert torch.allclose(seen["x"], schedule.q_sample(x0, t, noise))
    per_image = (guess - noise).square().flatten(1).mean(1)
    assert loss.item() == pytest.approx(per_image.mean().item(), rel=1e-6)
    ab = schedule.alpha_bars[t]
    snr = ab / (1 - ab)
    for gamma in (1.0, 5.0, float("inf")):
        weighted = ddpm.diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(0),
                                       min_snr_gamma=gamma)
        expected = (snr.clamp(max=gamma) / snr * per_image).mean()
        assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
        assert torch.allclose(ddpm.min_snr_weight(snr, gamma), snr.clamp(max=gamma) / snr)
    assert weighted.item() == pytest.approx(loss.item(), rel=1e-5)   # γ = ∞ weighs every image 1


def _v_oracle(x0, schedule):
    """The same perfect denoiser as :func:`_oracle`, answering with v = sqrt(ᾱ)·eps - sqrt(1-ᾱ)·x_0."""
    def model(x, t):
        ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return model


@pytest.mark.parametrize("name", ["linear", "scaled"])
def test_vdenoiser_turns_v_into_the_noise_and_samples_the_training_image(name):
    schedule = {"linear": ddpm.linear_schedule(150), "scaled": ddpm.scaled_linear_schedule(150)}[name]
    torch.manual_seed(7)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    eps = torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 10, 50, 100, 148, 149])
    x_t = schedule.q_sample(x0.expand_as(eps), t, eps)
    denoiser = ddpm.VDenoiser(_v_oracle(x0, schedule), schedule)
    assert torch.allclose(denoiser(x_t, t), eps, atol=1e-4)
    out = ddpm.sample_ddim(denoiser, torch.randn(5, 1, 4, 4), schedule, steps=20, disable=True)
    assert torch.allclose(out, x0.expand_as(out), atol=1e-3)


def test_v_error_stays_small_in_x0_where_eps_error_explodes():
    """At ᾱ_T ≈ 3e-5 the same 0.01 error in the output moves x̂_0 by 0.01·sqrt(1-ᾱ)/sqrt(ᾱ) ≈ 2 for
    an eps-network and by 0.01·sqrt(1-ᾱ) ≈ 0.01 for a v-network."""
    schedule = ddpm.scaled_linear_schedule(150)
    x0, eps = torch.zeros(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    t = torch.tensor([149])
    x_t = schedule.q_sample(x0, t, eps)
    eps_err = schedule.predict_x0(x_t, 149, eps + 0.01) - x0
    v_net = _v_oracle(x0, schedule)
    v_err = schedule.predict_x0(x_t, 149, ddpm.VDenoiser(lambda x, t: v_net(x, t) + 0.01, schedule)(x_t, t)) - x0
    assert eps_err.abs().mean() > 1.0
    assert v_err.abs().mean() < 0.02


def test_v_loss_is_mse_against_v(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 1, 4, 4)
    loss = ddpm.VDenoiser(lambda x, t: torch.zeros_like(x), schedule).loss(x0, generator=g)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, schedule.T, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert loss.item() == pytest.approx((v ** 2).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx((noise ** 2).mean().item(), rel=1e-2)


def test_v_loss_min_snr_weights_each_image_by_min_snr_over_snr_plus_one(schedule):
    """min-SNR-γ for a v-target: min(SNR_t, γ)/(SNR_t + 1) per image; γ = ∞ leaves SNR/(SNR+1) = ᾱ_t."""
    x0 = torch.randn(16, 1, 4, 4)
    zero = ddpm.VDenoiser(lambda x, t: torch.zeros_like(x), schedule)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, schedule.T, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = schedule.alpha_bars[t]
    v = ab.sqrt().reshape(-1, 1, 1, 1) * noise - (1 - ab).sqrt().reshape(-1, 1, 1, 1) * x0
    per_image = (v ** 2).flatten(1).mean(1)
    snr = ab / (1 - ab)
    for gamma in (1.0, 5.0, float("inf")):
        loss = zero.loss(x0, generator=torch.Generator().manual_seed(0), min_snr_gamma=gamma)
        expected = (snr.clamp(max=gamma) / (snr + 1) * per_image).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = zero.loss(x0, generator=torch.Generator().manual_seed(0))
    assert zero.loss(x0, generator=torch.Generator().manual_seed(0), min_snr_gamma=1.0) < unweighted
    # γ = 0 would zero the loss and γ < 0 turn it upside down; a misspelt target is not eps
    for gamma in (0.0, -5.0):
        with pytest.raises(ValueError, match="needs γ > 0"):
            zero.loss(x0, min_snr_gamma=gamma)
    with pytest.raises(ValueError, match="'eps' or 'v'"):
        ddpm.min_snr_weight(snr, 5.0, prediction="V")
    with pytest.raises(ValueError, match="P_std > 0"):
        zero.loss(x0, lognormal=(-1.2, 0.0))


def test_lognormal_timesteps_follow_edm_noise_levels():
    """log σ_t of the drawn timesteps has EDM's mean; a tiny spread picks the one nearest t."""
    schedule = ddpm.cosine_schedule(150)
    log_sigma = 0.5 * ((1 - schedule.alpha_bars) / schedule.alpha_bars).log()
    t = ddpm.lognormal_timesteps(schedule, 20_000, -1.2, 1.2, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < schedule.T
    assert log_sigma[t].median().item() == pytest.approx(-1.2, abs=0.1)
    assert (t > 120).float().mean() < 0.05 < (t < 30).float().mean()   # few at the noisy end
    nearest = (log_sigma - 0.5).abs().argmin()
    t = ddpm.lognormal_timesteps(schedule, 50, 0.5, 1e-6, generator=torch.Generator().manual_seed(1))
    assert (t == nearest).all()
    far_end = ddpm.lognormal_timesteps(schedule, 10, 50.0, 1e-6)   # beyond σ_max: the last step
    assert (far_end == schedule.T - 1).all()


def test_cfg_combines_conditional_and_unconditional():
    torch.manual_seed(7)
    model = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=3).eval()
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([5, 9]), torch.eye(3)[:2]
    with torch.no_grad():
        cond = model(x, t, c=c, c_mask=torch.ones(2, 1))
        uncond = model(x, t, c=c, c_mask=torch.zeros(2, 1))
        for w in (-1.0, 0.0, 0.5, 2.0):
            guided = ddpm.CFGDenoiser(model, w)(x, t, c=c)
            assert torch.allclose(guided, (1 + w) * cond - w * uncond, atol=1e-5)
        assert torch.allclose(uncond, model(x, t, None), atol=1e-6)
        same = torch.tensor([5, 5])      # one step for the batch, as a 0-d or a 1-element tensor
        want = ddpm.CFGDenoiser(model, 2.0)(x, same, c=c)
        for one in (torch.tensor(5), torch.tensor([5])):
            assert torch.allclose(ddpm.CFGDenoiser(model, 2.0)(x, one, c=c), want, atol=1e-6)


def test_guidance_rescale_matches_the_conditional_spread():
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(4, 3, 8, 8, generator=g)
    guided = 3.0 * cond + 0.5 * torch.randn(4, 3, 8, 8, generator=g)   # inflated, as large w does
    full = ddpm.rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(full / guided, (full / guided)[:, :1, :1, :1].expand_as(full))  # one factor per sample
    assert torch.equal(ddpm.rescale_guidance(guided, cond, 0.0), guided)
    half = ddpm.rescale_guidance(guided, cond, 0.7)
    assert torch.allclose(half, 0.7 * full + 0.3 * guided, atol=1e-6)
    assert (half.std(dim=(1, 2, 3)) < guided.std(dim=(1, 2, 3))).all()


def test_guidance_rescale_of_a_v_network_rescales_v():
    """Lin et al. rescale what the network predicts: for a VDenoiser, v. Rescaled as ε, the
    shared √(1−ᾱ)·x_t term would make both spreads alike at the noisy end, and change little."""
    schedule = ddpm.cosine_schedule(150)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=g)
    v_of = {1.0: torch.randn(2, 3, 8, 8, generator=g), 0.0: 0.3 * torch.randn(2, 3, 8, 8, generator=g)}

    def v_net(x_t, t, c, c_mask):              # v(c) where the context is kept, v(∅) where dropped
        return torch.where(c_mask.reshape(-1, 1, 1, 1) > 0, v_of[1.0].repeat(2, 1, 1, 1)[:len(x_t)],
                           v_of[0.0].repeat(2, 1, 1, 1)[:len(x_t)])

    t = torch.tensor([140, 60])                 # a step of its own for each sample
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    w = 3.0
    v_guided = (1 + w) * v_of[1.0] - w * v_of[0.0]
    for phi in (1.0, 0.7):
        got = ddpm.CFGDenoiser(ddpm.VDenoiser(v_net, schedule), w, rescale=phi)(x, t, c=torch.ones(2, 1))
        want = ab.sqrt() * ddpm.rescale_guidance(v_guided, v_of[1.0], phi) + (1 - ab).sqrt() * x
        assert torch.allclose(got, want, atol=1e-4), phi
    eps_space = ddpm.rescale_guidance(ab.sqrt() * v_guided + (1 - ab).sqrt() * x,
                                      ab.sqrt() * v_of[1.0] + (1 - ab).sqrt() * x, phi)
    assert (got - eps_space).abs().max() > 100 * (got - want).abs().max()   # not rescaled as ε


def _small_cfg_model(t):
    """A tiny conditional UNet (seed 7), three noisy images at timesteps ``t``, three one-hot
    contexts and the model's conditional prediction for them."""
    torch.manual_seed(7)
    model = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=3).eval()
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor(t), torch.eye(3)
    with torch.no_grad():
        cond = model(x, t, c=c, c_mask=torch.ones(3, 1))
    return model, x, t, c, cond


def test_cfg_denoiser_rescales_only_when_asked():
    model, x, t, c, cond = _small_cfg_model([5, 9, 1])
    with torch.no_grad():
        plain = ddpm.CFGDenoiser(model, 3.0)(x, t, c=c)
        rescaled = ddpm.CFGDenoiser(model, 3.0, rescale=0.7)(x, t, c=c)
    assert torch.allclose(rescaled, ddpm.rescale_guidance(plain, cond, 0.7), atol=1e-6)
    assert not torch.allclose(rescaled, plain)
    with pytest.raises(ValueError, match="rescale is the blend"):
        ddpm.CFGDenoiser(model, 3.0, rescale=7)
    s = ddpm.cosine_schedule(20)
    a = ddpm.sample_guided(model, c, (1, 8, 8), s, w=3.0, steps=5, seed=3, disable=True)
    b = ddpm.sample_guided(model, c, (1, 8, 8), s, w=3.0, steps=5, seed=3, disable=True, rescale=0.7)
    assert not torch.allclose(a, b)


def test_guidance_interval_guides_only_the_steps_inside_it():
    """CFGDenoiser(interval=(lo, hi)): (1 + w)·eps(x, c) − w·eps(x, ∅) where lo <= t <= hi, eps(x, c)
    elsewhere (Kynkäänniemi et al. 2024); guidance_interval turns σ bounds into those timesteps."""
    model, x, t, c, cond = _small_cfg_model([2, 9, 15])
    with torch.no_grad():
        plain = ddpm.CFGDenoiser(model, 2.0)(x, t, c=c)
        limited = ddpm.CFGDenoiser(model, 2.0, interval=(5, 12))(x, t, c=c)
    assert torch.allclose(limited[1], plain[1], atol=1e-6)                    # t = 9: inside
    assert torch.allclose(limited[[0, 2]], cond[[0, 2]], atol=1e-6)           # t = 2, 15: outside
    assert not torch.allclose(plain[[0, 2]], cond[[0, 2]], atol=1e-3)
    with pytest.raises(ValueError, match="interval is"):
        ddpm.CFGDenoiser(model, 2.0, interval=(12, 5))

    s = ddpm.cosine_schedule(20)
    sigma = ((1 - s.alpha_bars) / s.alpha_bars).sqrt()
    lo, hi = ddpm.guidance_interval(s, 0.3, 5.0)
    assert float(sigma[lo]) > 0.3 >= float(sigma[lo - 1])
    assert float(sigma[hi]) <= 5.0 < float(sigma[hi + 1])
    assert ddpm.guidance_interval(s, 0.0, 1e9) == (0, 19)
    with pytest.raises(ValueError, match="no timestep"):
        ddpm.guidance_interval(s, 1e6, 1e7)
    everywhere = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True)
    assert torch.equal(everywhere, ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3,
                                                      disable=True, interval=(0, 19)))
    nowhere = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True,
                                 interval=(19, 19))                            # only the first step
    assert not torch.allclose(nowhere, everywhere, atol=1e-4)
    assert not torch.allclose(nowhere, ddpm.sample_guided(model, c, (1, 8, 8), s, w=0.0, steps=5,
                                                          seed=3, disable=True), atol=1e-4)


def test_a_negative_context_takes_the_place_of_the_unconditional_prediction():
    """CFGDenoiser with c_neg: (1 + w)·eps(x, c) − w·eps(x, c_neg), both unmasked; sample_guided
    passes ``negative`` as that context; shapes that do not match, or a negative context with
    another source of eps(x, ∅), are refused."""
    model, x, t, c, cond = _small_cfg_model([2, 9, 15])
    c_neg = c.flip(0)
    with torch.no_grad():
        neg = model(x, t, c=c_neg, c_mask=torch.ones(len(x), 1))
        guided = ddpm.CFGDenoiser(model, 2.0)(x, t, c=c, c_neg=c_neg)
        assert torch.allclose(guided, 3.0 * cond - 2.0 * neg, atol=1e-5)
        assert not torch.allclose(guided, ddpm.CFGDenoiser(model, 2.0)(x, t, c=c), atol=1e-3)
        with pytest.raises(ValueError, match="one negative prompt per image"):
            ddpm.CFGDenoiser(model, 2.0)(x, t, c=c, c_neg=c_neg[:1])
        with pytest.raises(ValueError, match="pass one"):
            ddpm.CFGDenoiser(model, 2.0, uncond=model)(x, t, c=c, c_neg=c_neg)
    s = ddpm.cosine_schedule(20)
    plain = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True)
    away = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True,
                              negative=c_neg)
    assert away.shape == plain.shape and not torch.allclose(away, plain, atol=1e-4)
    with pytest.raises(ValueError, match="negative"):
        ddpm.sample_guided(model, c, (1, 8, 8), s, steps=5, disable=True, negative=c_neg,
                           projected=0.0)


def test_cfg_can_take_its_unconditional_prediction_from_another_model():
    """CFGDenoiser(uncond=bad): (1 + w)·eps_good(x, c) − w·eps_bad(x, ∅), the bad model's own
    unconditional prediction; sample_guided passes it through."""
    torch.manual_seed(7)
    good = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=3).eval()
    bad = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=3).eval()
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([5, 9, 1]), torch.eye(3)
    with torch.no_grad():
        cond = good(x, t, c=c, c_mask=torch.ones(3, 1))
        bad_uncond = bad(x, t, c=c, c_mask=torch.zeros(3, 1))
        guided = ddpm.CFGDenoiser(good, 2.0, uncond=bad)(x, t, c=c)
        assert torch.allclose(guided, 3.0 * cond - 2.0 * bad_uncond, atol=1e-5)
        assert not torch.allclose(guided, ddpm.CFGDenoiser(good, 2.0)(x, t, c=c), atol=1e-3)
        assert torch.allclose(ddpm.CFGDenoiser(good, 2.0, uncond=good)(x, t, c=c),
                              ddpm.CFGDenoiser(good, 2.0)(x, t, c=c), atol=1e-5)
    s = ddpm.cosine_schedule(20)
    a = ddpm.sample_guided(good, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True)
    b = ddpm.sample_guided(good, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True, uncond=bad)
    assert not torch.allclose(a, b)


def test_autoguidance_extrapolates_from_the_bad_model_through_the_good_one():
    torch.manual_seed(3)
    good = OptimizedUNet(1, 8, channels=(8, 8, 8)).eval()
    bad = OptimizedUNet(1, 8, channels=(8, 8, 8)).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 7, 11, 0])
    with torch.no_grad():
        eps_good, eps_bad = good(x, t), bad(x, t)
        for w in (1.0, 1.5, 2.0, 3.0):
            guided = ddpm.AutoGuidance(good, bad, w)(x, t)
            assert torch.allclose(guided, eps_bad + w * (eps_good - eps_bad), atol=1e-5)
        assert torch.equal(ddpm.AutoGuidance(good, bad, 1.0)(x, t), eps_good)
        # a conditional pair gets the context through extra_args
        cgood = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=2).eval()
        cbad = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=2).eval()
        c, keep = torch.eye(2)[[0, 1, 0, 1]], torch.ones(4, 1)
        guided = ddpm.AutoGuidance(cgood, cbad, 2.0)(x, t, c=c, c_mask=keep)
        assert torch.allclose(guided, 2 * cgood(x, t, c=c, c_mask=keep) - cbad(x, t, c=c, c_mask=keep),
                              atol=1e-5)
    with pytest.raises(ValueError, match="w >= 1"):
        ddpm.AutoGuidance(good, bad, 0.5)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = ddpm.scaled_linear_schedule(40)
    plain = ddpm.sample_ddim(good, noise, s, steps=5, generator=torch.Generator().manual_seed(1), disable=True)
    guided = ddpm.sample_ddim(ddpm.AutoGuidance(good, bad, 2.0), noise, s, steps=5,
                              generator=torch.Generator().manual_seed(1), disable=True)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)


def test_schedule_to_moves_without_recomputing():
    s = ddpm.linear_schedule(150)
    s64 = ddpm.Schedule.from_betas(s.betas.double(), dtype=torch.float64)
    moved = s64.to("cpu")
    assert moved.dtype == torch.float64 and moved is not s64
    for f in dataclasses.fields(s64):
        assert torch.equal(getattr(moved, f.name), getattr(s64, f.name)), f.name
    # a Schedule is a value without a tensor-comparing ==: identity only
    assert (s64 == s64) and not (s64 == moved)


def test_extract_shapes_and_errors():
    values = torch.arange(10.0, dtype=torch.float64)
    like = torch.zeros(3, 2, 4, 4)
    out = ddpm.extract(values, torch.tensor([1, 5, 9]), like)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [1.0, 5.0, 9.0]
    assert ddpm.extract(values, 4, like).shape == () and ddpm.extract(values, 4, like) == 4
    assert ddpm.extract(values, torch.tensor([2, 3]), torch.zeros(2, 5)).shape == (2, 1)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        ddpm.extract(values, 10, like)
    import numpy as np      # a step from numpy (np.linspace(...).astype(int)) is an int too
    assert ddpm.extract(values, np.int64(7), like) == 7
    for wrong in (4.0, torch.tensor([1.0, 2.0, 3.0]), [1, 2, 3]):   # a step is a whole number
        with pytest.raises(TypeError, match="integer step"):
            ddpm.extract(values, wrong, like)


def test_shapes_that_would_broadcast_silently_are_refused(schedule):
    """A model that returns one channel for RGB images, one noise for a whole batch."""
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"noise has shape \(1, 3, 4, 4\).*\(2, 3, 4, 4\)"):
        schedule.q_sample(x, t, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"eps has shape \(2, 1, 4, 4\)"):
        schedule.predict_x0(x, t, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="eps has shape"):
        ddpm.ddpm_step(x, 5, torch.zeros(2, 1, 4, 4), schedule)


def test_scaled_linear_schedule_ends_at_pure_noise():
    assert ddpm.linear_schedule(150).alpha_bars[-1] == pytest.approx(0.219, abs=2e-3)
    scaled = ddpm.scaled_linear_schedule(150)
    assert scaled.alpha_bars[-1] < 1e-4
    assert scaled.betas[0].item() == pytest.approx(1e-4 * 1000 / 150, rel=1e-5)
    with pytest.raises(ValueError, match="too small"):
        ddpm.scaled_linear_schedule(20)


def test_sample_ddim_default_eta_is_the_measured_best():
    """The default η is the one bench/sampler_settings.json measured closest to real images among
    DDIM-50's η = 0, 0.5 and 1 on 03's model (lowest Fréchet distance)."""
    import inspect
    import json
    import re
    from pathlib import Path
    rows = json.loads((Path(__file__).resolve().parent.parent / "bench" / "sampler_settings.json")
                      .read_text())["rows"]
    by_eta = {float(m.group(1)): row["frechet"] for row in rows
              if (m := re.fullmatch(r"DDIM-50, η = ([\d.]+)(?: \(03 as it is\))?", row["name"]))}
    assert sorted(by_eta) == [0.0, 0.5, 1.0], by_eta
    assert inspect.signature(ddpm.sample_ddim).parameters["eta"].default == ddpm.DEFAULT_ETA
    assert min(by_eta, key=by_eta.get) == ddpm.DEFAULT_ETA


def test_samplers_pass_extra_args_by_keyword(schedule):
    seen = []

    def model(x, t, c=None):
        seen.append(c)
        return torch.zeros_like(x)
    c = torch.ones(2, 3)
    ddpm.sample_ddim(model, torch.randn(2, 1, 4, 4), schedule, steps=3, extra_args={"c": c},
                     disable=True)
    ddpm.sample_ddpm(model, torch.randn(2, 1, 4, 4), schedule, extra_args={"c": c}, disable=True)
    assert len(seen) == 3 + schedule.T and all(s is c for s in seen)


def test_sample_guided_is_seeded_and_guided():
    torch.manual_seed(8)
    model = OptimizedUNet(1, 8, channels=(8, 8, 8), c_dim=3).eval()
    s = ddpm.cosine_schedule(20)
    c = torch.eye(3)
    a = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True)
    b = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=3, disable=True)
    other = ddpm.sample_guided(model, c, (1, 8, 8), s, w=2.0, steps=5, seed=4, disable=True)
    unguided = ddpm.sample_guided(model, c, (1, 8, 8), s, w=0.0, steps=5, seed=3, disable=True)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    assert not torch.allclose(a, other) and not torch.allclose(a, unguided)


def test_samplers_autocast_the_model_only_on_image_batches_of_a_native_bf16_cpu(monkeypatch):
    """bf16 sampling: the model runs under autocast, the step's arithmetic stays in x's dtype."""
    s = ddpm.linear_schedule(10)
    seen = []

    def model(x, t):
        seen.append(torch.is_autocast_enabled("cpu"))
        eps = torch.zeros_like(x) + 0.1
        return eps.to(torch.bfloat16) if seen[-1] else eps   # as a conv net's output would be

    for native in (True, False):
        monkeypatch.setattr(ddpm, "native_bf16", lambda device, native=native: native)
        for sampler in (ddpm.sample_ddpm, functools.partial(ddpm.sample_ddim, steps=4)):
            seen.clear()
            out = sampler(model, torch.randn(2, 1, 4, 4), s, disable=True)
            assert out.dtype == torch.float32 and seen and all(v is native for v in seen)
            seen.clear()
            out = sampler(model, torch.randn(8, 2), s, disable=True)    # 2-D points: float32
            assert out.dtype == torch.float32 and not any(seen)
            seen.clear()
            sampler(model, torch.randn(2, 1, 4, 4), s, disable=True, bf16=not native)
            assert all(v is (not native) for v in seen)


def test_guidance_mixes_in_the_precision_of_x():
    """A bfloat16 network output is mixed as (1 + w)·eps_c − w·eps_∅ in float32, not bfloat16."""
    eps = {1.0: 1.0078125, 0.0: 1.0}          # both exact in bfloat16 (1 + 2⁻⁷ and 1)

    def model(x, t, c, c_mask):
        return torch.tensor([[eps[float(m)]] for m in c_mask[:, 0]], dtype=torch.bfloat16)
    guided = ddpm.CFGDenoiser(model, w=2.3)(torch.zeros(1, 1), torch.zeros(1), c=torch.ones(1, 1))
    # in bfloat16 the sum would round to 1.03125; in float32 it is 3.3·1.0078125 − 2.3 = 1.02578
    assert guided.dtype == torch.float32 and guided.item() == pytest.approx(1.02578125, abs=1e-5)


def test_projected_guidance_drops_the_part_along_x0():
    """ProjectedGuidance (the paper's form): with parallel = 1 it is plain guidance; with
    parallel = 0 the guided x̂₀ differs from x̂₀(c) only orthogonally to x̂₀(c), per sample, and a
    small w stays near the conditional prediction (no jump at w → 0); sample_guided takes it alone."""
    model, x, t, c, _ = _small_cfg_model([5, 9, 1])
    s = ddpm.cosine_schedule(20)
    with torch.no_grad():
        plain = ddpm.CFGDenoiser(model, 3.0)(x, t, c=c)
        assert torch.allclose(ddpm.ProjectedGuidance(model, s, 3.0, parallel=1.0)(x, t, c=c), plain, atol=1e-4)
        projected = ddpm.ProjectedGuidance(model, s, 3.0)(x, t, c=c)
        keep = torch.ones(3, 1)
        x0_cond = s.predict_x0(x, t, model(x, t, c=c, c_mask=keep))
        x0_uncond = s.predict_x0(x, t, model(x, t, c=c, c_mask=0 * keep))
        barely = ddpm.ProjectedGuidance(model, s, 1e-3)(x, t, c=c)
    moved = s.predict_x0(x, t, projected) - x0_cond
    cosine = torch.nn.functional.cosine_similarity(moved.flatten(1), x0_cond.flatten(1))
    assert cosine.abs().max() < 1e-3 and moved.flatten(1).norm(dim=1).min() > 1e-3
    assert not torch.allclose(projected, plain)
    assert torch.allclose(s.predict_x0(x, t, barely), x0_cond, atol=1e-2)
    # the guidance has a part along x̂₀(c) here, which the course's earlier form dropped even at w → 0
    delta = (x0_cond - x0_uncond).flatten(1)
    part = torch.nn.functional.cosine_similarity(delta, x0_cond.flatten(1)) * delta.norm(dim=1)
    assert part.abs().max() > 0.05
    a = ddpm.sample_guided(model, c, (1, 8, 8), s, w=3.0, steps=5, seed=3, disable=True, projected=0.0)
    b = ddpm.sample_guided(model, c, (1, 8, 8), s, w=3.0, steps=5, seed=3, disable=True)
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="projected guidance takes none"):
        ddpm.sample_guided(model, c, (1, 8, 8), s, w=3.0, steps=5, projected=0.0, rescale=0.7)
    with pytest.raises(ValueError, match="norm_threshold"):
        ddpm.ProjectedGuidance(model, s, 3.0, norm_threshold=-1)
