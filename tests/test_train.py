import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from course_lib.train import (CheckpointError, NonFiniteLossError, adam, ema_warmup_avg_fn,
                              load_checkpoint, save_checkpoint, train, train_or_load, warmup_cosine)


def _regression_problem(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return list(zip(x.split(32), y.split(32)))


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    history = train(model, _regression_problem(), _mse, epochs=20, lr=0.05, progress=False)
    assert len(history.losses) == 20 * 8
    assert history.final_loss < 0.01 * history.losses[0]
    assert len(history.epoch_seconds) == 20


def test_one_progress_bar_for_the_whole_run(capsys):
    """A 60-epoch run shows one bar, not 60: its total is every step of the run (or max_steps),
    and its postfix names the epoch and that epoch's mean loss."""
    import re
    model = nn.Linear(4, 1)
    train(model, _regression_problem(), _mse, epochs=3, lr=0.05, desc="toy", bf16=False)
    err = capsys.readouterr().err
    final = [part for part in re.split(r"[\r\n]", err) if part.strip()][-1]
    assert final.startswith("toy: 100%") and "24/24" in final, final
    assert "epoch=3/3" in final and "mean loss=" in final, final
    assert "epoch 1/3" not in err and err.count("toy:") >= 1
    train(model, _regression_problem(), _mse, epochs=3, lr=0.05, desc="short", bf16=False,
          max_steps=5)
    final = [part for part in re.split(r"[\r\n]", capsys.readouterr().err) if part.strip()][-1]
    assert "5/5" in final and "epoch=1/3" in final, final
    train(model, iter(_regression_problem()), _mse, epochs=1, desc="no length", bf16=False)
    assert "no length: 8step [" in capsys.readouterr().err   # a loader without len: a counter


def test_ema_tracks_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    initial = model.weight.detach().clone()
    history = train(model, _regression_problem(), _mse, epochs=5, lr=0.05, ema_decay=0.9,
                    progress=False)
    ema = history.ema.module
    assert not torch.equal(ema.weight, model.weight)
    # the average lags a little behind the weights it follows (decay 0.9: ~10 steps)
    assert (ema.weight - model.weight).norm() < 0.1 * (initial - model.weight).norm()


def test_ema_warmup_follows_early_weights():
    """With warm-up, an EMA of decay 0.999 after 40 steps is close to the trained weights, not
    to the initial ones (a plain 0.999 EMA would still be ~96% initial weights)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    initial = model.weight.detach().clone()
    history = train(model, _regression_problem(), _mse, epochs=5, lr=0.05, ema_decay=0.999,
                    progress=False)
    ema = history.ema.module.weight
    assert (ema - model.weight).norm() < 0.5 * (initial - model.weight).norm()


def test_snapshots_keep_frozen_copies_of_the_ema_at_the_asked_epochs():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    history = train(model, _regression_problem(), _mse, epochs=4, lr=0.05, ema_decay=0.9,
                    progress=False, snapshot_epochs=(3, 1))
    assert sorted(history.snapshots) == [1, 3]
    first, third = history.snapshots[1], history.snapshots[3]
    assert first is not history.ema.module and not first.training
    assert not any(p.requires_grad for p in first.parameters())
    ema = history.ema.module.weight
    # each copy stopped where the EMA was then: the later one is nearer the final EMA
    assert not torch.equal(first.weight, third.weight)
    assert (third.weight - ema).norm() < (first.weight - ema).norm()
    # without an EMA the copies are of the trained weights
    trained = nn.Linear(4, 1)
    start = trained.weight.detach().clone()
    plain = train(trained, _regression_problem(), _mse, epochs=2, lr=0.05,
                  progress=False, snapshot_epochs=(2,))
    assert plain.snapshots[2] is not trained and not torch.equal(start, trained.weight)
    assert torch.equal(plain.snapshots[2].weight, trained.weight)    # the last epoch's weights
    with pytest.raises(ValueError, match="snapshot_epochs must lie in 1..2"):
        train(nn.Linear(4, 1), _regression_problem(), _mse, epochs=2, snapshot_epochs=(3,),
              progress=False)
    with pytest.warns(UserWarning, match=r"before the snapshots of epoch\(s\) \[3\]"):
        early = train(nn.Linear(4, 1), _regression_problem(), _mse, epochs=3, max_steps=8,
                      snapshot_epochs=(1, 3), progress=False)     # stops as epoch 1 ends
    assert sorted(early.snapshots) == [1]
    with pytest.warns(UserWarning, match=r"before the snapshots of epoch\(s\) \[1, 3\]"):
        cut = train(nn.Linear(4, 1), _regression_problem(), _mse, epochs=3, max_steps=5,
                    snapshot_epochs=(1, 3), progress=False)       # epoch 1 cut short: no snapshot
    assert cut.snapshots == {}


def test_ema_update_is_the_warmup_equation_on_all_tensors_at_once(monkeypatch):
    """avg ← avg + (1 - d_n)(w - avg), d_n = min(decay, (1 + n)/(10 + n)), applied by one foreach call."""
    calls = []
    lerp = torch._foreach_lerp_

    def counting_lerp(averaged, current, weight):
        calls.append(len(averaged))
        return lerp(averaged, current, weight)
    monkeypatch.setattr(torch, "_foreach_lerp_", counting_lerp)
    model = nn.Linear(3, 2)
    ema = AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(0.2))
    ema.update_parameters(model)                                  # n = 0: a copy
    expected = [p.detach().clone() for p in model.parameters()]
    for n in (1, 2, 3):                       # d_n = 2/11 (warming up), then the decay 0.2 itself
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.2, (1 + n) / (10 + n))
        expected = [a + (1 - d) * (w.detach() - a) for a, w in zip(expected, model.parameters())]
        ema.update_parameters(model)
        for got, want in zip(ema.module.parameters(), expected):
            torch.testing.assert_close(got, want)
    assert calls == [2, 2, 2]          # one call per update, on the weight and the bias together
    with pytest.raises(ValueError, match="ema_decay must be in"):
        ema_warmup_avg_fn(1.0)


def test_adam_is_fused_and_follows_the_default_loop():
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    loop_model, start = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    fused, loop = adam(fused_model.parameters(), lr=0.01), torch.optim.Adam(loop_model.parameters(), lr=0.01)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for x, y in _regression_problem():
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            _mse(model, (x, y)).backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, s) for a, s in zip(fused_model.parameters(), start.parameters()))


def test_warmup_cosine_schedule_shape():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, final_factor=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.01 and lrs[10] == pytest.approx(1.0, rel=1e-3)
    assert all(a >= b - 1e-9 for a, b in zip(lrs[10:], lrs[11:]))      # decays monotonically
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="total_steps >= 2"):   # torch would divide by zero later
        warmup_cosine(opt, total_steps=1)


def test_train_or_load_trains_once_then_loads(tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    first = train_or_load(path, nn.Linear(4, 1), _regression_problem(), _mse, epochs=2, lr=0.05,
                          ema_decay=0.9, progress=False)
    model = nn.Linear(4, 1)
    again = train_or_load(path, model, _regression_problem(), _mse, epochs=2, progress=False)
    assert again.losses == first.losses and again.final_loss == first.final_loss
    assert torch.equal(again.ema.module.weight, first.ema.module.weight)
    assert "loaded Linear" in capsys.readouterr().out
    trained = path.read_bytes()
    bad = train_or_load(path, nn.Linear(3, 1), [(torch.randn(8, 3), torch.randn(8, 1))], _mse,
                        progress=False)                       # does not fit: retrained
    out = capsys.readouterr().out
    assert len(bad.losses) == 1 and "does not fit" in out
    kept = list(tmp_path.glob("m.unfit-*.pt"))   # not overwritten: a student's changed model
    assert len(kept) == 1 and kept[0].read_bytes() == trained and f"kept as {kept[0]}" in out


def test_grad_clip_limits_the_step():
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    batch = [(torch.full((1, 4), 1000.0), torch.zeros(1, 1) + 1e6)]
    train(model, batch, _mse, epochs=1, lr=1.0, grad_clip=1.0, progress=False,
          optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    assert model.weight.norm().item() == pytest.approx(1.0, rel=1e-4)


def test_nan_loss_stops_with_a_hint_before_updating():
    model = nn.Linear(4, 1)
    before = model.weight.clone()
    batches = [(torch.full((2, 4), float("nan")), torch.zeros(2, 1))]
    with pytest.raises(NonFiniteLossError, match="smaller learning rate.*grad_clip"):
        train(model, batches, _mse, progress=False)
    assert torch.equal(model.weight, before)


def test_a_nan_that_reached_batchnorm_asks_for_a_fresh_model():
    """The forward pass that gave a NaN loss has already put it into BatchNorm's running
    statistics: the error says so, and training that model again is refused with the way out,
    rather than training well on batch statistics and sampling NaN in eval mode."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    batches = [(torch.full((2, 4), float("inf")), torch.zeros(2, 1))]
    with pytest.raises(NonFiniteLossError, match=r"NaN or inf in 1\.running_mean, 1\.running_var "
                                                  r"\(.*BatchNorm.*re-run the cell that builds"):
        train(model, batches, _mse, progress=False)
    assert not model.training   # left ready to sample, as after a training that ends well
    with pytest.raises(ValueError, match=r"already holds NaN or infinite values \(1\.running_mean"):
        train(model, _regression_problem(), _mse, progress=False)
    masked = nn.Linear(4, 1)   # a buffer's -inf on purpose (an attention mask) is no damage
    masked.register_buffer("attn_mask", torch.full((2, 2), float("-inf")).triu(1))
    assert len(train(masked, _regression_problem(), _mse, progress=False).losses) == 8


def test_a_training_stopped_by_an_error_closes_its_bar(monkeypatch):
    """Ctrl-C or an error in the loss: the bar ends (not left frozen under the traceback)."""
    import course_lib.train as course_train

    bars = []

    class Bar(course_train.tqdm):
        def close(self):
            bars.append(self.n)
            super().close()
    monkeypatch.setattr(course_train, "tqdm", Bar)

    def interrupted(model, batch):
        if bars == [] and model.weight.grad is not None:
            raise KeyboardInterrupt
        return _mse(model, batch)
    with pytest.raises(KeyboardInterrupt) as stopped:   # its traceback holds train's frame
        train(nn.Linear(4, 1), _regression_problem(), interrupted)
    assert bars == [1]   # closed by train (not by its end: `stopped` holds its frame), after
    assert stopped.type is KeyboardInterrupt   # the one step it took


def test_a_budget_stop_reads_as_done_in_jupyterlab_too(monkeypatch):
    """max_seconds stops the run (here after its first step of 24): the notebook widget's bar is
    full and green (its length is the steps taken, not the run's), not a partly filled bar."""
    import course_lib.train as course_train
    from tqdm.notebook import tqdm as notebook_tqdm

    bars = []

    class Bar(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)
    monkeypatch.setattr(course_train, "tqdm", Bar)
    history = train(nn.Linear(4, 1), _regression_problem(), _mse, epochs=3, max_seconds=0)
    widget = bars[0].container.children[1]
    assert len(history.losses) == bars[0].n == bars[0].total == 1
    assert (widget.max, widget.value) == (1, 1), (widget.max, widget.value)
    assert widget.bar_style == "success"


def test_max_steps_stops_early():
    history = train(nn.Linear(4, 1), _regression_problem(), _mse, epochs=3, max_steps=5,
                    progress=False)
    assert len(history.losses) == 5


def test_checkpoint_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    path = save_checkpoint(tmp_path / "m.pt", model, epochs=3)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    payload = load_checkpoint(path, other)
    assert payload["epochs"] == 3
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", nn.Linear(4, 1))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated.*delete it and train again"):
        load_checkpoint(path, nn.Linear(4, 1))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", nn.Linear(4, 1))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, nn.Linear(5, 1))
    with pytest.raises(CheckpointError, match="holds a Linear"):
        load_checkpoint(path, nn.Sequential(nn.Linear(4, 1)))


