"""``python -m fna_ext.remap``: remaps a seed network's weights into another architecture (FNA's
parameter remapping) and writes them, with the arch embedded."""

from __future__ import annotations

from . import ArgumentParser, check_output_file, run
from ..arch import Arch
from ..families import get_family
from ..remap import GROUP_MODES, KERNEL_MODES, WIDTH_MODES, RemapPlan, load_seed_network, plan_network, save_weights


def format_layers(plan: RemapPlan) -> str:
    rows = [("target", "from seed", "change")] + [(r.target, r.source, r.change) for r in plan.layers]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.remap", description=(
        "Remap a seed network's weights into another architecture (FNA's parameter remapping) "
        "and write them, with the arch embedded. The classifier is not remapped: dense tasks "
        "replace it."))
    parser.add_argument("--seed", required=True, help="seed weights: torchvision, timm, FNA or fna_ext file")
    parser.add_argument("--seed-arch", default=None,
                        help="the seed's arch (default: the one embedded in --seed, else mobilenet_v2)")
    parser.add_argument("--arch", required=True, help="target arch: a name, a file, or net_config text")
    parser.add_argument("--out", required=True, help="output weights file (.pth)")
    parser.add_argument("--width", default="first", choices=WIDTH_MODES)
    parser.add_argument("--kernel", default="center", choices=KERNEL_MODES)
    parser.add_argument("--groups", default="diagonal", choices=GROUP_MODES,
                        help="how grouped and dense convs take each other's weights (ResNet ops with _g)")
    parser.add_argument("--allow-activation-change", action="store_true",
                        help="remap into layers whose activation or SE gate differs from the seed layer's "
                             "(refused by default: the weights were trained for the seed's)")
    args = parser.parse_args(argv)
    check_output_file(args.out)
    seed = load_seed_network(args.seed, args.seed_arch)
    seed_arch = seed.arch
    target_arch = Arch.from_arg(args.arch)
    target = get_family(target_arch.family).build_network(target_arch, num_classes=None)
    plan = plan_network(seed, target, args.width, args.kernel, args.groups,
                        allow_activation_change=args.allow_activation_change)
    plan.apply(seed, target)
    path = save_weights(args.out, target, remap={"seed": str(args.seed), "seed_arch": str(seed_arch),
                                                  "width": args.width, "kernel": args.kernel,
                                                  "groups": args.groups})
    print(format_layers(plan))
    print(f"wrote {path} ({args.width} width, {args.kernel} kernel)")
    return 0


if __name__ == "__main__":
    run(main)
