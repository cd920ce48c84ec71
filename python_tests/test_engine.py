"""The training engine: schedules by hand, config merging, and exact resume."""

import json

import pytest
import torch
from torch import nn

from fna_ext.config import merge, parse_assignment, resolve
from fna_ext.engine.checkpoint import changed_settings, load_checkpoint
from fna_ext.engine.trainer import Trainer, epoch_order, lr_factor


def test_step_schedule_with_linear_warmup_by_hand():
    config = {"name": "step", "milestones": [2, 3], "gamma": 0.1, "warmup_iters": 10, "warmup_ratio": 0.0}
    assert lr_factor(0, config, 10, 40) == 0.0
    assert lr_factor(5, config, 10, 40) == pytest.approx(0.5)
    assert lr_factor(10, config, 10, 40) == 1.0
    assert lr_factor(20, config, 10, 40) == pytest.approx(0.1)
    assert lr_factor(35, config, 10, 40) == pytest.approx(0.01)


def test_cosine_and_poly_schedules_by_hand():
    cosine = {"name": "cosine", "min_lr_ratio": 0.1}
    assert lr_factor(0, cosine, 10, 100) == 1.0
    assert lr_factor(50, cosine, 10, 100) == pytest.approx(0.55)
    assert lr_factor(100, cosine, 10, 100) == pytest.approx(0.1)
    assert lr_factor(50, {"name": "poly", "power": 0.9}, 10, 100) == pytest.approx(0.5 ** 0.9)
    with pytest.raises(ValueError, match="schedule.name"):
        lr_factor(0, {"name": "exp"}, 10, 100)


def test_config_overrides_and_unknown_keys(tmp_path):
    preset = {"train": {"epochs": 1, "optimizer": {"lr": 0.1, "name": "sgd"}}}
    assert parse_assignment("train.optimizer.lr=0.5") == {"train": {"optimizer": {"lr": 0.5}}}
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    config = resolve(preset, path, ["train.optimizer.name=adam"])
    assert config == {"train": {"epochs": 3, "optimizer": {"lr": 0.1, "name": "adam"}}}
    assert preset["train"]["epochs"] == 1  # the preset is not modified
    with pytest.raises(ValueError, match="train.optimizer.momentun"):
        merge(preset, {"train": {"optimizer": {"momentun": 0.9}}})
    with pytest.raises(ValueError, match="key=value"):
        parse_assignment("train.epochs")
    path.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve(preset, path)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert epoch_order(10, 3, 1) == epoch_order(10, 3, 1)
    assert epoch_order(10, 3, 1) != epoch_order(10, 3, 2)
    assert sorted(epoch_order(10, 3, 1)) == list(range(10))


