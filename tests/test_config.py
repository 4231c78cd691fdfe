import pytest
import torch

from course_lib import config


def test_profile_defaults_to_full(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert config.profile() == "full"
    assert config.pick(full=3, test=1) == 3


def test_test_profile_is_picked(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", " Test ")
    assert config.profile() == "test"
    assert config.pick(full=3, test=1) == 1


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="COURSE_PROFILE='fast'.*full"):
        config.profile()


def test_seed_everything_reproduces_draws():
    g1 = config.seed_everything(7)
    a = torch.randn(5), torch.randn(3, generator=g1)
    g2 = config.seed_everything(7)
    b = torch.randn(5), torch.randn(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_is_cpu_without_accelerator(capsys):
    device = config.get_device(verbose=True)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected
    assert f"device: {expected}" in capsys.readouterr().out


def test_checkpoint_path_is_per_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "test")
    path = config.checkpoint_path("02_time_unet")
    assert path == config.REPO_ROOT / "checkpoints" / "test" / "02_time_unet.pt"
