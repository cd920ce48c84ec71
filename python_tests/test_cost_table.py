"""Cost tables: spatial sizes per searched layer, MAdds against fna_ext.cost.count, the
differentiable expected cost, and the cached latency table."""

import pytest
import torch

from fna_ext import build_network, count
from fna_ext.nas import cost_table as ct
from fna_ext.arch import Arch, Stage, mobilenet_v2_arch
from fna_ext.nas.cost_table import (CostTable, build_cost_table, latency_cache_key, latency_table, layer_input_sizes,
                                madds_table)
from fna_ext.families.mbconv import MBConv
from fna_ext.tasks.detection.task import RETINANET_SPACE as DETECTION
from fna_ext.nas.supernet import layer_specs

SEED = Arch.parse("mobilenet_v2")
SPECS = layer_specs(SEED, DETECTION)


def max_depth_arch(seed: Arch = SEED) -> Arch:
    return Arch([seed.stages[0]] + [Stage(s.in_channels, s.out_channels, ("k3_e6",) * d, s.stride)
                                    for s, d in zip(seed.stages[1:], DETECTION.max_depths)])


def mobilenet_v2_path() -> list[str]:
    """MobileNetV2 inside the detection space: its layers where it has them, skips elsewhere."""
    return ["k3_e6" if s.layer < len(SEED.stages[s.stage].ops) else "skip" for s in SPECS]


@pytest.mark.parametrize("size", [(224, 224), (161, 97)])
def test_layer_input_sizes_match_a_real_network(size):
    # sizes depend on strides and kernels only: a narrow MobileNetV2 has the same, and runs fast
    narrow = mobilenet_v2_arch(0.25)
    network = build_network(max_depth_arch(narrow), None).eval()
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, inputs: seen.append(tuple(inputs[0].shape[-2:])))
             for stage in network.stages[1:] for layer in stage]
    with torch.no_grad():
        network(torch.zeros(1, 3, *size))
    for hook in hooks:
        hook.remove()
    assert layer_input_sizes(narrow, layer_specs(narrow, DETECTION), size) == seen
    assert layer_input_sizes(SEED, SPECS, size) == seen
    assert len(seen) == len(SPECS)


def test_conv_output_size_is_conv2d_s():
    for n in (1, 2, 7, 160, 161):
        for k in (3, 5, 7):
            conv = torch.nn.Conv2d(1, 1, k, 2, k // 2)
            assert ct.conv_output_size(n, k, 2) == conv(torch.zeros(1, 1, n, n)).shape[-1]


def test_candidate_madds_equal_count_of_a_real_mbconv():
    size = (17, 23)
    table = madds_table(SEED, SPECS, size)
    for spec, costs, (h, w) in zip(SPECS, table.per_layer, layer_input_sizes(SEED, SPECS, size)):
        if spec.layer > 1:
            continue  # deeper layers repeat layer 1's shapes
        for op, cost in zip(spec.candidates, costs):
            if op == "skip":
                assert cost == 0
                continue
            k, e = int(op[1]), int(op[4])
            block = MBConv(spec.in_channels, spec.out_channels, k, e, spec.stride)
            report = count(block, (h, w), forward=lambda m, _: m(torch.zeros(1, spec.in_channels, h, w)))
            assert cost == report.madds, (spec.key, op)


def test_mobilenet_v2_path_adds_up_to_its_backbone():
    assert madds_table(SEED, SPECS, 224).of_ops(mobilenet_v2_path()) == 300_775_272 - 1_281_000
    odd = (65, 49)
    backbone = build_network(SEED, None)
    assert madds_table(SEED, SPECS, odd).of_ops(mobilenet_v2_path()) == count(backbone, odd).madds
    headless = count(build_network(SEED, None, head_channels=None), odd).madds
    assert madds_table(SEED, SPECS, odd, head_channels=None).of_ops(mobilenet_v2_path()) == headless


def test_expected_is_differentiable_and_matches_of_ops_on_one_hot():
    table = madds_table(SEED, SPECS, 96)
    alphas = [torch.zeros(len(s.candidates), requires_grad=True) for s in SPECS]
    expected = table.expected([a.softmax(0) for a in alphas])
    expected.log().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)
    path = mobilenet_v2_path()
    one_hot = [torch.nn.functional.one_hot(torch.tensor(s.candidates.index(op)), len(s.candidates)).double()
               for s, op in zip(SPECS, path)]
    assert table.expected(one_hot).item() == table.of_ops(path)
    with pytest.raises(ValueError, match="not a candidate"):
        table.of_ops(["skip"] * len(SPECS))


