import pytest
import torch

from course_lib.conditioning import keep_mask, mix_contexts, one_hot
from course_lib.ddpm import CFGDenoiser, linear_schedule, sample_ddim, sample_ddpm
from course_lib.unets import OptimizedUNet


def test_keep_mask_drops_the_expected_fraction():
    g = torch.Generator().manual_seed(0)
    mask = keep_mask(100_000, 0.9, generator=g)
    assert mask.shape == (100_000, 1)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.mean().item() - 0.9) < 0.005
    assert keep_mask(10, 0.0).sum() == 0 and keep_mask(10, 1.0).sum() == 10
    with pytest.raises(ValueError, match="keep_prob"):
        keep_mask(4, 1.2)


def test_mix_contexts_takes_text_rows_at_the_asked_rate():
    image_c, text_c = torch.zeros(20_000, 4), torch.ones(20_000, 4)
    mixed = mix_contexts(image_c, text_c, 0.3, generator=torch.Generator().manual_seed(0))
    rows = mixed.mean(1)
    assert set(rows.unique().tolist()) == {0.0, 1.0}          # whole rows, never a blend
    assert abs(rows.mean().item() - 0.3) < 0.015
    assert torch.equal(mix_contexts(image_c, text_c, 0.0), image_c)
    assert torch.equal(mix_contexts(image_c, text_c, 1.0), text_c)
    with pytest.raises(ValueError, match="same shape"):
        mix_contexts(image_c, text_c[:, :3], 0.5)
    with pytest.raises(ValueError, match="p_text"):
        mix_contexts(image_c, text_c, 1.5)


def test_one_hot():
    assert one_hot(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        one_hot(torch.tensor([3]), 3)
    assert one_hot(torch.tensor([2.0, 0.0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert one_hot(torch.tensor([], dtype=torch.long), 3).shape == (0, 3)
    with pytest.raises(ValueError, match="one-hot rows already"):   # would give (2, 3, 3)
        one_hot(torch.eye(3)[[2, 0]].long(), 3)
    with pytest.raises(ValueError, match="whole class indices"):    # 1.7 would become class 1
        one_hot(torch.tensor([1.7]), 3)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return OptimizedUNet(1, 8, channels=(8, 8, 16), T=20, c_dim=4).eval()


def test_masked_context_is_exactly_unconditional(model):
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 19])
    c = one_hot(torch.tensor([0, 1, 3]), 4)
    with torch.no_grad():
        masked = model(x, t, c, torch.zeros(3, 1))
        unconditional = model(x, t, None)
        other_c = model(x, t, one_hot(torch.tensor([2, 2, 2]), 4), torch.zeros(3, 1))
        kept = model(x, t, c, torch.ones(3, 1))
    assert torch.equal(masked, unconditional) and torch.equal(masked, other_c)
    assert not torch.allclose(kept, unconditional)


def test_vector_context_works_like_a_clip_embedding():
    net = OptimizedUNet(3, 8, channels=(8, 8, 16), T=20, c_dim=16).eval()
    emb = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    x, t, keep, drop = torch.randn(2, 3, 8, 8), torch.tensor([0, 19]), torch.ones(2, 1), torch.zeros(2, 1)
    assert net(x, t, emb, keep).shape == (2, 3, 8, 8)
    other = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    with torch.no_grad():   # the embedding steers the output, and a dropped one does not
        assert not torch.allclose(net(x, t, emb, keep), net(x, t, other, keep), atol=1e-4)
        assert torch.allclose(net(x, t, emb, drop), net(x, t, other, drop))
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([0, 19]), torch.zeros(2, 10))


def test_w0_guidance_equals_conditional_sampling(model):
    s = linear_schedule(20)
    c = one_hot(torch.tensor([1, 2]), 4)
    noise = torch.randn(2, 1, 8, 8)
    conditional = lambda x, t: model(x, t, c=c, c_mask=torch.ones(2, 1))  # noqa: E731
    a = sample_ddim(CFGDenoiser(model, 0.0), noise, s, steps=10, eta=0.0, extra_args={"c": c},
                  disable=True)
    b = sample_ddim(conditional, noise, s, steps=10, eta=0.0, disable=True)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("w", [-2.0, -0.5, 0.0, 1.0, 3.0])
def test_guided_sampling_is_finite_with_both_samplers(model, w):
    s = linear_schedule(20)
    c = one_hot(torch.tensor([0, 3]), 4)
    denoiser = CFGDenoiser(model, w)
    for out in (sample_ddpm(denoiser, torch.randn(2, 1, 8, 8), s, extra_args={"c": c}, disable=True),
                sample_ddim(denoiser, torch.randn(2, 1, 8, 8), s, steps=5, eta=0.5,
                            extra_args={"c": c}, disable=True)):
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_cfg_rejects_mismatched_context(model):
    with pytest.raises(ValueError, match="context has 1 rows"):
        CFGDenoiser(model, 1.0)(torch.randn(2, 1, 8, 8), torch.tensor([1, 1]),
                                c=one_hot(torch.tensor([0]), 4))
