import pytest
import torch

from course_lib.blocks import (DownBlock, EmbedBlock, GELUConvBlock, RearrangePoolBlock,
                               ResidualConvBlock, SelfAttentionBlock, SinusoidalPositionEmbedBlock,
                               UpBlock)
from course_lib.unets import OptimizedUNet, TimeUNet, UNet, count_parameters, layer_shapes


def test_down_block_halves_size():
    assert DownBlock(1, 16)(torch.randn(2, 1, 16, 16)).shape == (2, 16, 8, 8)


def test_up_block_doubles_size_and_checks_skip():
    up = UpBlock(32, 16)
    assert up(torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4)).shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="cannot be concatenated"):
        up(torch.randn(2, 32, 4, 4), torch.randn(2, 32, 5, 5))


def test_rearrange_pool_is_a_lossless_reshape():
    block = RearrangePoolBlock(3, 8, groups=4)
    rearrange = block[0]
    x = torch.randn(2, 3, 8, 8)
    y = rearrange(x)
    assert y.shape == (2, 12, 4, 4)
    assert torch.equal(torch.sort(y.flatten())[0], torch.sort(x.flatten())[0])
    # every value is kept, and the inverse arrangement gives x back exactly
    from einops import rearrange as inverse
    assert torch.equal(inverse(y, "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2), x)
    # channel 0 of the output is the top-left pixel of each 2x2 patch
    assert torch.equal(y[:, 0], x[:, 0, ::2, ::2])
    assert block(x).shape == (2, 8, 4, 4)


def test_gelu_conv_block_checks_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        GELUConvBlock(3, 10, groups=4)


def test_residual_block_sums_its_two_convs():
    block = ResidualConvBlock(1, 8, groups=4)
    x = torch.randn(2, 1, 8, 8)
    x1 = block.conv1(x)
    assert torch.allclose(block(x), x1 + block.conv2(x1))


def test_sinusoidal_embedding_distinct_and_smooth():
    emb = SinusoidalPositionEmbedBlock(32)(torch.arange(150))
    assert emb.shape == (150, 32)
    dist = torch.cdist(emb, emb)
    off_diagonal = dist + torch.eye(150) * 1e9
    assert off_diagonal.min() > 1e-3                      # every t has its own vector
    assert dist[10, 11] < dist[10, 60] and dist[10, 11] < dist[10, 140]  # neighbours are closer
    assert torch.allclose(emb.norm(dim=1), torch.full((150,), 4.0))  # sqrt(16 sin²+cos²)


def test_embed_block_broadcast_shape():
    assert EmbedBlock(1, 16)(torch.rand(5, 1)).shape == (5, 16, 1, 1)


@pytest.mark.parametrize("size,ch", [(16, 1), (28, 1), (32, 3)])
def test_every_unet_keeps_the_image_shape(size, ch):
    x = torch.randn(2, ch, size, size)
    t = torch.tensor([0, 149])
    assert UNet(ch, size)(x).shape == x.shape
    assert TimeUNet(ch, size)(x, t).shape == x.shape
    assert OptimizedUNet(ch, size, channels=(16, 32, 64))(x, t).shape == x.shape
    cond = OptimizedUNet(ch, size, channels=(16, 32, 64), c_dim=10)
    assert cond(x, t, torch.eye(10)[:2], torch.ones(2, 1)).shape == x.shape


def test_unets_reject_bad_shapes_and_times():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, 18)
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        UNet()(torch.randn(2, 1, 28, 28))
    model = TimeUNet(T=150)
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\[0, 149\]"):
        model(x, torch.tensor([0, 150]))
    with pytest.raises(ValueError, match="integer"):
        model(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"torch.full\(\(2,\), t\)"):
        model(x, 10)                       # a plain int, not a tensor of steps
    with pytest.raises(ValueError, match="without a context"):
        OptimizedUNet()(x, torch.tensor([1, 2]), c=torch.zeros(2, 10))


def test_time_input_changes_the_output():
    torch.manual_seed(0)
    for model in (TimeUNet(), OptimizedUNet(channels=(16, 32, 64))):
        model.eval()
        x = torch.randn(2, 1, 16, 16)
        assert not torch.allclose(model(x, torch.tensor([0, 0])), model(x, torch.tensor([100, 100])))


def test_dense_bottleneck_width_is_a_choice():
    default = OptimizedUNet(channels=(16, 32, 64))
    wide = OptimizedUNet(channels=(16, 32, 64), bottleneck=128)
    hidden = [m.out_features for m in wide.bottleneck if isinstance(m, torch.nn.Linear)]
    assert hidden == [128, 128, 64 * 4 * 4]
    assert [m.out_features for m in default.bottleneck if isinstance(m, torch.nn.Linear)][0] == 32
    x = torch.randn(2, 1, 16, 16)
    assert wide(x, torch.tensor([3, 4])).shape == x.shape


def test_patch_2_runs_the_unet_at_half_size_and_keeps_the_image_shape():
    """patch=2 moves 2×2 pixel patches into channels before down0 (losslessly) and back after
    out: the image keeps its shape, every level runs at half the size, and patch=1 is the
    network as it was (the same weight names, so stored weights still load)."""
    torch.manual_seed(0)
    model = OptimizedUNet(3, 32, channels=(16, 32, 64), c_dim=3, patch=2).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 149])
    assert model(x, t, torch.eye(3)[:2]).shape == x.shape
    shapes = {name: shape for name, shape, _ in layer_shapes(model, x, t)}
    assert shapes["down0"] == (2, 16, 16, 16) and shapes["down2"] == (2, 64, 4, 4)
    patches = model.down0[0](x)
    assert patches.shape == (2, 12, 16, 16)
    assert torch.equal(model.out[-1](patches), x)          # out's last step undoes the first
    assert torch.equal(patches[:, :4, 0, 0].flatten(), x[:, 0, :2, :2].flatten())
    plain = OptimizedUNet(3, 32, channels=(16, 32, 64), c_dim=3)
    assert "down0.conv1.0.weight" in plain.state_dict()
    assert "down0.1.conv1.0.weight" in model.state_dict()
    for bad, match in ((3, "whole divisor"), (0, "whole divisor")):
        with pytest.raises(ValueError, match=match):
            OptimizedUNet(3, 32, patch=bad)
    with pytest.raises(ValueError, match="divisible by 8"):
        OptimizedUNet(3, 36, patch=2)
    with pytest.raises(ValueError, match="divisible by 4"):
        OptimizedUNet(3, 18)


