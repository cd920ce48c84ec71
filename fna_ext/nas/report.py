"""How decided a search's choices are: per searched layer, the winner of softmax(alpha), its
probability, the runner-up and the margin between them. A search whose alpha has barely moved
from uniform derives an architecture from alpha's initial noise; this report says so, layer by
layer, in the search's ``summary.md`` and in the pipeline's."""

from __future__ import annotations

from collections.abc import Sequence

# A layer's choice counts as decided when its winner holds at least this much of softmax(alpha)
# (issue 23's criterion); alphas.png draws the line and bolds the titles of decided layers.
DECISIVE_PROBABILITY = 0.5


def layer_decision(candidates: Sequence[str], probabilities: Sequence[float]) -> dict:
    """The winner, its probability, the runner-up (None for a single candidate) and the margin."""
    order = sorted(range(len(candidates)), key=lambda j: -float(probabilities[j]))
    first = order[0]
    second = order[1] if len(order) > 1 else None
    p1 = float(probabilities[first])
    p2 = float(probabilities[second]) if second is not None else 0.0
    return {"winner": candidates[first], "winner_probability": round(p1, 6),
            "runner_up": candidates[second] if second is not None else None,
            "runner_up_probability": round(p2, 6), "margin": round(p1 - p2, 6),
            "uniform": round(1.0 / len(candidates), 6), "decided": p1 >= DECISIVE_PROBABILITY}


def decided_count(layers: Sequence[dict]) -> int:
    return sum(1 for layer in layers if layer["decided"])


def decisions_markdown(layers: Sequence[dict]) -> list[str]:
    """A markdown table of the layers' decisions (``layers``: dicts with ``layer`` and the keys
    of :func:`layer_decision`), with a line that counts the decided ones."""
    lines = [f"{decided_count(layers)} of {len(layers)} searched layers are decided (the winner holds at least "
             f"{DECISIVE_PROBABILITY:g} of softmax(alpha)).", "",
             "| layer | winner | p(winner) | runner-up | p(runner-up) | margin | uniform | decided |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | :---: |"]
    for layer in layers:
        lines.append(f"| {layer['layer']} | {layer['winner']} | {layer['winner_probability']:.3f} | "
                     f"{layer['runner_up'] or '-'} | {layer['runner_up_probability']:.3f} | {layer['margin']:.3f} | "
                     f"{layer['uniform']:.3f} | {'yes' if layer['decided'] else 'no'} |")
    return lines


def search_summary_markdown(record: dict) -> str:
    """The search folder's ``summary.md``: what was derived, at what cost, and how decided."""
    adapted, seed = record["adapted"], record["seed"]
    size = "x".join(map(str, adapted["input_size"]))
    lines = [f"# FNA architecture adaptation: {record['model']} ({record['strategy']} search, "
             f"{record['weight_sharing']} weights)", "",
             f"{record['steps']} weight steps, {record['alpha_steps']} alpha steps.", "",
             f"| network ({size}) | Params | MAdds | backbone Params | backbone MAdds |",
             "| --- | ---: | ---: | ---: | ---: |",
             *(f"| {name} | {c['params']:,} | {c['madds']:,} | {c['backbone_params']:,} | {c['backbone_madds']:,} |"
               for name, c in (("seed", seed), ("derived", adapted))),
             "", "## How decided each layer's choice is", "", *decisions_markdown(record["layers"]), ""]
    return "\n".join(lines)
