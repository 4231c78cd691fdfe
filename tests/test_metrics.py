"""Quality measures of generated batches: Fréchet distance maths, classifier judgments, records."""
import math

import pytest
import torch

from course_lib import metrics
from course_lib.metrics import (Key, Quality, as_classifier_input, frechet_distance, record_quality,
                                recorded_quality, sample_quality)


def _gaussian(n, mean, cov, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    return torch.as_tensor(mean, dtype=torch.float64) + z @ torch.linalg.cholesky(cov).T


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = _gaussian(400, [0.0] * 5, torch.eye(5, dtype=torch.float64), seed=0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    """N(0, I) vs N(m, 4I) in D dims: d² = |m|² + D(1 + 4 - 2·2) = |m|² + D."""
    d, m = 4, torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    a = _gaussian(200_000, [0.0] * d, torch.eye(d, dtype=torch.float64), seed=1)
    b = _gaussian(200_000, m.tolist(), 4 * torch.eye(d, dtype=torch.float64), seed=2)
    assert frechet_distance(a, b) == pytest.approx(m.square().sum().item() + d, rel=0.02)


def test_frechet_distance_is_symmetric_for_non_commuting_covariances():
    """Tr((Σ_a Σ_b)^½) must not depend on the order, even when Σ_a Σ_b is not symmetric."""
    cov_a = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    cov_b = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    a, b = _gaussian(50_000, [0, 0], cov_a, 3), _gaussian(50_000, [1, 0], cov_b, 4)
    forward, backward = frechet_distance(a, b), frechet_distance(b, a)
    assert forward == pytest.approx(backward, rel=1e-9)
    # 2×2 closed form: Tr(√M) = √(tr M + 2√det M) for M = Σ_a Σ_b
    mat = cov_a @ cov_b
    expected = 1 + cov_a.trace() + cov_b.trace() - 2 * math.sqrt(mat.trace() + 2 * mat.det().sqrt())
    assert forward == pytest.approx(expected.item(), rel=0.03)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_classifier_input_is_upsampled_and_clamped():
    x = torch.full((3, 1, 16, 16), 2.0)
    out = as_classifier_input(x)
    assert out.shape == (3, 1, 28, 28) and out.max() == 1.0


@pytest.mark.parametrize("bad,match", [(torch.zeros(4, 3, 16, 16), "grey images"),
                                       ((torch.zeros(4, 3, 64, 64), "flowers"), r"\(B, 3, 32, 32\)"),
                                       (torch.zeros(0, 1, 28, 28), "empty batch"),
                                       (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
                                       (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "uint8")])
def test_classifier_input_rejects_bad_batches(bad, match):
    images, dataset = bad if isinstance(bad, tuple) else (bad, "fashion_mnist")
    with pytest.raises(ValueError, match=match):
        as_classifier_input(images, dataset)


@pytest.mark.usefixtures("data_available")
def test_real_images_score_far_better_than_noise():
    from course_lib.data import load_fashion_mnist

    real = load_fashion_mnist(size=16, train=True, flip=False, limit=300)
    good = sample_quality(real.images, "fashion_mnist", labels=real.labels)
    torch.manual_seed(0)
    noise = sample_quality(torch.randn(300, 1, 16, 16), "fashion_mnist",
                           labels=real.labels)
    assert good.accuracy > 0.7 and noise.accuracy < 0.3
    assert good.recognisable > 0.5 > noise.recognisable
    assert noise.frechet > 10 * good.frechet
    # asking for the wrong classes is caught by the accuracy, not by the other two measures
    wrong = sample_quality(real.images, "fashion_mnist", labels=(real.labels + 1) % 10)
    assert wrong.accuracy < 0.1
    assert wrong.frechet == pytest.approx(good.frechet)


@pytest.mark.usefixtures("data_available")
def test_within_class_spread_is_zero_for_copies_and_larger_for_varied_images():
    from course_lib.data import load_fashion_mnist

    real = load_fashion_mnist(size=16, train=True, flip=False, limit=400)
    labels = real.labels[:200]
    varied = metrics.within_class_spread(real.images[:200], labels)
    # every image of a label replaced by the first image of that label: no variety left
    first = {int(c): real.images[:200][labels == c][0] for c in labels.unique()}
    copies = torch.stack([first[int(c)] for c in labels])
    assert metrics.within_class_spread(copies, labels) == pytest.approx(0, abs=1e-6)
    assert varied > 0
    # the same images with every label merged into one: pairs across classes are further apart
    assert metrics.within_class_spread(real.images[:200], torch.zeros_like(labels)) > varied
    with pytest.raises(ValueError, match="two images with the same label"):
        metrics.within_class_spread(real.images[:3], torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        metrics.within_class_spread(real.images[:3], torch.tensor([0, 1]))


def test_sample_quality_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        sample_quality(torch.zeros(1, 1, 28, 28), "mnist")


def test_sample_quality_checks_labels():
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        sample_quality(torch.zeros(4, 1, 28, 28), "mnist", labels=torch.zeros(3, dtype=torch.long))
    one_hot = torch.eye(10)[:4]       # the samplers' context, passed as labels by mistake
    with pytest.raises(ValueError, match=r"labels.argmax\(1\)"):
        sample_quality(torch.zeros(4, 1, 28, 28), "mnist", labels=one_hot)
    with pytest.raises(ValueError, match="unknown dataset"):
        sample_quality(torch.zeros(4, 1, 28, 28), "cifar")


def test_records_round_trip_and_bad_files_are_reported(tmp_path, monkeypatch):
    path = tmp_path / "quality.json"
    monkeypatch.setattr(metrics, "_quality_file", lambda: path)
    assert recorded_quality() == {}
    record_quality(Key.NB01_BLOTS, Quality(n=10, recognisable=0.1, frechet=300.0))
    record_quality(Key.NB02_DDPM, Quality(n=10, recognisable=0.5, frechet=40.0, accuracy=0.6))
    assert recorded_quality() == {Key.NB01_BLOTS: Quality(10, 0.1, 300.0),
                                  Key.NB02_DDPM: Quality(10, 0.5, 40.0, 0.6)}
    with pytest.raises(ValueError, match="not a valid Key"):   # a misspelt name is refused
        record_quality("02 DDPM 150 steps", Quality(n=10, recognisable=0.5, frechet=40.0))
    assert len(recorded_quality()) == 2
    path.write_text("not json")
    with pytest.raises(ValueError, match="delete it"):
        recorded_quality()


def test_quality_reads_as_a_sentence():
    text = str(Quality(n=64, recognisable=0.5, frechet=12.34, accuracy=0.75))
    assert text == "64 samples: 50% recognisable, 75% as the requested class; Fréchet distance 12.3"


@pytest.mark.usefixtures("data_available")
def test_confusion_shares_has_one_row_of_class_shares_per_label():
    from course_lib.data import load_fashion_mnist
    from course_lib.metrics import class_shares, confusion_shares

    real = load_fashion_mnist(size=16, train=False, flip=False, limit=300)
    keep = real.labels < 3                                  # three of the ten labels asked for
    images, labels = real.images[keep], real.labels[keep]
    rows = confusion_shares(images, labels)
    assert rows.shape == (3, 10)
    assert torch.allclose(rows.sum(1), torch.ones(3))
    assert torch.equal(rows[1], class_shares(images[labels == 1]))
    assert rows.diagonal().min() > 0.5                      # real images: mostly read as themselves
    with pytest.raises(ValueError, match="2 labels for"):
        confusion_shares(images, labels[:2])
    # a label asked for once has a row too (one image's class is well defined)
    once = torch.cat((labels[labels != 2], labels[labels == 2][:1]))
    rows = confusion_shares(torch.cat((images[labels != 2], images[labels == 2][:1])), once)
    assert rows.shape == (3, 10) and rows[2].sum() == 1 and rows[2].max() == 1


@pytest.mark.usefixtures("data_available")
def test_class_shares_and_real_images_in_a_chosen_mix():
    from course_lib.data import load_fashion_mnist
    from course_lib.metrics import class_shares, real_quality

    real = load_fashion_mnist(size=28, train=False, flip=False, limit=400)
    shares = class_shares(real.images)
    assert shares.sum().item() == pytest.approx(1.0)
    true = torch.bincount(real.labels, minlength=10).float() / 400
    assert (shares - true).abs().max() < 0.08            # the classifier is 90% right
    balanced = real_quality("fashion_mnist", 16, n=300)
    skewed = real_quality("fashion_mnist", 16, n=300, mix=torch.tensor([0.0, 0, 0.5, 0, 0, 0, 0, 0,
                                                                         0.5, 0]))
    assert skewed.n == 300
    assert skewed.frechet > 5 * balanced.frechet           # a wrong mix alone costs distance
    with pytest.raises(ValueError, match="non-negative"):
        real_quality("fashion_mnist", 16, mix=torch.tensor([-1.0, 2.0]))


def test_figures_are_named_and_kept(tmp_path, monkeypatch):
    from course_lib import metrics
    path = tmp_path / "figures.json"
    monkeypatch.setattr(metrics, "_figures_file", lambda: path)
    metrics.record_figure("nb03_frechet", 42.5)
    metrics.record_figure("nb03_recognised", 0.5)
    assert metrics.recorded_figures() == {"nb03_frechet": 42.5, "nb03_recognised": 0.5}
    with pytest.raises(ValueError, match="headline figures"):
        metrics.record_figure("nb03_frechett", 1.0)
    for broken in ("{cut", "[1, 2]"):   # a truncated or foreign file: one clear error
        path.write_text(broken)
        with pytest.raises(ValueError, match="delete it and re-run"):
            metrics.record_figure("nb03_frechet", 1.0)
        assert path.read_text() == broken   # nothing written over it


def test_real_images_default_to_their_judges_size(monkeypatch):
    from course_lib import metrics
    asked = []

    def split(dataset, size):
        asked.append((dataset, size))
        raise RuntimeError("no data needed")
    monkeypatch.setattr(metrics, "real_split", split)
    for dataset, size in (("flowers", None), ("fashion_mnist", None), ("flowers", 64)):
        with pytest.raises(RuntimeError):
            metrics.real_quality(dataset, size)
    assert asked == [("flowers", 32), ("fashion_mnist", 16), ("flowers", 64)]


def test_colourfulness_is_zero_for_grey_and_grows_with_vivid_hues():
    """metrics.colourfulness (Hasler & Süsstrunk 2003): 0 for grey images, the mean term alone for
    a flat colour, larger for a vivid image than for the same image with its colour washed out."""
    grey = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8) * 2 - 1
    assert metrics.colourfulness(grey) == pytest.approx(0, abs=1e-6)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert metrics.colourfulness(red) == pytest.approx(0.3 * (1 + 0.25) ** 0.5, rel=1e-5)
    vivid = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    washed = 0.5 * vivid + 0.5 * vivid.mean(dim=1, keepdim=True)
    assert metrics.colourfulness(washed) == pytest.approx(0.5 * metrics.colourfulness(vivid), rel=1e-5)
    with pytest.raises(ValueError, match="RGB images"):
        metrics.colourfulness(grey[:, :1])
