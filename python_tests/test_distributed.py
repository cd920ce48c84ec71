"""Two processes on the CPU (gloo) give the one-process gradients for the same global batch:
global batch statistics, globally normalised losses and summed gradients. In float64, so that
what is compared is the arithmetic, not float32 rounding."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fna_ext.engine import distributed
from fna_ext.arch import mobilenet_v2_arch
from fna_ext.families.mbconv import build_network
from fna_ext.nas.search_space import SearchSpace
from fna_ext.nas.supernet import SuperNetwork
from fna_ext.tasks.detection import SSDLiteConfig, ssdlite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    targets = [{"boxes": torch.tensor([[2.0, 3, 20, 25]], dtype=torch.float64) + 2 * i,
                "labels": torch.tensor([i % 3]), "iscrowd": torch.tensor([False])} for i in range(4)]
    return images, targets


# one searched layer per stage keeps float64 convolutions affordable
ONE_LAYER_SPACE = SearchSpace("one-layer", (1, 1, 1, 1, 1, 1), keep_width_first_layers=(4,))


def _gradients(rank: int, world: int, mode: str) -> dict:
    torch.manual_seed(0)
    # narrow head conv and extra layers too: float64 convolutions are slow on the CPU
    seed = build_network(mobilenet_v2_arch(0.35), None, head_channels=64)
    supernet = SuperNetwork(seed.arch, ONE_LAYER_SPACE, seed=seed, head_channels=64)
    config = SSDLiteConfig(head_channels=64, extra_channels=(32, 32, 16, 16))
    model = ssdlite(supernet.arch, 3, config, backbone=supernet).double()
    # built under torchrun, every BN is global from the start: nothing is patched afterwards
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(isinstance(m, distributed.GlobalBatchNorm2d) == (world > 1) for m in bns)
    if mode == "path":
        supernet.set_path([spec.candidates[-1 if i % 2 else 0] for i, spec in enumerate(supernet.specs)])
    else:
        supernet.set_mixture([torch.softmax(torch.arange(len(s.candidates), dtype=torch.float64), 0)
                              for s in supernet.specs])
    images, targets = _batch()
    losses = model.loss(model(images[rank::world]), targets[rank::world])
    sum(losses.values()).backward()
    distributed.sum_gradients(model.parameters())
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    distributed.init_from_env("cpu")
    try:
        grads = _gradients(rank, world, mode)
        if rank == 0:
            torch.save(grads, out)
    finally:
        distributed.shutdown()


@pytest.mark.parametrize("mode", ["path", "mixture"])
def test_two_processes_give_the_one_process_gradients(tmp_path, mode):
    single = _gradients(0, 1, mode)
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, _free_port(), mode, out), nprocs=2)
    double = torch.load(out, weights_only=True)
    assert set(single) == set(double)
    scale = max(g.abs().max().item() for g in single.values())
    worst = max((single[k] - double[k]).abs().max().item() for k in single)
    assert worst < 1e-7 * scale  # a logic error shows at 1e-2 and above


def test_search_runs_under_torchrun_with_two_processes(tmp_path):
    from fna_ext.data.synthetic import generate_detection
    from fna_ext.remap import save_weights

    data = generate_detection(tmp_path / "coco", images=16, size=64, seed=2)
    torch.manual_seed(0)
    save_weights(tmp_path / "seed.pt", build_network(mobilenet_v2_arch(0.35), None))
    sets = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=1",
            "search.alpha_start_epoch=0", "model.backbone_bn_eps=0.001"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(_free_port()), "-m", "fna_ext.search", "--data", str(data), "--seed-weights",
         str(tmp_path / "seed.pt"), "--out", str(tmp_path / "out"), *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("derived architecture") == 1  # printed by rank 0 only
    record = json.loads((tmp_path / "out" / "arch.json").read_text())["search"]
    assert record["steps"] == 1
