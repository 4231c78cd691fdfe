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


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"),
                                                 (False, False, "cpu")])
def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch, capsys, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert config.get_device(verbose=True).type == expected
    assert f"device: {expected}" in capsys.readouterr().out


def test_course_device_chooses_and_refuses_what_is_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("COURSE_DEVICE", " CPU ")     # a Mac's MPS passed over for the CPU
    assert config.get_device().type == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(ValueError, match="COURSE_DEVICE=cuda but this machine's PyTorch has no cuda"):
        config.get_device()
    monkeypatch.setenv("COURSE_DEVICE", "gpu")
    with pytest.raises(ValueError, match="not one of cpu, cuda, mps"):
        config.get_device()


@pytest.mark.parametrize("value, allowed", [(None, True), ("1", False), ("true", False),
                                            ("YES", False), ("0", True), ("", True)])
def test_downloads_allowed(monkeypatch, value, allowed):
    if value is None:
        monkeypatch.delenv("COURSE_NO_DOWNLOAD", raising=False)
    else:
        monkeypatch.setenv("COURSE_NO_DOWNLOAD", value)
    assert config.downloads_allowed() is allowed


def test_checkpoint_path_is_per_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "test")
    path = config.checkpoint_path("02_time_unet")
    assert path == config.REPO_ROOT / "checkpoints" / "test" / "02_time_unet.pt"


@pytest.mark.parametrize("device,amx,avx512_bf16,native,fast", [
    ("cpu", False, False, False, False),   # bfloat16 emulated: float32, 30 flower epochs
    ("cpu", False, True, True, False),     # AVX512-BF16 (AMD Zen 4): bfloat16, still 30 epochs
    ("cpu", True, False, True, True),      # AMX: bfloat16, 60 epochs
    ("cpu", True, True, True, True),
    ("cuda", False, False, False, True), ("mps", True, True, False, True)])
def test_bf16_on_amx_or_avx512_bf16_and_fast_training_on_a_gpu_or_amx_only(
        monkeypatch, device, amx, avx512_bf16, native, fast):
    """The CPU trains in bfloat16 where it multiplies bfloat16 in hardware (AMX or AVX512-BF16),
    never on a GPU; 04 doubles its flower UNet's epochs only where a step is fast enough for 60
    (a GPU or AMX), and a plain CPU keeps the epochs it was measured at, in about the same minutes."""
    monkeypatch.setattr(config.torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(config.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    assert config.native_bf16(device) is native
    assert config.trains_fast(device) is fast
    kind = "fast" if fast else "bf16" if native else "float32"
    assert config.speed(device) == kind
    assert config.by_speed(device, fast=60, bf16=30, float32=20) == {"fast": 60, "bf16": 30,
                                                                     "float32": 20}[kind]


def test_cpu_probes_missing_from_torch_read_as_absent(monkeypatch):
    """An older PyTorch without a probe: no bfloat16, no doubled epochs, no AttributeError."""
    monkeypatch.delattr(config.torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(config.torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert config.native_bf16("cpu") is False
    assert config.trains_fast("cpu") is False


@pytest.mark.parametrize("value,native", [("0", False), ("no", False), ("1", True), ("TRUE", True)])
def test_course_bf16_overrides_the_cpu_flags(monkeypatch, value, native):
    """COURSE_BF16 decides over the CPU's flags in either direction, on a CPU only."""
    monkeypatch.setattr(config.torch.cpu, "_is_amx_tile_supported", lambda: not native, raising=False)
    monkeypatch.setattr(config.torch.cpu, "_is_avx512_bf16_supported", lambda: not native,
                        raising=False)
    monkeypatch.setenv("COURSE_BF16", value)
    assert config.native_bf16("cpu") is native
    assert config.native_bf16("cuda") is False


def test_an_amx_cpu_kept_in_float32_is_not_fast(monkeypatch):
    """04's 60 flower epochs were measured in bfloat16 on AMX; in float32 that CPU keeps 30."""
    monkeypatch.setattr(config.torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert config.trains_fast("cpu") is True
    monkeypatch.setenv("COURSE_BF16", "0")
    assert config.trains_fast("cpu") is False and config.speed("cpu") == "float32"
    assert config.trains_fast("cuda") is True


def test_course_bf16_that_is_not_a_yes_or_no_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_BF16", "maybe")
    with pytest.raises(ValueError, match=r"COURSE_BF16='maybe'.*use 0 \(float32\)"):
        config.native_bf16("cpu")


def test_evaluating_restores_each_submodules_own_mode():
    """A helper that reads a model mid-training must not leave it in eval mode, nor wake a
    locked submodule (kept in eval) into training mode."""
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()                                  # a locked tower inside a training model
    with config.evaluating(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert model.training and model[1].training and not model[0].training
    with pytest.raises(RuntimeError):
        with config.evaluating(model):
            raise RuntimeError("a failing read")
    assert model.training and not model[0].training   # restored on the way out of an error too
