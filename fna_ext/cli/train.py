"""``python -m fna_ext.train``: parameter adaptation. Trains a task's model (for COCO detection:
SSDLite or RetinaNet) on a fixed backbone architecture, remapping the seed into it, and evaluates
it with the task's metrics (pycocotools for detection). With no ``--data`` it trains on the
embedded default (synthetic shapes) with the embedded default's schedule; with ``--data`` it uses
the published settings, which ``--config`` and ``--set`` override."""

from __future__ import annotations

from pathlib import Path

from . import ArgumentParser, check_output_folder, removed_if_failed, run
from .common import add_common_arguments, check_device, config_from_preset, task_and_model
from ..arch import Arch
from ..engine.finetune import INITS, finetune


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.train", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--arch", default="mobilenet_v2",
                        help="backbone: a name, an arch file (JSON or net_config) or inline net_config")
    parser.add_argument("--out", default=None, help="output folder (default: runs/train_MODEL)")
    parser.add_argument("--seed-arch", help="the arch of --seed-weights, when the file does not embed one "
                                            "(a torchvision or timm file; default: mobilenet_v2)")
    parser.add_argument("--init", choices=INITS, default=None,
                        help="backbone initialisation: remap the seed into it (default when there is a "
                             "seed) or random")
    parser.add_argument("--bn-recalibrate", type=int, default=None, metavar="N",
                        help="re-estimate the BN statistics on N training batches before fine-tuning "
                             "(default: the config's adaptation.bn_recalibrate; 0: none)")
    args = parser.parse_args(argv)
    check_device(args.device)
    arch = Arch.from_arg(args.arch)
    task, model = task_and_model(args, arch)
    config = config_from_preset(task, task.finetune_preset(model, synthetic=args.data is None), args)
    out = Path(args.out or f"runs/train_{model}")
    if args.bn_recalibrate is not None and args.bn_recalibrate < 0:
        raise ValueError(f"--bn-recalibrate must be a number of batches >= 0, got {args.bn_recalibrate}")
    check_output_folder(out)
    init = args.init or ("remap" if args.seed_weights else "random")
    with removed_if_failed(out):
        result = finetune(task, config, arch, out, seed_weights=args.seed_weights, init=init,
                          bn_recalibrate=args.bn_recalibrate, resume=args.resume, device=args.device,
                          seed_arch=args.seed_arch)
    print(f"trained {model} ({init} init) on {arch} in {result.seconds / 60:.1f} min")
    print(task.format_metrics(result.metrics))
    print(f"weights: {result.weights}\nmetrics: {out / 'metrics.json'} (log: {out / 'metrics.jsonl'}, "
          f"plot: {out / 'training.png'})")
    return 0


if __name__ == "__main__":
    run(main)
