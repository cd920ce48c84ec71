"""The segmentation task end to end on a tiny generated Cityscapes-layout set: the registry, a
search, parameter adaptation with evaluation, and the model file read back."""

import json

import pytest
import torch

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.config import resolve
from fna_ext.data.synthetic import generate_segmentation
from fna_ext.engine.finetune import finetune
from fna_ext.families.mbconv import build_network
from fna_ext.nas.search import search
from fna_ext.remap import save_weights
from fna_ext.tasks import get_task, load_model_file, resolve as resolve_model

TINY = ["data.crop_size=[64, 64]", "data.eval_crop=[64, 64]", "train.batch_size=4", "train.num_workers=0",
        "train.epochs=2", "train.schedule.warmup_iters=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    data = generate_segmentation(root / "city", images=30, size=64, seed=7)
    torch.manual_seed(0)
    seed = build_network(mobilenet_v2_arch(0.35), None)
    save_weights(root / "seed.pt", seed)
    return data, seed, root / "seed.pt"


def test_the_registry_knows_the_task_by_its_names():
    task = get_task("cityscapes")
    assert task is get_task("segmentation") and task.default_model == "deeplabv3"
    assert resolve_model("deeplabv3plus") == (task, "deeplabv3plus")
    search_preset, finetune_preset = task.presets("deeplabv3", synthetic=False)
    assert search_preset["search"]["lambda"] == 9e-3 and search_preset["search"]["tau"] == 45.0  # A.1
    assert search_preset["train"]["epochs"] == 80 and search_preset["search"]["alpha_start_epoch"] == 30
    assert search_preset["search"]["split_fraction"] == 0.2
    assert finetune_preset["data"]["crop_size"] == [769, 769] and finetune_preset["train"]["schedule"]["name"] == "poly"
    assert task.search_space("deeplabv3").max_depths == (4, 4, 6, 6, 4, 1)


def test_search_then_adapt_then_read_the_model_back(tiny, tmp_path):
    data, seed, seed_path = tiny
    task = get_task("segmentation")
    config = resolve(task.search_preset("deeplabv3", synthetic=True), None,
                     [f"data.root={data}", *TINY, "search.alpha_start_epoch=1"])
    result = search(config, seed, tmp_path / "search")
    record = json.loads((tmp_path / "search" / "arch.json").read_text())["search"]
    assert len(record["layers"]) == 4 + 4 + 6 + 6 + 4 + 1
    assert (tmp_path / "search" / "alphas.png").read_bytes()[:4] == b"\x89PNG"

    config = resolve(task.finetune_preset("deeplabv3", synthetic=True), None, [f"data.root={data}", *TINY])
    trained = finetune(task, config, result.arch, tmp_path / "train", seed_weights=seed_path)
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1 and "IoU/road" in metrics
    assert trained.metrics["mIoU"] == metrics["mIoU"] and trained.weights == tmp_path / "train" / "model_final.pt"

    loaded_task, model, payload = load_model_file(tmp_path / "train" / "model_final.pt")
    assert loaded_task is task and Arch.parse(payload["arch"]) == result.arch
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(images).shape == (1, 19, 64, 64)
