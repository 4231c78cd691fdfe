"""The shipped classifiers that judge generated images (grading 06; quality metrics)."""
import pytest
import torch

from course_lib.classifier import (JUDGED_SIZE, DigitClassifier, accuracy, build_classifier,
                                   flower_split, load_classifier, to_judge_input,
                                   train_classifier, vary_intensity, weights_path)


def test_classifier_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        DigitClassifier()(torch.zeros(2, 1, 16, 16))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_classifier("cifar")


@pytest.mark.usefixtures("data_available")
@pytest.mark.parametrize("dataset,target", [("mnist", 0.99), ("fashion_mnist", 0.88),
                                            ("flowers", 0.72)])
def test_shipped_weights_reach_their_held_out_accuracy(dataset, target):
    """Each judge, on images it never trained on, at the size the notebooks make them."""
    from course_lib.metrics import real_split
    assert weights_path(dataset).is_file(), f"retrain: python -m course_lib.classifier {dataset}"
    images, labels, reference = real_split(dataset, JUDGED_SIZE[dataset])
    if dataset != "flowers":          # the pool and the Fréchet reference: the whole test set
        from course_lib.data import LOADERS
        test = LOADERS[dataset](size=JUDGED_SIZE[dataset], train=False, flip=False)
        images, labels = test.images, test.labels
    judge = load_classifier(dataset)
    assert accuracy(judge, to_judge_input(images, dataset), labels) >= target


def test_flower_split_is_fixed_and_disjoint():
    held, train = flower_split(1000)
    assert len(held) == 100 and len(train) == 900
    assert not set(held.tolist()) & set(train.tolist())
    assert torch.equal(flower_split(1000)[0], held)


def test_judges_reject_the_wrong_kind_of_image():
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        build_classifier("flowers")(torch.zeros(2, 1, 28, 28))
    assert to_judge_input(torch.zeros(2, 1, 16, 16), "fashion_mnist").shape == (2, 1, 28, 28)
    assert to_judge_input(torch.zeros(2, 3, 32, 32), "flowers").shape == (2, 3, 32, 32)


@pytest.mark.usefixtures("data_available")
def test_training_recipe_learns(tmp_path):
    """The retraining command's recipe, on 6,000 images for two epochs: well above chance."""
    model, acc = train_classifier("mnist", epochs=2, limit=6000, out=tmp_path / "c.pt",
                                  progress=False)
    assert acc > 0.9
    assert (tmp_path / "c.pt").is_file()


def test_vary_intensity_keeps_range_and_changes_about_half():
    torch.manual_seed(0)
    x = torch.rand(1000, 1, 28, 28) * 2 - 1
    y = vary_intensity(x)
    assert y.min() >= -1 and y.max() <= 1
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.4 < changed < 0.6


@pytest.mark.usefixtures("data_available")
def test_mnist_judge_reads_digits_on_a_grey_background():
    """Generated digits often sit on dark grey; the judge must still read them."""
    from course_lib.data import load_mnist
    test = load_mnist(size=28, train=False, limit=2000)
    grey = -1 + (test.images + 1) * 0.7 + 0.4        # background -0.6, strokes 0.8
    assert accuracy(load_classifier("mnist"), grey, test.labels) >= 0.97
