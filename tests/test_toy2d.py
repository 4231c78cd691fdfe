"""The 2-D world: closed forms against autograd and Monte Carlo, samplers against the truth."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from course_lib.conditioning import keep_mask, one_hot
from course_lib.ddpm import (CFGDenoiser, cosine_schedule, diffusion_loss, linear_schedule,
                             sample_ddim, sample_ddpm, scaled_linear_schedule)
from course_lib.toy2d import (ExactDenoiser, GaussianMixture, ToyDenoiser, eps_error,
                              example_mixture, make_grid)
from course_lib.train import train

MIX = example_mixture()
N = 4000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_create_rejects_bad_parameters():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture.create([0.5, 0.6], [[0, 0], [1, 1]], [1, 1])
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture.create([0.5, 0.5], [[0, 0], [1, 1]], [1, -1])
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture.create([0.5, 0.5], [[0, 0], [1, 1]], [1, 1], classes=[0, 2])


@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.05])
def test_score_is_the_gradient_of_log_q_t(alpha_bar):
    x = torch.randn(64, 2, generator=_gen(), dtype=torch.float64) * 2
    for c in (None, 2):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(MIX.log_prob(xg, alpha_bar, c).sum(), xg)
        assert torch.allclose(MIX.score(x, alpha_bar, c), grad, atol=1e-10)
        eps = MIX.eps(x, alpha_bar, c)
        assert torch.allclose(eps, -math.sqrt(1 - alpha_bar) * grad, atol=1e-10)


def test_q_t_is_the_law_of_noised_samples_and_eps_star_is_E_eps_given_x_t():
    """Monte Carlo: x_t = √ᾱ x_0 + √(1-ᾱ) ε has density q_t, and ε - ε*(x_t) is orthogonal to x_t."""
    n, ab = 200_000, 0.4
    x0, _ = MIX.sample(n, _gen(1), dtype=torch.float64)
    eps = torch.randn(n, 2, generator=_gen(2), dtype=torch.float64)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    # the density integrates to 1 and predicts the mass of a box
    grid = make_grid(7.0, 300)
    p = MIX.log_prob(grid.points, ab).exp()
    assert abs(float(p.sum()) * grid.cell_area - 1) < 1e-3
    inside = (grid.points[:, 0] > 0) & (grid.points[:, 1] > 0)
    box_mc = ((x_t[:, 0] > 0) & (x_t[:, 1] > 0)).double().mean()
    assert abs(float(p[inside].sum()) * grid.cell_area - box_mc) < 4 * math.sqrt(0.25 / n) + 2e-3
    # ε* = E[ε | x_t]: the residual is uncorrelated with any function of x_t
    resid = eps - MIX.eps(x_t, ab)
    for g in (x_t, MIX.eps(x_t, ab), torch.tanh(x_t)):
        prod = (resid * g).sum(1)
        assert abs(prod.mean()) < 4 * prod.std() / math.sqrt(n)
    # and a wrong ε (here: one for the wrong ᾱ) has a larger DDPM loss
    assert (resid ** 2).mean() < ((eps - MIX.eps(x_t, 0.6)) ** 2).mean() - 0.01


def _check_matches_mixture(x):
    shares, n = MIX.mode_shares(x), len(x)
    se = (MIX.weights * (1 - MIX.weights) / n).sqrt()
    assert ((shares - MIX.weights).abs() < 4 * se + 0.005).all(), (shares, MIX.weights)
    x = x.double()
    cov = MIX.cov()
    se_mean = (cov.diag() / n).sqrt()
    assert ((x.mean(0) - MIX.mean()).abs() < 4 * se_mean).all(), (x.mean(0), MIX.mean())
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.08, atol=0.15), (torch.cov(x.T), cov)


@pytest.mark.parametrize("make_schedule", [scaled_linear_schedule, cosine_schedule])
def test_exact_eps_samplers_reproduce_the_mixture(make_schedule):
    schedule = make_schedule(150)
    assert schedule.alpha_bars[-1] < 1e-3
    model = ExactDenoiser(MIX, schedule)
    g = _gen(3)
    x_T = torch.randn(N, 2, generator=g, dtype=torch.float64)
    _check_matches_mixture(sample_ddpm(model, x_T, schedule, generator=g, disable=True))
    _check_matches_mixture(sample_ddim(model, x_T, schedule, steps=150, eta=0.0, disable=True))
    _check_matches_mixture(sample_ddim(model, x_T, schedule, steps=50, eta=0.0, disable=True))


def test_the_alpha_bar_T_trap_starves_the_far_heavy_mode_and_feeds_the_central_one():
    """linear_schedule(150) ends at ᾱ_T = 0.22, yet sampling starts from N(0, I)."""
    schedule = linear_schedule(150)
    assert 0.2 < schedule.alpha_bars[-1] < 0.25
    model = ExactDenoiser(MIX, schedule)
    g = _gen(4)
    for x in (sample_ddpm(model, torch.randn(N, 2, generator=g), schedule, generator=g,
                          disable=True),
              sample_ddim(model, torch.randn(N, 2, generator=g), schedule, eta=0.0,
                          disable=True)):
        shares = MIX.mode_shares(x)
        assert shares[0] < MIX.weights[0] - 0.05          # heavy blob A at (2, 2): 0.35 -> ~0.25
        assert shares[2] > MIX.weights[2] + 0.02          # central blob C: 0.15 -> ~0.2
    # the same schedule started from the right noise, x_T ~ q_T, recovers π
    x0, _ = MIX.sample(N, g, dtype=torch.float64)
    x_T = schedule.q_sample(x0, schedule.T - 1, torch.randn(N, 2, generator=g, dtype=torch.float64))
    _check_matches_mixture(sample_ddpm(model, x_T, schedule, generator=g, disable=True))


def test_exact_denoiser_context_and_mask():
    schedule = scaled_linear_schedule(150)
    model = ExactDenoiser(MIX, schedule)
    x, t = torch.randn(6, 2, generator=_gen(5)), torch.full((6,), 60)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    c = one_hot(labels, 3)
    mask = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    out = model(x, t, c=c, c_mask=mask)
    ab = schedule.alpha_bars[60].double()
    assert torch.allclose(out[:3].double(), MIX.eps(x[:3], ab, labels[:3]), atol=1e-6)
    assert torch.allclose(out[3:].double(), MIX.eps(x[3:], ab), atol=1e-6)
    assert not torch.allclose(out[:3], model(x[:3], t[:3]))
    assert out.dtype == x.dtype


def test_tilted_density_at_w0_is_p_x_given_c():
    grid = make_grid(5.0, 120)
    for c in range(MIX.n_classes):
        tilted = MIX.tilted_density(grid, c, 0.0).flatten()
        cond = MIX.log_prob(grid.points, 1.0, c).exp()
        assert torch.allclose(tilted, cond / (cond.sum() * grid.cell_area), atol=1e-8)
    shares = [MIX.grid_class_share(MIX.tilted_density(grid, 2, w), grid, 2) for w in (0, 1, 3)]
    assert shares[0] < shares[1] < shares[2]


def test_tilted_density_stays_finite_where_p_c_given_x_underflows():
    """Far from class c, p(c|x) is 0 in float64; w = -1 must still give p(x), and w < -1 a
    density, not NaN (log p(c|x) by logsumexp, not the log of the probability)."""
    grid = make_grid(40.0, 80)
    assert (MIX.class_probs(grid.points)[:, 0] == 0).any()          # the underflow is there
    p_x = MIX.log_prob(grid.points).exp()
    assert torch.allclose(MIX.tilted_density(grid, 0, -1.0).flatten(),
                          p_x / (p_x.sum() * grid.cell_area), atol=1e-12)
    assert torch.isfinite(MIX.tilted_density(grid, 0, -2.0)).all()
    near = make_grid(5.0, 60).points
    assert torch.allclose(MIX.log_class_prob(near, 1), MIX.class_probs(near)[:, 1].log(), atol=1e-9)
    for c in (-1, MIX.n_classes):
        with pytest.raises(ValueError, match="not one of this mixture's"):
            MIX.log_class_prob(near, c)


def test_guidance_raises_the_share_of_the_requested_class():
    schedule = scaled_linear_schedule(150)
    model = ExactDenoiser(MIX, schedule)
    c = one_hot(torch.full((N,), 2), 3)
    shares = {}
    for w in (0.0, 1.0, 3.0):
        g = _gen(6)
        x = sample_ddpm(CFGDenoiser(model, w), torch.randn(N, 2, generator=g), schedule,
                        extra_args={"c": c}, generator=g, disable=True)
        shares[w] = MIX.class_shares(x)[2].item()
    assert shares[0.0] < 0.93                   # C overlaps its neighbours: ~0.87 at w = 0
    assert shares[1.0] > shares[0.0] + 0.05
    assert shares[3.0] >= shares[1.0] - 0.005


def test_toy_denoiser_learns():
    torch.manual_seed(0)
    schedule = scaled_linear_schedule(150)
    x, k = MIX.sample(6000, _gen(7))
    loader = DataLoader(TensorDataset(x, MIX.classes[k]), batch_size=128, shuffle=True)
    net = ToyDenoiser(150, n_classes=3)
    assert 2_000 < sum(p.numel() for p in net.parameters()) < 20_000
    before = eps_error(net, MIX, schedule, n=2000, generator=_gen(8))

    def toy_loss(model, batch):
        x0, labels = batch
        return diffusion_loss(model, x0, schedule, c=one_hot(labels, 3),
                              c_mask=keep_mask(len(x0), 0.8))

    history = train(net, loader, toy_loss, epochs=8, lr=3e-3, progress=False)
    assert len(history.losses) >= 300
    first, last = sum(history.losses[:30]) / 30, history.final_loss
    assert last < 0.6 * first
    after = eps_error(net, MIX, schedule, n=2000, generator=_gen(8))
    assert after["error"] < 0.5 * before["error"]
    assert after["floor"] <= after["loss"] < after["floor"] + 0.1
    with pytest.raises(ValueError, match="n_classes"):
        ToyDenoiser(150)(x[:2], torch.zeros(2, dtype=torch.long), c=one_hot(k[:2], 5))
    t3, labels = torch.tensor([3, 60, 140]), torch.tensor([0, 2, 1])   # 3 points, 3 classes
    with torch.no_grad():       # labels, as ExactDenoiser takes them, are the one-hot rows
        assert torch.equal(net(x[:3], t3, c=labels, c_mask=torch.ones(3, 1)),
                           net(x[:3], t3, c=one_hot(labels, 3), c_mask=torch.ones(3, 1)))
    with pytest.raises(ValueError, match=r"one-hot rows \(3, 3\)"):
        net(x[:3], t3, c=one_hot(labels, 4))


def test_figures_build_with_labelled_axes():
    from course_lib import viz2d
    schedule = scaled_linear_schedule(150)
    exact = ExactDenoiser(MIX, schedule)
    x = MIX.sample(200, _gen(9))[0]
    figs = [viz2d.plot_forward_cloud(MIX, schedule, [0, 50, 149], n=200, generator=_gen(9)),
            viz2d.plot_eps_fields(exact, MIX, schedule, [20, 80], n_arrows=5),
            viz2d.plot_paths(MIX, {"a": torch.randn(5, 3, 2), "b": torch.randn(5, 3, 2)}),
            viz2d.plot_mode_shares(MIX, {"data": x, "again": x}),
            viz2d.plot_guidance(MIX, 2, {0.0: x, 1.0: x}, grid=make_grid(4.0, 40))]
    for fig in figs:
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax
    # the forward cloud's colours are named: one legend entry per mode, with its class
    labels = [t.get_text() for t in figs[0].legends[0].get_texts()]
    assert labels == [f"mode {k} (class {MIX.class_names[c]})" for k, c in enumerate(MIX.classes.tolist())]