def test_a_checkpoint_that_does_not_fit_leaves_the_model_as_it_was(tmp_path):
    """torch's load_state_dict copies every tensor that fits before it raises: the model must not
    be left half old checkpoint, half fresh weights, for the retraining that follows."""
    class Net(nn.Sequential):
        pass
    path = save_checkpoint(tmp_path / "m.pt", Net(nn.Linear(4, 8), nn.Linear(8, 1)))
    model = Net(nn.Linear(4, 8), nn.Linear(8, 2))          # the first layer fits, the last not
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_or_load_warns_that_a_loaded_model_has_no_snapshots(tmp_path):
    path = tmp_path / "m.pt"
    train_or_load(path, nn.Linear(4, 1), _regression_problem(), _mse, epochs=2, progress=False,
                  snapshot_epochs=(1,))
    with pytest.warns(UserWarning, match="no epoch snapshots"):
        loaded = train_or_load(path, nn.Linear(4, 1), _regression_problem(), _mse, epochs=2,
                               progress=False, snapshot_epochs=(1,), device="cpu")
    assert loaded.snapshots == {} and len(loaded.losses) == 16


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt", nn.Linear(4, 1))


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", nn.Linear(4, 1), tag="old")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, nn.Linear(4, 1), tag="new")
    monkeypatch.undo()
    assert load_checkpoint(path, nn.Linear(4, 1))["tag"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_train_uses_the_models_preferred_memory_format_on_a_cpu():
    """01-02's BatchNorm UNets train in channels_last on a CPU (measured faster); 03's do not."""
    from course_lib.train import pick_memory_format
    from course_lib.unets import OptimizedUNet, TimeUNet, UNet

    assert pick_memory_format(UNet(), "cpu") == torch.channels_last
    assert pick_memory_format(TimeUNet(), "cpu") == torch.channels_last
    assert pick_memory_format(OptimizedUNet(), "cpu") == torch.contiguous_format
    assert pick_memory_format(UNet(), "cuda") == torch.contiguous_format
    seen = []

    def loss_fn(model, batch):
        seen.append(batch[0].is_contiguous(memory_format=torch.channels_last))
        return (model(batch[0]) - batch[0]).square().mean()

    model = UNet(3, 16, (8, 16, 32))        # 3 channels: with 1, both layouts coincide
    train(model, [(torch.randn(4, 3, 16, 16), torch.zeros(4))] * 2, loss_fn, progress=False)
    assert seen == [True, True]
    assert model.down0[0].weight.is_contiguous(memory_format=torch.channels_last)
    train(model, [(torch.randn(4, 3, 16, 16), torch.zeros(4))], loss_fn, progress=False,
          memory_format=torch.contiguous_format)
    assert seen[-1] is False


def test_on_epoch_end_sees_each_epoch_in_eval_mode():
    seen = []
    model = nn.Sequential(nn.Linear(4, 1), nn.Dropout(0.5))
    train(model, _regression_problem(), _mse, epochs=3, lr=0.01, progress=False,
          on_epoch_end=lambda epoch, m: seen.append((epoch, m.training, torch.is_grad_enabled())))
    assert seen == [(0, False, False), (1, False, False), (2, False, False)]


def test_bf16_is_the_default_for_convolutions_on_a_native_bf16_cpu(monkeypatch):
    """train() autocasts conv models where the CPU multiplies bfloat16; small MLPs stay float32."""
    import course_lib.train as train_module
    from course_lib.unets import UNet

    seen = []

    def loss_fn(model, batch):
        out = model(batch[0])
        seen.append(out.dtype)
        return (out.float() - batch[0]).square().mean()

    conv_batches = [(torch.randn(4, 1, 16, 16), torch.zeros(4))]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    for native in (True, False):
        monkeypatch.setattr(train_module, "native_bf16", lambda device, native=native: native)
        assert train_module.bf16_pays(UNet(1, 16, (8, 16, 32)), "cpu") is native
        assert train_module.bf16_pays(mlp, "cpu") is False
        seen.clear()
        history = train(UNet(1, 16, (8, 16, 32)), conv_batches, loss_fn, progress=False)
        assert history.bf16 is native and seen == [torch.bfloat16 if native else torch.float32]
        seen.clear()
        history = train(mlp, [(torch.randn(4, 4), None)], loss_fn, progress=False)
        assert history.bf16 is False and seen == [torch.float32]
    seen.clear()
    model = UNet(1, 16, (8, 16, 32))
    history = train(model, conv_batches, loss_fn, progress=False, bf16=True, ema_decay=0.9)
    assert history.bf16 and seen == [torch.bfloat16]          # asked for: honoured anywhere
    weights = [*model.parameters(), *history.ema.parameters()]
    assert all(p.dtype == torch.float32 for p in weights)       # weights and EMA stay float32


def test_a_loader_with_no_batch_is_a_clear_error_not_an_untrained_model():
    """make_loader drops the last short batch when it shuffles: 20 images in batches of 64 give none."""
    from course_lib.data import make_loader
    from course_lib.train import History
    data = torch.utils.data.TensorDataset(torch.randn(20, 4), torch.randn(20, 1))
    loader = make_loader(data, 64)
    assert len(loader) == 0
    with pytest.raises(ValueError, match="smaller batch_size"):
        train(nn.Linear(4, 1), loader, _mse, epochs=2, progress=False)
    once = iter(_regression_problem())                # used up after the first epoch
    with pytest.raises(ValueError, match="no batch in epoch 2: an iterator without a length"):
        train(nn.Linear(4, 1), once, _mse, epochs=2, progress=False)
    with pytest.raises(ValueError, match="no loss was recorded"):
        History().final_loss
    assert History(losses=[4.0, 2.0]).final_loss == 2.0
