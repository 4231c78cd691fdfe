"""course_lib/editing.py: image-to-image (SDEdit) and inpainting on top of the DDIM step."""
import pytest
import torch

from course_lib import ddpm, editing


def oracle(x0):
    """A denoiser that knows the clean images: eps = (x_t − √ᾱ_t·x_0)/√(1 − ᾱ_t), exactly."""
    schedule = ddpm.cosine_schedule(40)

    def model(x, t):
        ab = ddpm.extract(schedule.alpha_bars, t, x)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return model, schedule


def test_the_editors_noise_with_the_forward_process(monkeypatch):
    """img2img and paste_back noise the photo with Schedule.q_sample, the forward process."""
    s = ddpm.cosine_schedule(40)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g)
    # paste_back: the known pixels become q(x_17 | x_0) with the given noise, the others stay
    keep = (torch.rand(2, 1, 4, 4, generator=g) < 0.5).float().expand_as(x0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    out, known = editing.paste_back(x, x0, keep, 17, s, eps), s.q_sample(x0, 17, eps)
    assert torch.allclose(out[keep == 1], known[keep == 1]) and torch.equal(out[keep == 0], x[keep == 0])
    assert torch.equal(editing.paste_back(x, x0, keep, -1, s, eps)[keep == 1], x0[keep == 1])
    # img2img: the sampler starts from q(x_{t_0} | x_0), t_0 = 20 for strength 0.5 of T = 40
    seen = {}

    def sampler(model, x, schedule, **kwargs):
        seen.update(x=x, t_start=kwargs["t_start"])
        return x
    monkeypatch.setattr(editing, "sample_ddim", sampler)
    editing.img2img(lambda x, t: x, x0, s, 0.5, steps=40, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert seen["t_start"] == 20 and torch.allclose(seen["x"], s.q_sample(x0, 20, noise))
    with pytest.raises(ValueError, match="floats in \\[-1, 1\\]"):   # 0-255 pixels
        editing.img2img(lambda x, t: x, (x0 * 127.5 + 127.5).to(torch.uint8), s, 0.5, steps=40)


def test_img2img_with_a_perfect_denoiser_returns_the_image_and_strength_sets_the_start():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    model, s = oracle(x0)
    for strength in (0.2, 0.6, 1.0):
        out = editing.img2img(model, x0, s, strength, steps=10, eta=0.0, disable=True,
                              generator=torch.Generator().manual_seed(2))
        assert torch.allclose(out, x0, atol=1e-4)
    assert torch.equal(editing.img2img(model, x0, s, 0.0), x0)
    # one DDIM step starts at T-1: below strength 1 there is no step to go back through
    assert torch.equal(editing.img2img(model, x0, s, 0.5, steps=1, disable=True), x0)
    # a denoiser that predicts no noise keeps whatever x_{t_0} holds: the higher the strength,
    # the noisier the start, so the further the result from the photo
    lazy = lambda x, t: torch.zeros_like(x)
    far = [(editing.img2img(lazy, x0, s, k, steps=10, eta=0.0, disable=True,
                            generator=torch.Generator().manual_seed(2)) - x0).abs().mean()
           for k in (0.2, 0.6, 1.0)]
    assert far[0] < far[1] < far[2]
    with pytest.raises(ValueError, match="strength"):
        editing.img2img(model, x0, s, 1.5)


def test_sample_ddim_can_start_part_way():
    s = ddpm.cosine_schedule(40)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: 0.1 * x
    full = ddpm.sample_ddim(model, x, s, steps=10, eta=0.0, disable=True)
    assert torch.equal(full, ddpm.sample_ddim(model, x, s, steps=10, eta=0.0, disable=True, t_start=39))
    seen = []
    ddpm.sample_ddim(model, x, s, steps=10, eta=0.0, disable=True, t_start=20,
                     callback=lambda info: seen.append(info["t"]))
    assert seen[0] == 20 and all(t < 20 for t in seen[1:]) and seen[-1] == 0
    with pytest.raises(ValueError, match="t_start"):
        ddpm.sample_ddim(model, x, s, steps=10, t_start=40)


def test_inpaint_keeps_the_known_pixels_and_fills_the_rest_consistently():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    model, s = oracle(x0)
    keep = torch.zeros(2, 1, 8, 8)
    keep[..., :, :4] = 1                                      # the left half is known
    out = editing.inpaint(model, x0, keep, s, steps=10, eta=1.0, disable=True,
                          generator=torch.Generator().manual_seed(4))
    assert torch.equal(out[..., :4], x0[..., :4])             # put back exactly
    assert torch.allclose(out, x0, atol=1e-4)                 # the oracle fills in the truth
    # a denoiser that knows nothing still leaves the known half untouched and the rest changed
    other = editing.inpaint(lambda x, t: torch.zeros_like(x), x0, keep, s, steps=10, disable=True,
                            generator=torch.Generator().manual_seed(4))
    assert torch.equal(other[..., :4], x0[..., :4]) and not torch.allclose(other[..., 4:], x0[..., 4:])
    everything = editing.inpaint(model, x0, torch.ones(2, 1, 8, 8), s, steps=10, disable=True)
    assert torch.equal(everything, x0)
    with pytest.raises(ValueError, match="keep must be a mask"):
        editing.inpaint(model, x0, torch.ones(8, 8), s)
    with pytest.raises(ValueError, match="keep must be a mask"):   # 3 masks for 2 photos
        editing.inpaint(model, x0, torch.ones(3, 1, 8, 8), s)
    with pytest.raises(ValueError, match="known and 0 where"):     # a 0-255 mask
        editing.inpaint(model, x0, keep * 255, s)


def test_editing_passes_the_context_to_a_guided_denoiser():
    from course_lib.unets import OptimizedUNet
    torch.manual_seed(0)
    net = OptimizedUNet(3, 8, channels=(8, 8, 8), c_dim=3).eval()
    s = ddpm.cosine_schedule(40)
    photos = torch.rand(2, 3, 8, 8) * 2 - 1
    a, b = torch.eye(3)[[0, 0]], torch.eye(3)[[2, 2]]
    def run(fn, c, *args):
        return fn(ddpm.CFGDenoiser(net, 2.0), photos, *args, steps=5, extra_args={"c": c},
                  disable=True, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(run(editing.img2img, a, s, 0.6), run(editing.img2img, b, s, 0.6))
    keep = torch.zeros(2, 1, 8, 8)
    assert not torch.allclose(run(editing.inpaint, a, keep, s), run(editing.inpaint, b, keep, s))