class _Noisy(torch.utils.data.Dataset):
    """Samples that draw from torch's RNG, like random augmentation."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.full((4,), float(i)) + torch.randn(4), torch.tensor([i % 3])


def _loss(model, batch):
    x, y = batch
    return {"loss": nn.functional.cross_entropy(nn.functional.dropout(model(x), 0.2), y.flatten())}


def _trainer(out, epochs=3, lr=0.1, device="cpu"):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    config = {"epochs": epochs, "batch_size": 4, "seed": 1, "log_every": 1, "checkpoint_every": 4,
              "grad_clip": 1.0, "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
              "schedule": {"name": "step", "milestones": [2], "warmup_iters": 3, "warmup_ratio": 0.1}}
    return Trainer(model, _loss, _Noisy(), None, config, out, device=device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resume_from_mid_epoch_matches_an_uninterrupted_run(tmp_path, device):
    """On CUDA too: the optimizer's resumed momentum lands on the GPU, and dropout's CUDA RNG
    continues where it was."""
    straight = _trainer(tmp_path / "a", device=device)
    straight.fit()
    interrupted = _trainer(tmp_path / "b", device=device)
    interrupted.fit(stop_at=10)  # killed part-way through epoch 2 (6 iterations per epoch)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["components"]["progress"]["iteration"] == 8  # every 4 iterations
    resumed = _trainer(tmp_path / "b", device=device)
    assert resumed.resume()
    assert resumed.iteration == 8
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 18
    # the resumed log holds each iteration once: the records after the checkpoint were cut
    resumed_log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in resumed_log] == list(range(1, 19))
    assert [r["loss"] for r in resumed_log] == losses


def test_resume_refuses_other_settings_but_allows_a_longer_run(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    longer = _trainer(tmp_path, epochs=3)
    assert longer.resume() and longer.iteration == 6  # more epochs: the same run, continued
    other = _trainer(tmp_path, epochs=3, lr=0.2)
    with pytest.raises(ValueError, match=r"train.optimizer.lr: 0.1 -> 0.2.*only the epochs"):
        other.resume()


def test_changed_settings_names_each_difference_and_reads_train_only_checkpoints():
    run = {"train": {"epochs": 2, "seed": 1, "optimizer": {"betas": (0.9, 0.99)}}, "search": {"lambda": 1.5}}
    assert changed_settings(run, {**run, "train": {**run["train"], "epochs": 9,
                                                   "optimizer": {"betas": [0.9, 0.99]}}}) == []
    assert changed_settings(run, {**run, "search": {"lambda": 0.5, "tau": 10}}) == [
        "search.lambda: 1.5 -> 0.5", "search.tau: unset -> 10"]
    assert changed_settings(run, {"train": run["train"]}) == ["search.lambda: 1.5 -> unset"]
    # a setting added later counts as the default that kept the behaviour the run had
    assert changed_settings(run, {**run, "search": {"lambda": 1.5, "weight_paths": "alpha"}}) == []
    assert changed_settings(run, {**run, "search": {"lambda": 1.5, "weight_paths": "uniform"}}) == [
        "search.weight_paths: 'alpha' -> 'uniform'"]
    # evaluation settings do not change what is trained
    assert changed_settings({**run, "eval": {"flip": False}}, {**run, "eval": {"flip": True}}) == []
    # a checkpoint written before the whole run's settings were kept holds the train section alone
    assert changed_settings(run["train"], {"train": {**run["train"], "seed": 2}}) == ["train.seed: 1 -> 2"]


def test_a_new_run_removes_what_a_killed_checkpoint_write_left(tmp_path):
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.pt.abc123.tmp"
    unrelated.write_bytes(b"not ours")
    _trainer(tmp_path)
    assert not stale.exists() and unrelated.exists()


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.loss_fn = lambda model, batch: {"loss": model(batch[0]).sum() * float("nan")}
    with pytest.raises(FloatingPointError, match="lower optimizer.lr.*no checkpoint was written yet"):
        trainer.fit()


def test_a_loss_that_fails_later_names_the_checkpoint_to_resume_from(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    calls = [0]

    def exploding(model, batch):
        calls[0] += 1
        scale = 10.0 ** (2 * calls[0]) if calls[0] > 5 else 1.0  # grows a hundredfold a step, then overflows
        return {"loss": _loss(model, batch)["loss"] * (float("inf") if calls[0] > 9 else scale)}
    trainer.loss_fn = exploding
    with pytest.raises(FloatingPointError, match=r"last good checkpoint, .*checkpoint.pt \(iteration 8\), is kept"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: the loss grew")]
    assert len(warnings) == 1  # once, not per step


def test_checkpoint_that_is_not_ours_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an fna_ext checkpoint"):
        load_checkpoint(path)


class _NiceOfTheWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, item):
        import os
        return torch.tensor(os.nice(0))  # os.nice(0) reads this process's niceness


def test_loader_workers_run_in_the_background():
    """Workers yield the cores to the step's threads (nice 19); the main process keeps its priority."""
    import os
    from fna_ext.engine.trainer import ResumableSampler, resumable_loader
    loader = resumable_loader(ResumableSampler(4, shuffle=False), 2, _NiceOfTheWorker(), torch.stack, 1,
                              torch.device("cpu"))
    niceness = torch.cat(list(loader))
    assert niceness.tolist() == [19] * 4  # raising one's niceness is always allowed
    assert os.nice(0) < 19
    assert not loader.pin_memory
