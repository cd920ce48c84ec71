"""Which term moves alpha? Per searched layer, the size of the task loss's gradient with respect
to alpha against the cost term's, on the embedded default or on a search's checkpoint.

Adam normalises each alpha's step, so what decides the derived op is the balance of the two
terms, not their scale. Where the task's gradient is orders of magnitude under the cost's, the
search takes the cheapest op in every layer whatever the task; where it is larger but points a
different way from batch to batch, only its mean counts.

    python benchmarks/alpha_gradients.py --seed-arch resnet18
    python benchmarks/alpha_gradients.py --seed-arch resnet18 --resume runs/adapt/search

Prints, per layer: the mean norm of the task gradient over ``--batches`` alpha batches, the norm
of its mean (what survives averaging), and the cost term's norm at the config's lambda.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fna_ext.cli.common import config_from_preset, seed_arch_of, task_and_model  # noqa: E402
from fna_ext.nas.search import ArchitectureSearch, cost_term  # noqa: E402
from fna_ext.pretrain import seed_weights_path  # noqa: E402
from fna_ext.remap import load_seed_network  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coco")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed-arch", default="mobilenet_v2")
    parser.add_argument("--seed-weights", default=None)
    parser.add_argument("--resume", default=None, help="a search's output folder: probe its checkpoint "
                                                       "(weights and alpha as the search left them) "
                                                       "under its own config.yaml")
    parser.add_argument("--batches", type=int, default=4, help="alpha batches to average over (default 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.data, args.epochs, args.config = None, None, None
    if args.resume:
        if not (Path(args.resume) / "checkpoint.pt").is_file() or not (Path(args.resume) / "config.yaml").is_file():
            parser.error(f"--resume {args.resume}: no checkpoint.pt and config.yaml there; give a search's --out folder")
    if args.batches < 1:
        parser.error(f"--batches must be at least 1, got {args.batches}")
    return args


def task_gradients(search: ArchitectureSearch, batches: int) -> list[list[torch.Tensor]]:
    """[batch][layer] task-loss gradients of alpha, as an alpha step computes them."""
    search.model.train()
    grads = []
    for index in range(batches):
        search.alphas.zero_grad(set_to_none=True)
        search.alpha_terms(search.arch_data.batch(index))[0].backward()
        grads.append([torch.zeros_like(a) if a.grad is None else a.grad.clone() for a in search.alphas.alphas])
    return grads


def cost_gradients(search: ArchitectureSearch) -> list[torch.Tensor]:
    s = search.config["search"]
    search.alphas.zero_grad(set_to_none=True)
    expected = search.cost_table.expected(search.alphas.probabilities())
    cost_term(expected, float(s["lambda"]), float(s["tau"])).backward()
    return [a.grad.clone() for a in search.alphas.alphas]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return probe(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def probe(args: argparse.Namespace) -> int:
    task, model = task_and_model(args)
    # a run's own config is the whole resolved config: it replaces the preset (an older run may
    # use another optimiser, whose keys the current preset would refuse)
    preset = (yaml.safe_load((Path(args.resume) / "config.yaml").read_text()) if args.resume
              # the embedded default as the commands adjust it to a NAS seed: the lambda a search runs with
              else task.search_preset(model, synthetic=True, seed_arch=seed_arch_of(args)))
    config = config_from_preset(task, preset, args)
    seed = load_seed_network(seed_weights_path(args.seed_weights, None, args.seed_arch), args.seed_arch)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "search"
        if args.resume:  # a copy: probing must not touch the user's run
            shutil.copytree(args.resume, out)
        search = ArchitectureSearch(config, seed, out, device="cpu")
        if args.resume:
            search.resume()
        per_batch = task_gradients(search, args.batches)
        cost = cost_gradients(search)
    rows = []
    for i, layer in enumerate(search.layers):
        stacked = torch.stack([g[i] for g in per_batch])
        rows.append({"layer": layer.spec.key, "task_norm": float(stacked.norm(dim=1).mean()),
                     "task_mean_norm": float(stacked.mean(0).norm()), "cost_norm": float(cost[i].norm())})
    if args.json:
        print(json.dumps({"step": search.step, "lambda": config["search"]["lambda"], "layers": rows}, indent=2))
        return 0
    print(f"alpha gradients at step {search.step} ({args.batches} batches, lambda {config['search']['lambda']})")
    print(f"{'layer':10}{'|task|':>12}{'|mean task|':>14}{'|cost|':>12}{'mean task / cost':>18}")
    for r in rows:
        ratio = r["task_mean_norm"] / r["cost_norm"] if r["cost_norm"] else float("inf")
        print(f"{r['layer']:10}{r['task_norm']:>12.2e}{r['task_mean_norm']:>14.2e}{r['cost_norm']:>12.2e}{ratio:>18.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
