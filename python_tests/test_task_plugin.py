"""A task is a plug-in: a toy task (whole-image classification of the synthetic shapes) is
registered in a few dozen lines, then searched, trained, evaluated and exported through the
ordinary command lines, with nothing in the core knowing it."""

import json

import pytest
import torch
from torch import nn

from fna_ext import tasks
from fna_ext.arch import Arch
from fna_ext.cli import adapt as adapt_cli, count as count_cli, evaluate as evaluate_cli
from fna_ext.cli import search as search_cli, train as train_cli
from fna_ext.data.classification import EvalTransform, ImageFolderDataset, TrainTransform
from fna_ext.data.synthetic import generate_classification
from fna_ext.families.mbconv import mobilenet_v2
from fna_ext.nas.search_space import SearchSpace
from fna_ext.remap import save_weights

SIZE = 48
_TRAIN = {"epochs": 2, "batch_size": 8, "grad_clip": None, "eval_every": 0, "checkpoint_every": 0, "log_every": 1,
          "num_workers": 0, "seed": 0, "channels_last": False, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
          "schedule": {"name": "constant"}}
_SEARCH = {"init": "remap", "weight_sharing": "shared", "affine_bn": False, "fused": True, "strategy": "diff",
           "cost": "madds", "split_fraction": 0.5, "random_candidates": 2, "remap_width": "first",
           "remap_kernel": "center", "alpha_log_every": 1, "alpha_batch_size": None, "lambda": 0.1, "tau": 10.0,
           "alpha_start_epoch": 1, "weight_steps_per_alpha_step": 1,
           "alpha": {"optimizer": {"name": "adam", "lr": 3e-3}, "grad_clip": 5.0, "init_std": 1e-3}}


class ShapeClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(channels, num_classes)

    def forward(self, images):
        x = self.backbone(images)
        return self.fc(x.mean((2, 3)) if x.dim() == 4 else x)

    def loss(self, logits, labels):
        return {"cross_entropy": nn.functional.cross_entropy(logits, labels)}


