import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fna_ext.arch import Arch, Op, Stage, make_divisible, mobilenet_v2_arch

MOBILENET_V2_NET_CONFIG = (
    "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k3_e6', 'k3_e6'], 2]|"
    "[[24, 32], ['k3_e6', 'k3_e6', 'k3_e6'], 2]|"
    "[[32, 64], ['k3_e6', 'k3_e6', 'k3_e6', 'k3_e6'], 2]|[[64, 96], ['k3_e6', 'k3_e6', 'k3_e6'], 1]|"
    "[[96, 160], ['k3_e6', 'k3_e6', 'k3_e6'], 2]|[[160, 320], ['k3_e6'], 1]")


def test_mobilenet_v2_name_is_the_published_net_config():
    assert str(Arch.parse("mobilenet_v2")) == MOBILENET_V2_NET_CONFIG
    assert Arch.parse(MOBILENET_V2_NET_CONFIG) == Arch.parse("mobilenet_v2")


def test_net_config_with_double_quotes_and_line_breaks():
    text = MOBILENET_V2_NET_CONFIG.replace("'", '"').replace("|", "|\n   ")
    assert Arch.parse(text) == mobilenet_v2_arch()


def test_json_round_trip_keeps_meta():
    arch = Arch.parse("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e3', 'skip'], 2]").with_meta(
        task="coco", input_size=[320, 320])
    data = json.loads(arch.to_json())
    assert data["net_config"] == str(arch)
    assert data["stages"][1] == {"in": 16, "out": 24, "ops": ["k5_e3", "skip"], "stride": 2}
    again = Arch.parse(arch.to_json())
    assert again == arch and again.meta == {"task": "coco", "input_size": [320, 320]}


def test_json_with_only_net_config():
    assert Arch.parse(json.dumps({"net_config": MOBILENET_V2_NET_CONFIG})) == mobilenet_v2_arch()


def test_save_and_load(tmp_path):
    arch = mobilenet_v2_arch().with_meta(task="classification")
    path = arch.save(tmp_path / "sub" / "arch.json")
    assert Arch.load(path) == arch and Arch.load(path).meta["task"] == "classification"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert Arch.from_arg(str(path)) == arch


@pytest.mark.parametrize("text, message", [
    ("[[32, 16], ['k4_e6'], 1]", r"stage 0 .*layer 0: unknown op 'k4_e6'"),
    ("[[32, 16], ['conv3x3'], 1]", r"stage 0 .*unknown op 'conv3x3'"),
    ("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['skip', 'k3_e6'], 2]", r"stage 1 .*'skip' cannot be the first"),
    ("[[32, 16], ['k3_e1'], 1]|[[24, 32], ['k3_e6'], 2]", r"stage 1 .*C_in 24 does not match .* C_out 16"),
    ("[[32, 16], ['k3_e1'], 3]", r"stage 0 .*stride must be 1 or 2, got 3"),
    ("[[32, 16], [], 1]", r"stage 0 .*at least one op"),
    ("[[32, -16], ['k3_e1'], 1]", r"stage 0 .*C_out must be a positive integer"),
    ("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k3_e6', 2]", r"stage 1 .*not a list"),
    ("[[32, 16], 'k3_e1', 1]", r"stage 0 .*expected \[\[C_in, C_out\]"),
    ("resnet1000", r"cannot parse architecture 'resnet1000'"),
    ('{"stages": [{"in": 32, "out": 16, "ops": ["k3_e1"]}]}', r"stage 0: missing field\(s\) \['stride'\]"),
    ('{"stages": [', r"invalid JSON"),
    ('{"net_config": "[[32, 16], [\'k3_e1\'], 1]", "stages": [{"in": 32, "out": 16, "ops": ["k5_e1"], "stride": 1}]}',
     r"describe different architectures"),
])
def test_invalid_text_names_stage_and_problem(text, message):
    with pytest.raises(ValueError, match=message):
        Arch.parse(text)


def test_from_arg_rejects_what_is_neither_file_nor_text(tmp_path):
    with pytest.raises(ValueError, match="neither a file"):
        Arch.from_arg(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.txt"
    bad.write_text("[[32, 16], ['k9_x'], 1]")
    with pytest.raises(ValueError, match=r"bad.txt: stage 0"):
        Arch.from_arg(str(bad))


def test_layers_give_channels_and_strides():
    stage = Stage(16, 24, ("k3_e6", "skip", "k7_e3"), 2)
    assert [(i, o, s, op.name) for i, o, s, op in stage.layers()] == [
        (16, 24, 2, "k3_e6"), (24, 24, 1, "skip"), (24, 24, 1, "k7_e3")]
    assert Op.parse("k7_e3") == Op(7, 3) and Op.parse("skip").is_skip


def test_make_divisible_matches_torchvision_rounding():
    # torchvision's _make_divisible: round to the nearest multiple of 8, never 10% below.
    assert [make_divisible(c * 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [
        16, 8, 16, 16, 32, 48, 80, 160]
    assert [make_divisible(c * 1.4) for c in (32, 16, 24)] == [48, 24, 32]
    assert make_divisible(1280 * 1.4) == 1792


OPS = ["k3_e1", "k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6"]


@st.composite
def archs(draw):
    channels = draw(st.lists(st.integers(1, 512), min_size=2, max_size=8))
    stages = []
    for c_in, c_out in zip(channels, channels[1:]):
        first = draw(st.sampled_from(OPS))
        rest = draw(st.lists(st.sampled_from(OPS + ["skip"]), max_size=5))
        stages.append(Stage(c_in, c_out, (first, *rest), draw(st.sampled_from([1, 2]))))
    return Arch(tuple(stages))


@settings(max_examples=200, deadline=None)
@given(archs())
def test_round_trips_through_both_text_forms(arch):
    assert Arch.parse(str(arch)) == arch
    assert Arch.parse(arch.to_json()) == arch
    assert str(Arch.parse(str(arch))) == str(arch)
