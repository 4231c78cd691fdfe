"""Every exercise checker says "correct" for a right answer and explains a wrong one."""
import functools

import open_clip
import pytest
import torch
from einops import rearrange
from torch import nn

from course_lib import check
from course_lib.blocks import DownBlock, ResidualConvBlock, SinusoidalPositionEmbedBlock, UpBlock
from course_lib.conditioning import keep_mask, one_hot
from course_lib.ddpm import CFGDenoiser, add_noise, ddim_step, ddpm_step, linear_schedule


def verdict(capsys, fn, *answer):
    ok = fn(*answer)
    return ok, capsys.readouterr().out


def _own_add_noise(x, amount, noise):
    amount = torch.as_tensor(amount).reshape(-1, 1, 1, 1)
    return (1 - amount) * x + amount * noise


class OwnDown(nn.Sequential):          # 01's Exercise 1, written out
    def __init__(self, i, o):
        super().__init__(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                         nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                         nn.MaxPool2d(2))


class OwnUp(UpBlock):                   # 01's Exercise 2: the template's class, forward written
    def forward(self, x, skip):
        return self.model(torch.cat((x, skip), dim=1))


class OwnResidual(ResidualConvBlock):   # 03's Exercise 3
    def forward(self, x):
        x1 = self.conv1(x)
        return x1 + self.conv2(x1)


def _own_clip_loss(img, txt, scale):    # 05's Exercise 1
    logits = scale * img @ txt.T
    target = torch.arange(len(img))
    return (nn.functional.cross_entropy(logits, target)
            + nn.functional.cross_entropy(logits.T, target)) / 2


def test_add_noise(capsys):
    assert verdict(capsys, check.check_add_noise, _own_add_noise)[0]
    ok, out = verdict(capsys, check.check_add_noise, lambda x, a, n: (1 - a) * x + a * n * 0.5)
    assert not ok and "amount=0.5" in out
    per_image = lambda x, a, n: (1 - torch.as_tensor(a).reshape(-1, 1, 1, 1)) * x \
        + torch.as_tensor(a).reshape(-1, 1, 1, 1) * n  # noqa
    assert verdict(capsys, check.check_add_noise, per_image)[0]
    ok, out = verdict(capsys, check.check_add_noise, lambda x, a, n: (1 - a) * x + a * n)
    assert not ok and "one amount per image" in out            # a float-only answer

    def in_place(x, amount, noise):   # the right mix, written over the caller's batch
        amount = torch.as_tensor(amount).reshape(-1, 1, 1, 1)
        x *= 1 - amount
        x += amount * noise
        return x
    ok, out = verdict(capsys, check.check_add_noise, in_place)
    assert not ok and "amount=0.5: it changed its input x in place" in out, out


def test_down_and_up_blocks(capsys):
    assert verdict(capsys, check.check_down_block, OwnDown)[0]
    assert verdict(capsys, check.check_up_block, OwnUp)[0]

    class SkipFirst(UpBlock):            # concatenates in the wrong order
        def forward(self, x, skip):
            return self.model(torch.cat((skip, x), dim=1))

    ok, out = verdict(capsys, check.check_up_block, SkipFirst)
    assert not ok and "max difference" in out

    class NoPool(nn.Sequential):
        def __init__(self, i, o):
            super().__init__(*list(DownBlock(i, o).children())[:-1])

    ok, out = verdict(capsys, check.check_down_block, NoPool)
    assert not ok and "shape" in out

    class NoBias(nn.Sequential):          # bias=False before BatchNorm: one weight missing each
        def __init__(self, i, o):
            super().__init__(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.MaxPool2d(2))

    ok, out = verdict(capsys, check.check_down_block, NoBias)
    assert not ok and "layers differ from the reference (missing: 0.bias, 3.bias)" in out, out

    class WideSecond(nn.Sequential):      # the second convolution takes the input's channels
        def __init__(self, i, o):
            super().__init__(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.MaxPool2d(2))

    ok, out = verdict(capsys, check.check_down_block, WideSecond)
    assert not ok and "of another shape: 3.weight (8, 3, 3, 3) instead of (8, 8, 3, 3)" in out, out