class ShapesTask(tasks.Task):
    name, models, default_model = "toy_shapes", ("linear_probe",), "linear_probe"
    metric_names, primary_metric = ("top1",), "top1"

    def presets(self, model, synthetic):
        base = {"task": self.name, "model": {"name": model, "num_classes": None, "backbone_bn_eps": 1e-5},
                "data": {"root": None}, "train": dict(_TRAIN), "eval": {"batch_size": 16}}
        return {**base, "search": dict(_SEARCH)}, base

    def build_model(self, model, arch, num_classes, *, backbone=None, backbone_bn_eps=1e-5):
        from fna_ext.families.mbconv import Network
        backbone = backbone or Network(arch, num_classes=None, bn_eps=backbone_bn_eps)
        return ShapeClassifier(backbone, 1280, num_classes)

    def search_space(self, model):
        return SearchSpace("toy", (1, 2, 1, 2, 1, 1))

    def input_size(self, config):
        return (SIZE, SIZE)

    count_size = lambda self, model: (SIZE, SIZE)  # noqa: E731
    default_num_classes = lambda self, model: 5  # noqa: E731

    def data(self, config):
        root = config["data"]["root"]
        train, val = (ImageFolderDataset(root, "train", TrainTransform(SIZE)),
                      ImageFolderDataset(root, "val", EvalTransform(SIZE)))
        return tasks.TaskData(train, val, torch.utils.data.default_collate, len(train.classes), train.classes)

    def val_data(self, config, root=None):
        return ImageFolderDataset(root or config["data"]["root"], "val", EvalTransform(SIZE))

    def evaluate(self, model, dataset, *, batch_size, device="cpu"):
        model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        with torch.no_grad():
            right = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
        return {"top1": right / len(dataset)}

    def model_payload(self, model, config, data, **extra):
        return {"task": self.name, "arch": model.backbone.arch.to_json(), "config": config,
                "num_classes": data.num_classes, "state_dict": model.state_dict(), **extra}

    def model_from_payload(self, payload, source):
        model = self.build_model(None, Arch.parse(payload["arch"]), payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
        return model.eval()


@pytest.fixture
def toy(tmp_path):
    task = tasks.register(ShapesTask())
    try:
        data = generate_classification(tmp_path / "shapes", images=60, size=SIZE, seed=3)
        torch.manual_seed(0)
        seed = save_weights(tmp_path / "seed.pt", mobilenet_v2(num_classes=None, width_mult=0.5))
        yield task, data, seed
    finally:
        tasks.unregister(task.name)


def test_a_registered_task_runs_search_train_and_evaluate_through_the_commands(toy, tmp_path, capsys):
    task, data, seed = toy
    common = ["--task", task.name, "--data", str(data), "--seed-weights", str(seed)]
    assert search_cli.main([*common, "--out", str(tmp_path / "search")]) == 0
    found = Arch.load(tmp_path / "search" / "arch.json")
    assert found.meta["task"] == task.name and found.meta["model"] == "linear_probe"
    layers = found.meta["search"]["layers"]
    assert len(layers) == sum(task.search_space(None).max_depths)
    assert (tmp_path / "search" / "alphas.png").stat().st_size > 0

    assert train_cli.main([*common, "--arch", str(tmp_path / "search" / "arch.json"),
                           "--out", str(tmp_path / "train")]) == 0
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert set(metrics) == {"top1"} and 0 <= metrics["top1"] <= 1

    weights = tmp_path / "train" / "model_final.pt"
    assert evaluate_cli.main(["--checkpoint", str(weights), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["task"] == task.name and again["metrics"]["top1"] == pytest.approx(metrics["top1"])
    assert "top1" in capsys.readouterr().out


def test_a_registered_task_is_on_every_command_line(toy, capsys):
    task, _, _ = toy
    for parser_of in (search_cli, train_cli, adapt_cli):
        with pytest.raises(SystemExit):
            parser_of.main(["--help"])
        assert task.name in capsys.readouterr().out
    assert count_cli.main(["--task", task.name, "--arch", "mobilenet_v2", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert counted["input_size"] == [SIZE, SIZE] and counted["params"] > 0


def test_an_unknown_task_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown task 'segmentationz'; choose one of"):
        tasks.get_task("segmentationz")
    with pytest.raises(ValueError, match="has no model 'deeplab'"):
        tasks.get_task("coco").model_name("deeplab")


class MaskSegmenter(nn.Module):
    """Per-pixel logits from the backbone's stride-8 features, upsampled to the image."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone, self.classifier = backbone, nn.Conv2d(channels, num_classes, 1)

    def forward(self, images):
        features = self.backbone.head(self.backbone.forward_stages(images)[-1]) if hasattr(
            self.backbone, "forward_stages") else self.backbone(images)
        return nn.functional.interpolate(self.classifier(features), size=images.shape[-2:], mode="bilinear")

    def loss(self, logits, masks):
        return {"pixel_ce": nn.functional.cross_entropy(logits, masks)}


class MasksTask(ShapesTask):
    """Per-pixel outputs at output stride 8: the later stages dilate, in the super network's fused
    ops as in the derived network."""

    name, models, default_model = "toy_masks", ("dilated_fcn",), "dilated_fcn"
    metric_names, primary_metric = ("pixel_accuracy",), "pixel_accuracy"

    def output_stride(self, model):
        return 8

    def build_model(self, model, arch, num_classes, *, backbone=None, backbone_bn_eps=1e-5):
        from fna_ext.families.mbconv import Network
        backbone = backbone or Network(arch, num_classes=None, bn_eps=backbone_bn_eps, output_stride=8)
        return MaskSegmenter(backbone, 1280, num_classes)

    def data(self, config):
        images, masks = torch.load(config["data"]["root"], weights_only=True).values()
        train = torch.utils.data.TensorDataset(images[:40], masks[:40])
        val = torch.utils.data.TensorDataset(images[40:], masks[40:])
        return tasks.TaskData(train, val, torch.utils.data.default_collate, 2, ["background", "square"])

    def val_data(self, config, root=None):
        return self.data(config).val

    def evaluate(self, model, dataset, *, batch_size, device="cpu"):
        model.eval()
        with torch.no_grad():
            right = sum((model(x).argmax(1) == y).float().mean().item() * len(x)
                        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size))
        return {"pixel_accuracy": right / len(dataset)}


def _squares(path, count=56, size=SIZE):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, size, size, generator=generator) * 0.3
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[i, top:top + size // 3, left:left + size // 3] = 1
        images[i, :, masks[i].bool()] += 1.5
    torch.save({"images": images, "masks": masks}, path)
    return path


def test_a_per_pixel_task_at_output_stride_8_searches_and_trains(tmp_path):
    task = tasks.register(MasksTask())
    try:
        torch.manual_seed(0)
        seed = save_weights(tmp_path / "seed.pt", mobilenet_v2(num_classes=None, width_mult=0.5))
        common = ["--task", task.name, "--data", str(_squares(tmp_path / "squares.pt")), "--seed-weights", str(seed)]
        assert search_cli.main([*common, "--out", str(tmp_path / "search")]) == 0
        found = Arch.load(tmp_path / "search" / "arch.json")
        assert train_cli.main([*common, "--arch", str(tmp_path / "search" / "arch.json"),
                               "--out", str(tmp_path / "train")]) == 0
        metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
        assert 0 <= metrics["pixel_accuracy"] <= 1
        model = task.build_model(None, found, 2)
        assert model.backbone.forward_stages(torch.zeros(1, 3, SIZE, SIZE))[-1].shape[-1] == SIZE // 8
    finally:
        tasks.unregister(task.name)