def test_self_attention_block_mixes_every_position():
    """A change at one pixel of the 4×4 map reaches every other pixel through the attention, and
    the block keeps the shape (a residual around attention over the 16 positions)."""
    torch.manual_seed(0)
    block = SelfAttentionBlock(16, heads=4).eval()
    x = torch.randn(2, 16, 4, 4)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    moved = (block(x2) - y).abs().sum(dim=1)       # (2, 4, 4): how much each position changed
    assert (moved > 1e-4).all()
    unet = OptimizedUNet(channels=(16, 32, 64), attention=True)
    assert isinstance(unet.bottleneck[0], SelfAttentionBlock)
    assert unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).shape == (2, 1, 16, 16)


def test_parameter_counts_and_layer_table():
    assert 200_000 < count_parameters(UNet()) < 260_000   # the reference course's ~235k scale
    rows = layer_shapes(UNet(), torch.randn(1, 1, 16, 16))
    shapes = dict((name, shape) for name, shape, _ in rows)
    assert shapes["down0"] == (1, 16, 16, 16)
    assert shapes["down2"] == (1, 64, 4, 4)
    assert shapes["out"] == (1, 1, 16, 16)
    assert sum(p for *_, p in rows) == count_parameters(UNet())


def test_layer_shapes_leaves_batchnorm_statistics_and_mode_alone():
    """01's probe runs a fresh BatchNorm UNet: in train mode it would fold a batch of zeros
    into the running statistics."""
    from course_lib.unets import UNet, layer_shapes
    model = UNet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = layer_shapes(model, torch.zeros(2, 1, 16, 16))
    assert rows and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_upblock_names_what_differs_between_input_and_skip():
    """01's Exercise 2 and 06's UNet: a skip from the wrong level is the usual cause."""
    from course_lib.blocks import UpBlock
    up = UpBlock(8, 4)
    with pytest.raises(ValueError, match="differ in channels.*up1 with down2"):
        up(torch.zeros(1, 8, 4, 4), torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match="differ in height and width"):
        up(torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="differ in batch size: both must be computed from the same"):
        up(torch.zeros(1, 8, 4, 4), torch.zeros(2, 8, 4, 4))
    assert up(torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4)).shape == (1, 4, 8, 8)