def test_q_sample(capsys):
    def right(x0, t, noise, alpha_bars):
        ab = alpha_bars[t].reshape(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def wrong(x0, t, noise, alpha_bars):          # variances instead of standard deviations
        ab = alpha_bars[t].reshape(-1, 1, 1, 1)
        return ab * x0 + (1 - ab) * noise
    assert verdict(capsys, check.check_q_sample, right)[0]
    assert not verdict(capsys, check.check_q_sample, wrong)[0]

    def into_noise(x0, t, noise, alpha_bars):    # right, but written into the caller's noise
        ab = alpha_bars[t].reshape(-1, 1, 1, 1)
        return noise.mul_((1 - ab).sqrt()).add_(ab.sqrt() * x0)
    ok, out = verdict(capsys, check.check_q_sample, into_noise)
    assert not ok and "it changed its input noise in place" in out, out


def _mean(x_t, t, eps, s):
    return (x_t - s.betas[t] / (1 - s.alpha_bars[t]).sqrt() * eps) / s.alphas[t].sqrt()


def test_reverse_step_explains_the_usual_mistakes(capsys):
    def right(x_t, t, eps, s, z):      # written out: calling ddpm_step is refused (see below)
        return _mean(x_t, t, eps, s) + (s.betas[t].sqrt() * z if t > 0 else 0)

    def noisy_end(x_t, t, eps, s, z):
        return _mean(x_t, t, eps, s) + s.betas[t].sqrt() * z

    def no_noise(x_t, t, eps, s, z):
        return _mean(x_t, t, eps, s)

    assert verdict(capsys, check.check_reverse_step, right)[0]
    ok, out = verdict(capsys, check.check_reverse_step, noisy_end)
    assert not ok and "t=0" in out and "no noise" in out
    ok, out = verdict(capsys, check.check_reverse_step, no_noise)
    assert not ok and "noise term" in out
    ok, out = verdict(capsys, check.check_reverse_step, lambda x_t, t, eps, s, z: FIXME)  # noqa
    assert not ok and "not done yet" in out

    def fresh_noise(x_t, t, eps, s, z):    # Algorithm 2's z ~ N(0, I), drawn here, not the one given
        return _mean(x_t, t, eps, s) + (s.betas[t].sqrt() * torch.randn_like(z) if t > 0 else 0)
    ok, out = verdict(capsys, check.check_reverse_step, fresh_noise)
    assert not ok and "not the z passed in" in out, out


def test_reverse_step_names_the_noise_scale_and_the_step_numbering(capsys):
    def with_scale(sigma):        # the right mean, and noise scaled by sigma(s, t) for t > 0
        return lambda x_t, t, eps, s, z: _mean(x_t, t, eps, s) + (sigma(s, t) * z if t > 0 else 0)

    cases = {
        "one step early": with_scale(lambda s, t: s.betas[t - 1].sqrt()),
        "posterior variance": with_scale(lambda s, t: s.posterior_variance[t].sqrt()),
        "√α_t": with_scale(lambda s, t: s.alphas[t].sqrt()),
        "scaled by 0.20000": with_scale(lambda s, t: 0.2),
    }
    for says, fn in cases.items():
        ok, out = verdict(capsys, check.check_reverse_step, fn)
        assert not ok and "t=149" in out and "the mean is right" in out and says in out, (says, out)

    def paper_numbering(x_t, t, eps, s, z):     # the mean alone at t = 1, as if steps ran 1..T
        return _mean(x_t, t, eps, s) + (s.betas[t].sqrt() * z if t > 1 else 0)
    ok, out = verdict(capsys, check.check_reverse_step, paper_numbering)
    assert not ok and "t=1" in out and "count from 0" in out

    def wrong_mean(x_t, t, eps, s, z):          # β_t/(1 − ᾱ_t) without the square root
        mean = (x_t - s.betas[t] / (1 - s.alpha_bars[t]) * eps) / s.alphas[t].sqrt()
        return mean + (s.betas[t].sqrt() * z if t > 0 else 0)
    ok, out = verdict(capsys, check.check_reverse_step, wrong_mean)
    assert not ok and "check the mean" in out and "the mean is right" not in out


def test_ddim_step(capsys):
    def right(x_t, t, eps, s, t_prev):
        ab_prev = s.alpha_bars[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        return ab_prev.sqrt() * s.predict_x0(x_t, t, eps) + (1 - ab_prev).sqrt() * eps

    def returns_x0(x_t, t, eps, s, t_prev):
        return s.predict_x0(x_t, t, eps)

    assert verdict(capsys, check.check_ddim_step, right)[0]
    ok, out = verdict(capsys, check.check_ddim_step, returns_x0)
    assert not ok and "x̂_0" in out
    ok, out = verdict(capsys, check.check_ddim_step,
                      lambda x_t, t, eps, s, t_prev: ddim_step(x_t, t, eps, s, t_prev, eta=1.0).x_prev)
    assert not ok


def test_sinusoidal_and_rearrange(capsys):
    def right(t, dim):
        half = dim // 2
        angles = t.float()[:, None] * 10_000 ** (-torch.arange(half) / (half - 1))
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    def by_exp(t, dim):                    # the same frequencies written with exp and log
        half = dim // 2
        freqs = torch.exp(-torch.log(torch.tensor(10_000.0)) * torch.arange(half) / (half - 1))
        angles = t.float()[:, None] * freqs
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    def half_not_half_minus_one(t, dim):   # the Transformer's spacing, not DDPM's
        half = dim // 2
        angles = t.float()[:, None] * 10_000 ** (-torch.arange(half) / half)
        return torch.cat((angles.sin(), angles.cos()), dim=1)
    assert verdict(capsys, check.check_sinusoidal, by_exp)[0]
    ok, out = verdict(capsys, check.check_sinusoidal, half_not_half_minus_one)
    assert not ok and "k/(d/2 − 1)" in out, out

    def interleaved(t, dim):               # sin, cos, sin, cos, ... as the Transformer lays them out
        e = right(t, dim)
        return torch.stack((e[:, :dim // 2], e[:, dim // 2:]), dim=2).flatten(1)
    ok, out = verdict(capsys, check.check_sinusoidal, interleaved)
    assert not ok and "interleaved" in out, out

    def swapped(t, dim):
        e = SinusoidalPositionEmbedBlock(dim)(t)
        return torch.cat((e[:, dim // 2:], e[:, :dim // 2]), dim=1)
    assert verdict(capsys, check.check_sinusoidal, right)[0]
    ok, out = verdict(capsys, check.check_sinusoidal, swapped)
    assert not ok and "the cosines come first" in out, out
    good = lambda x: rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)  # noqa
    bad = lambda x: rearrange(x, "b c (h p1) (w p2) -> b (p1 p2 c) h w", p1=2, p2=2)  # noqa
    assert verdict(capsys, check.check_rearrange_pool, good)[0]
    assert not verdict(capsys, check.check_rearrange_pool, bad)[0]
    undo = lambda y: rearrange(y, "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2)  # noqa
    undo_wrong = lambda y: rearrange(y, "b (p1 p2 c) h w -> b c (h p1) (w p2)", p1=2, p2=2)  # noqa
    assert verdict(capsys, check.check_rearrange_pool, good, undo)[0]
    ok, said = verdict(capsys, check.check_rearrange_pool, good, undo_wrong)
    assert not ok and "undoing it" in said


def test_residual_block(capsys):
    assert verdict(capsys, check.check_residual_block, OwnResidual)[0]

    class NoSkip(ResidualConvBlock):
        def forward(self, x):
            return self.conv2(self.conv1(x))

    ok, out = verdict(capsys, check.check_residual_block, NoSkip)
    assert not ok and "residual sum is missing" in out

    class InputSkip(ResidualConvBlock):     # ResNet's identity shortcut: in_ch ≠ out_ch here
        def forward(self, x):
            return x + self.conv2(self.conv1(x))

    ok, out = verdict(capsys, check.check_residual_block, InputSkip)
    assert not ok and "differ in shape" in out and "out_ch channels" in out, out


def test_guidance_and_guided_eps(capsys):
    assert verdict(capsys, check.check_guidance, lambda c, u, w: (1 + w) * c - w * u)[0]
    assert not verdict(capsys, check.check_guidance, lambda c, u, w: c + w * (c - u) * 0.5)[0]
    ok, out = verdict(capsys, check.check_guidance, lambda c, u, w: u + w * (c - u))
    assert not ok and "the other convention" in out and "w = 1 is the conditional" in out, out
    ok, out = verdict(capsys, check.check_guidance, lambda c, u, w: (1 + w) * u - w * c)   # swapped
    assert not ok and "w=-1.0" in out and "must be ε_uncond itself" in out, out
    ok, out = verdict(capsys, check.check_guidance, lambda c, u, w: c + w * abs(w) * (c - u))  # not linear
    assert not ok and "w=0.5" in out and "not a straight line in w" in out, out

    def one_pass(model, x, t, c, w):
        mask = torch.cat((torch.ones(len(x), 1), torch.zeros(len(x), 1)))
        cond, uncond = model(torch.cat((x, x)), torch.cat((t, t)), c=torch.cat((c, c)),
                             c_mask=mask).chunk(2)
        return (1 + w) * cond - w * uncond

    def two_passes(model, x, t, c, w):
        cond = model(x, t, c=c, c_mask=torch.ones(len(x), 1))
        uncond = model(x, t, c=c, c_mask=torch.zeros(len(x), 1))
        return (1 + w) * cond - w * uncond

    assert verdict(capsys, check.check_guided_eps, one_pass)[0]
    ok, out = verdict(capsys, check.check_guided_eps, two_passes)
    assert not ok and "doubled batch" in out


def test_paste_back(capsys):
    """check_paste_back: the photo noised to t_prev where keep = 1, the sampler's x elsewhere,
    and the photo itself after the last step; the common slips fail with a hint."""
    def right(x, photo, keep, t_prev, schedule, noise):
        if t_prev < 0:
            known = photo
        else:
            ab = schedule.alpha_bars[t_prev]
            known = ab.sqrt() * photo + (1 - ab).sqrt() * noise
        return keep * known + (1 - keep) * x

    def always_noised(x, photo, keep, t_prev, schedule, noise):     # forgets the last step
        ab = schedule.alpha_bars[max(t_prev, 0)]
        return keep * (ab.sqrt() * photo + (1 - ab).sqrt() * noise) + (1 - keep) * x

    def clean_photo(x, photo, keep, t_prev, schedule, noise):       # pastes the photo unnoised
        return keep * photo + (1 - keep) * x

    def level_before(x, photo, keep, t_prev, schedule, noise):      # the noise level of step t
        ab = schedule.alpha_bars[t_prev + 1]
        return keep * (ab.sqrt() * photo + (1 - ab).sqrt() * noise) + (1 - keep) * x

    def pastes_everywhere(x, photo, keep, t_prev, schedule, noise):  # keep ignored
        return right(x, photo, torch.ones_like(keep), t_prev, schedule, noise)

    assert verdict(capsys, check.check_paste_back, right)[0]
    ok, out = verdict(capsys, check.check_paste_back, always_noised)
    assert not ok and "t_prev=-1" in out and "no noise is left" in out
    ok, out = verdict(capsys, check.check_paste_back, clean_photo)
    assert not ok and "t_prev=12" in out and "clean photo" in out and "noise level" in out
    ok, out = verdict(capsys, check.check_paste_back, level_before)
    assert not ok and "t_prev=12" in out and "step 13's noise level" in out
    ok, out = verdict(capsys, check.check_paste_back, pastes_everywhere)
    assert not ok and "keep = 0" in out and "stay as it is" in out
    for said in (out for _, out in (verdict(capsys, check.check_paste_back, wrong)
                                    for wrong in (always_noised, clean_photo, level_before))):
        assert "alpha_bars" not in said and "paste the photo itself" not in said, said   # no line handed over


def test_context_drop(capsys):
    def right(labels, n, keep_prob):
        return one_hot(labels, n) * (torch.rand(len(labels), 1) < keep_prob).float()

    def keeps_all(labels, n, keep_prob):
        return one_hot(labels, n)

    def always_ninety(labels, n, keep_prob):     # the notebook's KEEP_PROB, written in
        return one_hot(labels, n) * (torch.rand(len(labels), 1) < 0.9).float()

    def every_other(labels, n, keep_prob):       # the right share, as a fixed pattern
        every = round(1 / (1 - keep_prob))
        return one_hot(labels, n) * (torch.arange(len(labels)) % every != 0).float()[:, None]
    assert verdict(capsys, check.check_context_drop, right)[0]
    ok, out = verdict(capsys, check.check_context_drop, keeps_all)
    assert not ok and "100.0% of contexts kept" in out
    ok, out = verdict(capsys, check.check_context_drop, always_ninety)
    assert not ok and "keep_prob=0.5" in out
    ok, out = verdict(capsys, check.check_context_drop, every_other)
    assert not ok and "same rows" in out


def test_clip_loss_and_zero_shot(capsys):
    assert verdict(capsys, check.check_clip_loss, _own_clip_loss)[0]

    def one_direction(img, txt, scale):
        logits = scale * img @ txt.T
        return nn.functional.cross_entropy(logits, torch.arange(len(img)))
    ok, out = verdict(capsys, check.check_clip_loss, one_direction)
    assert not ok and "only images to captions is scored" in out, out

    def summed(img, txt, scale):
        logits, target = scale * img @ txt.T, torch.arange(len(img))
        return (nn.functional.cross_entropy(logits, target)
                + nn.functional.cross_entropy(logits.T, target))
    ok, out = verdict(capsys, check.check_clip_loss, summed)
    assert not ok and "summed" in out, out

    def right(img, txt):
        img, txt = nn.functional.normalize(img, dim=1), nn.functional.normalize(txt, dim=1)
        return (img @ txt.T).argmax(dim=1)

    def argmin(img, txt):
        img, txt = nn.functional.normalize(img, dim=1), nn.functional.normalize(txt, dim=1)
        return (img @ txt.T).argmin(dim=1)
    assert verdict(capsys, check.check_zero_shot, right)[0]
    ok, out = verdict(capsys, check.check_zero_shot, argmin)
    assert not ok and "argmax" in out
    ok, out = verdict(capsys, check.check_zero_shot, lambda img, txt: (img @ txt.T).argmax(dim=1))
    assert not ok and "normalise the prompts" in out                  # dot products, unnormalised
    only_images = lambda img, txt: (nn.functional.normalize(img, dim=1) @ txt.T).argmax(dim=1)  # noqa
    assert not verdict(capsys, check.check_zero_shot, only_images)[0]


def _shortcuts():
    """(checker, an answer that only calls the library's version of the exercise, what it calls)."""
    from course_lib.ddpm import CFGDenoiser, linear_schedule
    from course_lib.editing import paste_back

    class CopiedDown(nn.Sequential):
        def __init__(self, i, o):
            super().__init__(*DownBlock(i, o))

    class ParentsForward(UpBlock):
        def forward(self, x, skip):
            return super().forward(x, skip)

    class CalledResidual(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            reference = ResidualConvBlock(i, o)
            self.conv1, self.conv2 = reference.conv1, reference.conv2

        def forward(self, x):
            return ResidualConvBlock.forward(self, x)

    return [
        (check.check_add_noise, lambda x, a, n: add_noise(x, a, n), "add_noise"),
        (check.check_down_block, CopiedDown, "DownBlock"),
        (check.check_up_block, ParentsForward, "super().forward"),
        (check.check_q_sample, lambda x0, t, n, ab: linear_schedule(150).q_sample(x0, t, n), "q_sample"),
        (check.check_reverse_step, lambda x, t, e, s, z: ddpm_step(x, t, e, s, noise=z).x_prev,
         "ddpm_step"),
        (check.check_ddim_step, lambda x, t, e, s, p: ddim_step(x, t, e, s, p, eta=0.0).x_prev,
         "ddim_step"),
        (check.check_sinusoidal, lambda t, d: SinusoidalPositionEmbedBlock(d)(t),
         "SinusoidalPositionEmbedBlock"),
        (check.check_residual_block, CalledResidual, "ResidualConvBlock"),
        (check.check_paste_back, lambda *a: paste_back(*a), "paste_back"),
        (check.check_guided_eps, lambda model, x, t, c, w: CFGDenoiser(model, w)(x, t, c), "CFGDenoiser"),
        (check.check_context_drop, lambda y, n, p: one_hot(y, n) * keep_mask(len(y), p), "keep_mask"),
        (check.check_clip_loss, lambda i, t, s: open_clip.ClipLoss()(i, t, s), "ClipLoss"),
    ]


_STEP = ddpm_step   # an alias made in a cell above the exercise


def _helper(x, t, e, s, z):
    return ddpm_step(x, t, e, s, noise=z).x_prev


def _dodges():
    """(checker, an answer that hands in the library's own code without naming it, what is said)."""
    class Inherited(DownBlock):
        pass

    class Bare(UpBlock):          # 01's template class with its forward deleted
        pass

    class Assigned(UpBlock):
        forward = UpBlock.forward

    class InheritedResidual(ResidualConvBlock):
        pass

    def with_default(x, t, e, s, z, step=ddpm_step):
        return step(x, t, e, s, noise=z).x_prev

    def two_defaults(x, t, e, s, z, step=ddpm_step, other=_helper):   # same type, both kept
        return step(x, t, e, s, noise=z).x_prev

    class ParentsInit(DownBlock):     # writes __init__, but only to call the library's
        def __init__(self, i, o):
            super().__init__(i, o)

    return [
        (check.check_add_noise, (add_noise,), "`add_noise` itself"),
        (check.check_down_block, (Inherited,), "DownBlock.__init__"),
        (check.check_up_block, (Bare,), "UpBlock.forward"),
        (check.check_up_block, (Assigned,), "UpBlock.forward"),
        (check.check_up_block, (UpBlock,), "`UpBlock` itself"),
        (check.check_residual_block, (InheritedResidual,), "ResidualConvBlock.forward"),
        (check.check_reverse_step, (lambda x, t, e, s, z: _STEP(x, t, e, s, noise=z).x_prev,),
         "the library's `ddpm_step`"),
        (check.check_reverse_step, (with_default,), "the library's `ddpm_step`"),
        (check.check_reverse_step, (two_defaults,), "the library's `ddpm_step`"),
        (check.check_down_block, (ParentsInit,), "`super().__init__` (the library's `DownBlock.__init__`)"),
        (check.check_reverse_step, (lambda x, t, e, s, z: _helper(x, t, e, s, z),), "`ddpm_step`"),
        (check.check_clip_loss, (open_clip.ClipLoss(),), "`ClipLoss` itself"),
        (check.check_rearrange_pool, (lambda x: nn.PixelUnshuffle(2)(x),), "PixelUnshuffle"),
        (check.check_reverse_step, (lambda x, t, e, s, z: _PARTIAL(x, t, e, s, noise=z).x_prev,),
         "the library's `ddpm_step`"),
        (check.check_q_sample, (lambda x0, t, n, ab: _BOUND(x0, t, n),), "Schedule.q_sample"),
    ]


guided = CFGDenoiser(lambda x, t, **kw: x, 2.0)   # a notebook's global of a library class


def test_own_answers_that_share_a_name_with_the_library_are_not_refused(capsys):
    """Locals read by a comprehension or a lambda, attribute names and a parent that is not the
    library's are the student's own, whatever a global of the same name holds."""
    def context(labels, n, keep_prob):
        keep_mask = (torch.rand(len(labels), 1) < keep_prob).float()   # named like the library's
        return one_hot(labels, n) * [keep_mask for _ in (0,)][0]

    def guidance(cond, uncond, w):
        guided = (1 + w) * cond - w * uncond
        return (lambda: guided)()

    class SequentialDown(nn.Sequential):
        def __init__(self, i, o):
            super().__init__(*OwnDown(i, o))

        def forward(self, x):        # the parent whose forward it calls is torch's, not ours
            return super().forward(x)
    assert verdict(capsys, check.check_context_drop, context)[0]
    assert verdict(capsys, check.check_guidance, guidance)[0]
    assert verdict(capsys, check.check_down_block, SequentialDown)[0]


def test_a_guard_that_fails_never_breaks_the_students_cell(capsys, monkeypatch):
    def broken(*args):
        raise AttributeError("'functools.partial' object has no attribute '__code__'")
    monkeypatch.setattr(check, "_uses", broken)
    assert verdict(capsys, check.check_add_noise, _own_add_noise)[0]


_PARTIAL = functools.partial(ddpm_step)
_BOUND = linear_schedule(150).q_sample   # a bound method of the library's schedule


@pytest.mark.parametrize("case", range(len(_dodges())))
def test_the_librarys_code_under_another_name_is_not_done_either(capsys, case):
    """Aliases, defaults, helpers, inherited or assigned methods, and the library's object itself:
    each matches the reference by construction, so each is refused, naming what it used."""
    fn, answer, said = _dodges()[case]
    ok, out = verdict(capsys, fn, *answer)
    assert not ok and said in out and "write the computation yourself" in out, out


@pytest.mark.parametrize("case", range(len(_shortcuts())))
def test_an_answer_that_calls_the_library_version_is_not_done(capsys, case):
    """The library's version is imported a few cells above each exercise: calling it matches the
    reference exactly, and teaches nothing. The checker names the call."""
    fn, answer, name = _shortcuts()[case]
    ok, out = verdict(capsys, fn, answer)
    assert not ok and name in out and "write the computation yourself" in out, out


@pytest.mark.parametrize("name", [n for n in dir(check) if n.startswith("check_")])
def test_every_checker_is_tested_here(name):
    """Named outside ``_shortcuts`` (which tests only the refusal of the library's own version)."""
    import inspect
    source = inspect.getsource(inspect.getmodule(test_every_checker_is_tested_here))
    source = source.replace(inspect.getsource(_shortcuts), "")
    assert f"check.{name}," in source, f"{name} has no right/wrong test in this file"