def test_save_load_round_trip(tmp_path):
    table = madds_table(SEED, SPECS, (64, 80))
    loaded = CostTable.load(table.save(tmp_path / "t.json"))
    assert loaded == table
    assert loaded.input_size == (64, 80)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        CostTable.load(tmp_path / "bad.json")


def counting_timer(monkeypatch) -> list[int]:
    calls = [0]
    real = ct._time_once

    def timer(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(ct, "_time_once", timer)
    return calls


def test_latency_table_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = counting_timer(monkeypatch)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    table = latency_table(SEED, SPECS, 32, repeats=2, warmup=1, cache_dir=tmp_path, threads=1)
    draws_after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), draws_after)  # measuring left the caller's random stream alone
    assert torch.get_num_threads() == threads
    unique_blocks = 12 * 5 + 6  # per stage: the first layer's and the repeated layers' candidates
    assert calls[0] == 2 * (unique_blocks + 2)  # + stem/first stage and head conv
    assert table.kind == "latency" and table.unit == "ms" and table.fixed > 0
    for spec, costs in zip(SPECS, table.per_layer):
        assert all((c == 0) if op == "skip" else (c > 0) for op, c in zip(spec.candidates, costs))
    assert table.per_layer[1] == table.per_layer[2] == table.per_layer[3]  # timed once, shared
    assert len(list(tmp_path.glob("*.json"))) == 1

    again = latency_table(SEED, SPECS, 32, repeats=2, warmup=1, cache_dir=tmp_path, threads=1)
    assert calls[0] == 2 * (unique_blocks + 2)
    assert again == table


def test_cache_key_and_location(tmp_path, monkeypatch):
    key = latency_cache_key(SEED, SPECS, 32, "cpu")
    assert latency_cache_key(SEED, SPECS, (32, 32), "cpu") == key
    assert latency_cache_key(SEED, SPECS, 40, "cpu") != key
    assert latency_cache_key(SEED, SPECS, 32, "cpu", threads=torch.get_num_threads() + 1) != key
    assert latency_cache_key(SEED, SPECS[:-1], 32, "cpu") != key
    monkeypatch.setenv("FNA_EXT_CACHE", str(tmp_path))
    one_layer = [s for s in SPECS if s.stage == 6]  # a small space keeps this quick
    table = latency_table(SEED, one_layer, 16, repeats=1, warmup=0, threads=1)
    assert (tmp_path / "latency" / f"{table.extra['cache_key']}.json").is_file()


def test_an_unreadable_cache_entry_is_measured_again(tmp_path, monkeypatch):
    one_layer = [s for s in SPECS if s.stage == 6]
    key = latency_cache_key(SEED, one_layer, 16, "cpu", repeats=1, warmup=0, threads=1)
    (tmp_path / f"{key}.json").write_text("not json")
    with pytest.warns(UserWarning, match="unreadable"):
        table = latency_table(SEED, one_layer, 16, repeats=1, warmup=0, cache_dir=tmp_path, threads=1)
    assert CostTable.load(tmp_path / f"{key}.json") == table


def test_build_cost_table_dispatches():
    assert build_cost_table("madds", SEED, SPECS, 64).kind == "madds"
    with pytest.raises(ValueError, match="--cost"):
        build_cost_table("flops", SEED, SPECS, 64)
