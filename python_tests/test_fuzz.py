"""Property tests (hypothesis) of the parsers that read what a user hands in: the architecture
parser (net_config text, the JSON form, arch files, ``--arch`` arguments, the op grammars) and the
COCO json loader.

The contract under test: any input either parses, or raises the ONE clear error type of that API
(ValueError; FileNotFoundError too where the API documents it) with a message naming the culprit.
Never another exception (KeyError, TypeError, IndexError, AttributeError, OverflowError,
RecursionError, MemoryError, ...). An architecture that parses also round-trips through its text
and JSON forms.

Inputs that once broke the contract are pinned as explicit ``@example``s.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import yaml

from fna_ext.arch import Arch, Stage
from fna_ext.config import dump
from fna_ext.families import get_family
from fna_ext.tasks import get_task
from fna_ext.data.coco import load_coco
from fna_ext.tasks.detection.coco_data import CocoDetection

# ast.literal_eval warns about escape sequences such as '\_' in the text it is given
pytestmark = [pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:invalid escape sequence:SyntaxWarning")]


# FNA_EXT_FUZZ=random explores: ten times the examples, new ones each run
EXPLORE = os.environ.get("FNA_EXT_FUZZ") == "random"


def fuzz(max_examples: int) -> settings:
    # derandomized by default: CI runs the same examples every time, so a failure is reproducible
    # and never flaky
    return settings(max_examples=max_examples * (10 if EXPLORE else 1), deadline=None,
                    suppress_health_check=list(HealthCheck), derandomize=not EXPLORE)


# keys of an arch's JSON form that are not meta
ARCH_FIELDS = ("format", "version", "net_config", "stages", "family")

MOBILENET_V2_NET_CONFIG = (
    "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k3_e6', 'k3_e6'], 2]|"
    "[[24, 32], ['k3_e6', 'k3_e6', 'k3_e6'], 2]|"
    "[[32, 64], ['k3_e6', 'k3_e6', 'k3_e6', 'k3_e6'], 2]|[[64, 96], ['k3_e6', 'k3_e6', 'k3_e6'], 1]|"
    "[[96, 160], ['k3_e6', 'k3_e6', 'k3_e6'], 2]|[[160, 320], ['k3_e6'], 1]")
SEED_NET_CONFIGS = (
    MOBILENET_V2_NET_CONFIG,
    "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e3', 'skip', 'k7_e6'], 2]",
    '[[32, 16], ["k3_e1"], 1] | [[16, 24], ["k3_e6", "skip"], 2]',
    "[[8, 8], ('k3_e6', 'skip'), 1]",
)

# Inputs that broke the contract when this file was written, pinned as examples below. The long
# ones are parametrized tests instead, so that a failure prints a short id rather than 10 kB.
COMPLEX_STRIDE = "[[32, 16], ['k3_e1'], 1+0j]"  # parses; to_json() then raises TypeError
FLOAT_STRIDE = "[[32, 16], ['k3_e1'], 2.0]"  # a float stride is accepted as if it were 2
TRAILING_NEWLINE_OP = "[[32, 16], ['k3_e1\\n'], 1]"  # parses; str()/to_json() do not parse back
UNHASHABLE_SET_ITEM = "[[32, 16], [{[]}], 1]"  # TypeError from ast.literal_eval


# ---- helpers ------------------------------------------------------------------------------------

def _is_proper_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def assert_valid(arch: Arch) -> None:
    """What every Arch that parsed must be: the documented shape, with integers where integers
    belong (a stride of 2.0 or 1+0j would reach the network builders)."""
    assert isinstance(arch, Arch) and arch.stages
    for stage in arch.stages:
        assert _is_proper_int(stage.in_channels) and stage.in_channels >= 1, stage
        assert _is_proper_int(stage.out_channels) and stage.out_channels >= 1, stage
        assert _is_proper_int(stage.stride) and stage.stride in (1, 2), stage
        assert stage.ops and all(isinstance(op, str) for op in stage.ops), stage
        stage.layer_ops(arch.family)


def assert_round_trips(arch: Arch, *, meta: bool = False) -> None:
    """The JSON form (and, for the mbconv family, the net_config text) parses back to an equal
    Arch."""
    again = Arch.parse(arch.to_json())
    assert again == arch and again.family == arch.family, (arch, again)
    assert Arch.from_dict(json.loads(arch.to_json(indent=None))) == arch
    if meta:
        assert again.meta == arch.meta
    if arch.family == "mbconv":
        assert Arch.parse(str(arch)) == arch, str(arch)


# what an arch parser's message must name: the stage or field at fault, or what it was parsing
ARCH_CULPRIT = re.compile(r"stage|architecture|field|family|--arch")


def parse_or_reject(fn, *args, names: str | None = None):
    """``fn(*args)``: an Arch (valid, round-tripping) or a ValueError whose message says what was
    wrong (and names ``names`` when given). Any other exception propagates and fails the test."""
    try:
        arch = fn(*args)
    except ValueError as err:
        message = str(err)
        assert ARCH_CULPRIT.search(message), f"the message names no stage, field or architecture: {message}"
        if names is not None:
            assert names in message, f"the message does not name {names!r}: {message}"
        return None
    assert_valid(arch)
    assert_round_trips(arch)
    return arch


def write_temp(folder: Path, content: str | bytes, suffix: str = ".json") -> Path:
    with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as f:
        f.write(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return Path(f.name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---- strategies: JSON values --------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
# JSON values that compare equal to themselves after a round trip (no NaN), for meta
plain_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False,
              allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)

# values a hand-edited or generated file gets wrong
WEIRD_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 3, 10**30, 10**400, -10**400, 0.5, 1.5, 2.0, 1e308,
                     math.nan, math.inf, -math.inf, "", "NaN", "1", "2", "a.png", "sub/c.png",
                     "../a.png", "\x00", "é.png", "k3_e6", "skip", [], [1], [1, 2], [1, 2, 3, 4],
                     [[1, 2, 3, 4]], ["1", "1", "3", "3"], [None, None], {}, {"id": 1}]).map(copy.deepcopy),
    json_values)


# ---- strategies: architectures ------------------------------------------------------------------

mbconv_ops = st.builds("k{}_e{}".format, st.sampled_from([3, 5, 7]), st.integers(1, 12))
resnet_ops = st.builds("{}_k{}".format, st.sampled_from(["basic", "bottleneck"]), st.sampled_from([3, 5, 7]))


@st.composite
def valid_archs(draw) -> Arch:
    family = draw(st.sampled_from(["mbconv", "mbconv", "resnet"]))
    block = mbconv_ops if family == "mbconv" else resnet_ops
    later = st.one_of(block, st.just("skip")) if family == "mbconv" else block
    channels = draw(st.integers(1, 4096))
    stages = []
    for _ in range(draw(st.integers(1, 6))):
        out = draw(st.integers(1, 4096))
        ops = (draw(block), *draw(st.lists(later, max_size=4)))
        stages.append(Stage(channels, out, ops, draw(st.sampled_from([1, 2]))))
        channels = out
    meta = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ARCH_FIELDS),
                                plain_json_values, max_size=3))
    return Arch(tuple(stages), meta, family)


NUMBER_TOKENS = st.one_of(
    st.sampled_from(["-1", "0", "-0", "00", "1.0", "2.0", "1.5", "1e9", "1e999", "9" * 40, "9" * 5000,
                     "1+0j", "2+0j", "2j", "True", "False", "None", "()", "[]", "{}", "{1}", "'1'", "b'1'",
                     "\u0661", "\uff11", "0x10", "1_0", "-(1)", "+2", "--2", "nan", "inf"]),
    st.integers().map(str), st.floats().map(repr))
OP_TOKENS = st.one_of(
    st.sampled_from(["'skip'", "'SKIP'", "' skip'", "'k3_e6\\n'", "'k3_e6 '", "'k4_e6'", "'k3_e0'",
                     "'k3_e-1'", "'k03_e06'", "'k\u0663_e6'", "'k3_e6_'", "'K3_E6'", "'k3e6'", "'k_e'",
                     "'k" + "3" * 5000 + "_e6'", "'basic_k3'", "b'k3_e6'", "None", "3", "['k3_e6']",
                     "{'k3_e6'}", "''"]),
    st.text(max_size=10).map(repr))
FILLER_CHARS = st.one_of(st.sampled_from(list("[](){}|,:'\" -+.0123456789_ekjxJ\n\t\\")), st.characters())


@st.composite
def near_miss_net_configs(draw) -> str:
    """A valid net_config with one to four small edits."""
    seeds = st.one_of(st.sampled_from(SEED_NET_CONFIGS),
                      valid_archs().filter(lambda a: a.family == "mbconv").map(str))
    text = draw(seeds)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["drop", "duplicate", "replace", "insert", "number", "number", "op",
                                     "op", "stage"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "drop":
            text = text[:i] + text[i + 1:]
        elif kind == "duplicate":
            text = text[:i] + text[i:i + 1] + text[i:]
        elif kind == "replace":
            text = text[:i] + draw(FILLER_CHARS) + text[i + 1:]
        elif kind == "insert":
            text = text[:i] + draw(FILLER_CHARS) + text[i:]
        elif kind == "stage":  # drop, duplicate or reorder whole stages
            stages = text.split("|")
            text = "|".join(draw(st.lists(st.sampled_from(stages), min_size=0, max_size=len(stages) + 1)))
        else:
            pattern = r"\d+" if kind == "number" else r"'[^']*'|\"[^\"]*\""
            spans = [m.span() for m in re.finditer(pattern, text)]
            if spans:
                start, end = draw(st.sampled_from(spans))
                token = draw(NUMBER_TOKENS if kind == "number" else OP_TOKENS)
                text = text[:start] + token + text[end:]
    return text


@st.composite
def near_miss_json_archs(draw):
    """The JSON form of a valid arch (sometimes with only one of its two descriptions) with one to
    three fields broken."""
    data = json.loads(draw(valid_archs()).to_json())
    if draw(st.booleans()):
        del data[draw(st.sampled_from(["net_config", "stages"]))]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["stage_field", "stage_field", "del_stage_field", "stage", "top", "op"]))
        stages = data.get("stages") if isinstance(data, dict) else None
        if kind in ("stage_field", "del_stage_field", "op") and isinstance(stages, list) and stages:
            stage = stages[draw(st.integers(0, len(stages) - 1))]
            if not isinstance(stage, dict):
                continue
            key = draw(st.sampled_from(["in", "out", "ops", "stride"]))
            if kind == "del_stage_field":
                stage.pop(key, None)
            elif kind == "op" and isinstance(stage.get("ops"), list) and stage["ops"]:
                stage["ops"][draw(st.integers(0, len(stage["ops"]) - 1))] = draw(
                    st.one_of(WEIRD_VALUES, st.sampled_from(["k3_e6\n", "k\u0663_e6", "skip", "k3_e6 "])))
            else:
                stage[key] = draw(WEIRD_VALUES)
        elif kind == "stage" and isinstance(stages, list) and stages:
            stages[draw(st.integers(0, len(stages) - 1))] = draw(WEIRD_VALUES)
        elif isinstance(data, dict):
            data[draw(st.sampled_from(["net_config", "stages", "family", "format", "version"]))] = draw(WEIRD_VALUES)
    return data


# ---- architectures: tests ------------------------------------------------------------------------

@fuzz(1000)
@given(st.text())
@example(COMPLEX_STRIDE)
@example(FLOAT_STRIDE)
@example(TRAILING_NEWLINE_OP)
@example(UNHASHABLE_SET_ITEM)
def test_parse_any_text(text):
    parse_or_reject(Arch.parse, text)


@fuzz(150)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(), json_values))
def test_parse_rejects_what_is_not_text(value):
    if isinstance(value, str):
        parse_or_reject(Arch.parse, value)
    else:
        with pytest.raises(ValueError, match="must be given as text"):
            Arch.parse(value)


@fuzz(800)
@given(near_miss_net_configs())
@example(COMPLEX_STRIDE)
@example(FLOAT_STRIDE)
@example(TRAILING_NEWLINE_OP)
@example(UNHASHABLE_SET_ITEM)
@example("[[8, 8], ({{'k3_e6'}}, 'skip'), 1]")
def test_parse_near_miss_net_config(text):
    parse_or_reject(Arch.parse, text)


@fuzz(500)
@given(st.one_of(st.text(), near_miss_net_configs(),
                 st.sampled_from(["mobilenet_v2", " resnet18\n", "resnet1000", ".", "/", "", " ", "\x00"])))
def test_from_arg_any_text(text):
    parse_or_reject(Arch.from_arg, text)


@fuzz(100)
@given(valid_archs())
def test_valid_archs_round_trip(workdir, arch):
    assert_valid(arch)
    assert_round_trips(arch, meta=True)
    path = arch.save(Path(tempfile.mkdtemp(dir=workdir)) / "arch.json")
    for loaded in (Arch.load(path), Arch.from_arg(str(path))):
        assert loaded == arch and loaded.family == arch.family and loaded.meta == arch.meta
    if arch.family == "mbconv":
        assert Arch.from_arg(str(arch)) == arch
        assert Arch.parse(json.dumps({"net_config": str(arch)})) == arch


@fuzz(200)
@given(st.one_of(json_values, near_miss_json_archs()))
def test_load_any_json_arch_file(workdir, value):
    path = write_temp(workdir, json.dumps(value))
    try:
        for read in (Arch.load, Arch.from_arg):
            parse_or_reject(read, str(path), names=str(path))
        parse_or_reject(Arch.from_dict, value)
    finally:
        path.unlink()


@fuzz(500)
@given(near_miss_json_archs())
@example({"stages": [{"in": 32, "out": 16, "ops": ["k3_e1"], "stride": 2.0}]})  # a float stride is accepted
@example({"stages": [{"in": 32, "out": 16, "ops": ["k3_e1\n"], "stride": 1}]})  # parses, does not round-trip
def test_parse_near_miss_json_arch(value):
    parse_or_reject(Arch.parse, json.dumps(value))


@fuzz(300)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64)))
@example(b"\xff\xfe{")
def test_load_any_file_content(workdir, content):
    path = write_temp(workdir, content)
    try:
        parse_or_reject(Arch.load, path, names=str(path))
    finally:
        path.unlink()


# deep nesting and long chains: RecursionError from json, RecursionError or MemoryError from ast
PATHOLOGICAL_TEXTS = {
    "json-nested-10k": '{"stages": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "net_config-unary-minus-10k": "[" + "-" * 10_000 + "1]",
    "net_config-sum-10k": "[" + "+".join(["1"] * 10_000) + "]",
    "net_config-attribute-chain-10k": "[a" + ".a" * 10_000 + "]",
    "net_config-nested-10k": "[" * 10_000 + "]" * 10_000,
    "json-int-5000-digits": '{"net_config": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("text", list(PATHOLOGICAL_TEXTS.values()), ids=list(PATHOLOGICAL_TEXTS))
def test_parse_pathological_text(workdir, text):
    parse_or_reject(Arch.parse, text)
    path = write_temp(workdir, text)
    try:
        parse_or_reject(Arch.load, path, names=str(path))
    finally:
        path.unlink()


# a name longer than the OS allows: OSError 'File name too long' from Path.is_file()
# (for example a net_config whose leading '[[' was lost in a copy and paste)
@pytest.mark.parametrize("text", [MOBILENET_V2_NET_CONFIG[2:], "a" * 5_000, "a/" * 3_000, "x" * 300 + ".json"],
                         ids=["net_config-without-leading-brackets", "long-name", "long-path", "name-300"])
def test_from_arg_long_text(text):
    parse_or_reject(Arch.from_arg, text)


def test_load_missing_or_unreadable_path(workdir):
    missing = workdir / "no-such-arch.json"
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(str(missing))):
        Arch.load(missing)
    with pytest.raises(ValueError, match=re.escape(str(workdir))):
        Arch.load(workdir)


@fuzz(500)
@given(st.one_of(st.text(), OP_TOKENS.map(lambda t: t.strip("'")), mbconv_ops, resnet_ops, json_scalars,
                 st.builds("{}_g{}".format, resnet_ops, st.integers(-1, 12)),
                 st.lists(st.text(max_size=5), max_size=2)))
def test_op_grammars(name):
    for family, grammar in (("mbconv", r"k[0-9]+_e[0-9]+|skip"),
                            ("resnet", r"(basic|bottleneck)_k[0-9]+(_g([2-9]|[1-9][0-9]+))?|skip")):
        try:
            op = get_family(family).parse_op(name)
        except ValueError as err:
            assert repr(name)[:20] in str(err) or len(repr(name)) > 1000, str(err)
            continue
        assert re.fullmatch(grammar, op.name), op
        assert get_family(family).parse_op(op.name) == op


# ---- COCO json: fixtures and strategies ---------------------------------------------------------

# file_name -> (width, height) as the image really is; missing.png is not on disk and bad.png is
# not an image
COCO_FILES = {"a.png": (8, 6), "b.png": (5, 7), "sub/c.png": (4, 4), "bad.png": (3, 3), "missing.png": (6, 6)}


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("coco_images")
    (images / "sub").mkdir()
    for name, size in COCO_FILES.items():
        if name == "bad.png":
            (images / name).write_bytes(b"not a png")
        elif name != "missing.png":
            Image.new("RGB", size, (40, 80, 120)).save(images / name)
    return images


@st.composite
def coco_documents(draw) -> dict:
    names = draw(st.lists(st.sampled_from(list(COCO_FILES)), min_size=1, max_size=4, unique=True))
    images = [{"id": i + 1, "file_name": name, "width": COCO_FILES[name][0], "height": COCO_FILES[name][1]}
              for i, name in enumerate(names)]
    cat_ids = draw(st.lists(st.integers(1, 90), min_size=1, max_size=3, unique=True))
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in cat_ids]
    coords = st.floats(-3, 12, allow_nan=False)
    annotations = []
    for k in range(draw(st.integers(0, 5))):
        bbox = [draw(coords), draw(coords), draw(coords), draw(coords)]
        annotations.append({"id": k + 1, "image_id": draw(st.sampled_from(images))["id"],
                            "category_id": draw(st.sampled_from(cat_ids)), "bbox": bbox,
                            "area": bbox[2] * bbox[3], "iscrowd": draw(st.sampled_from([0, 0, 1]))})
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


ENTRY_KEYS = {"images": ["id", "file_name", "width", "height"],
              "categories": ["id", "name"],
              "annotations": ["id", "image_id", "category_id", "bbox", "iscrowd", "area", "segmentation"]}


@st.composite
def near_miss_coco_documents(draw):
    """A valid-shaped COCO document with one to four things wrong in it."""
    doc = draw(coco_documents())
    for _ in range(draw(st.integers(1, 4))):
        if not isinstance(doc, dict):
            break
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "entry", "duplicate", "orphan",
                                     "section", "drop_section", "document"]))
        section = draw(st.sampled_from(list(ENTRY_KEYS)))
        entries = doc.get(section)
        index = draw(st.integers(0, 9))
        if kind in ("set", "delete", "entry", "duplicate") and isinstance(entries, list) and entries:
            index %= len(entries)
            entry = entries[index]
            if kind == "entry":
                entries[index] = draw(WEIRD_VALUES)
            elif kind == "duplicate":
                entries.append(json.loads(json.dumps(entry)))
            elif isinstance(entry, dict):
                key = draw(st.sampled_from(ENTRY_KEYS[section]))
                if kind == "delete":
                    entry.pop(key, None)
                else:
                    entry[key] = draw(WEIRD_VALUES)
        elif kind == "orphan" and isinstance(doc.get("annotations"), list):
            doc["annotations"].append({"id": 1000 + index, "image_id": draw(st.sampled_from([1, 999, "1"])),
                                       "category_id": draw(st.sampled_from([1, 999, "1"])),
                                       "bbox": [0, 0, 2, 2], "iscrowd": 0})
        elif kind == "section":
            doc[section] = draw(WEIRD_VALUES)
        elif kind == "drop_section":
            doc.pop(section, None)
        elif kind == "document":
            doc = draw(WEIRD_VALUES)
    return doc


def check_coco(ann_file: Path, images_dir: Path, **kwargs) -> None:
    """load_coco and CocoDetection on ``ann_file``: a dataset whose items load, or ValueError /
    FileNotFoundError naming the annotation file; an item that cannot load raises ValueError or
    OSError naming its image. Anything else propagates and fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_coco(ann_file)
        except (ValueError, FileNotFoundError) as err:
            assert str(ann_file) in str(err), f"load_coco's error does not name the file: {err}"
        try:
            dataset = CocoDetection(ann_file, images_dir, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            assert str(ann_file) in str(err), f"CocoDetection's error does not name the file: {err}"
            return
        assert len(dataset) >= 0
        for index in range(len(dataset)):
            try:
                image, target = dataset[index]
            except (ValueError, OSError) as err:
                assert str(images_dir) in str(err) or str(ann_file) in str(err), \
                    f"dataset[{index}]'s error names neither its image nor the file: {err}"
                continue
            assert image.ndim == 3 and image.shape[0] == 3
            assert target["boxes"].shape == (len(target["labels"]), 4)
            assert int(target["image_id"]) == target["image_id"]


def _coco(images=None, categories=None, annotations=None) -> dict:
    """A small valid document, with the given sections replaced (for the examples)."""
    return {"images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
            "categories": categories if categories is not None else [{"id": 1, "name": "x"}],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "iscrowd": 0}]}


_ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "iscrowd": 0}


# ---- COCO json: tests ---------------------------------------------------------------------------

@fuzz(800)
@given(doc=near_miss_coco_documents(), check_files=st.booleans(), skip_empty=st.booleans())
# unhashable ids: TypeError from the duplicate-id check and from pycocotools' createIndex
@example(doc=_coco(images=[{"id": [1], "file_name": "a.png", "width": 8, "height": 6}]),
         check_files=True, skip_empty=False)
@example(doc=_coco(categories=[{"id": [1]}]), check_files=True, skip_empty=False)
@example(doc=_coco(annotations=[{**_ANN, "id": [1]}]), check_files=True, skip_empty=False)
@example(doc=_coco(annotations=[{**_ANN, "image_id": [1]}]), check_files=True, skip_empty=False)
@example(doc=_coco(annotations=[{**_ANN, "category_id": {}}]), check_files=True, skip_empty=False)
# category ids of mixed types: TypeError from sorted()
@example(doc=_coco(categories=[{"id": 1}, {"id": "a"}]), check_files=True, skip_empty=False)
@example(doc=_coco(categories=[{"id": 1}, {"id": None}]), check_files=True, skip_empty=False)
# infinite width: OverflowError from int()
@example(doc=_coco(images=[{"id": 1, "file_name": "a.png", "width": math.inf, "height": 6}]),
         check_files=True, skip_empty=False)
# a bbox coordinate beyond float: OverflowError from float()
@example(doc=_coco(annotations=[{**_ANN, "bbox": [10**400, 0, 1, 1]}]), check_files=True, skip_empty=False)
# a missing image whose file_name is not a string: TypeError from Path / int
@example(doc=_coco(images=[{"id": 1, "file_name": "a.png", "width": 8, "height": 6},
                           {"id": 2, "file_name": 5, "width": 8, "height": 6}]), check_files=True, skip_empty=False)
@example(doc=_coco(images=[{"id": 1, "file_name": 5, "width": 8, "height": 6}]), check_files=False, skip_empty=False)
# image ids that are not integers: dataset[i] raises ValueError/TypeError/OverflowError from int()
@example(doc=_coco(images=[{"id": "x", "file_name": "a.png", "width": 8, "height": 6}],
                   annotations=[{**_ANN, "image_id": "x"}]), check_files=True, skip_empty=False)
@example(doc=_coco(images=[{"id": None, "file_name": "a.png", "width": 8, "height": 6}], annotations=[]),
         check_files=True, skip_empty=False)
@example(doc=_coco(images=[{"id": math.inf, "file_name": "a.png", "width": 8, "height": 6}], annotations=[]),
         check_files=True, skip_empty=False)
def test_coco_near_miss_documents(workdir, coco_images, doc, check_files, skip_empty):
    path = write_temp(workdir, json.dumps(doc))
    try:
        check_coco(path, coco_images, check_files=check_files, skip_empty=skip_empty)
    finally:
        path.unlink()


@fuzz(400)
@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "images": json_values, "annotations": json_values, "categories": json_values})))
def test_coco_any_json_value(workdir, coco_images, value):
    path = write_temp(workdir, json.dumps(value))
    try:
        check_coco(path, coco_images)
    finally:
        path.unlink()


@fuzz(100)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64)))
@example(b"\xff\xfe\x00")
def test_coco_any_file_content(workdir, coco_images, content):
    path = write_temp(workdir, content)
    try:
        check_coco(path, coco_images)
    finally:
        path.unlink()


@fuzz(50)
@given(coco_documents())
def test_coco_valid_documents_load(workdir, coco_images, doc):
    """The unbroken documents the mutations start from build whenever one of their images is a
    real image on disk (missing.png is not on disk; bad.png is not an image)."""
    path = write_temp(workdir, json.dumps(doc))
    try:
        good = [im for im in doc["images"] if im["file_name"] not in ("missing.png", "bad.png")]
        if good:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = CocoDetection(path, coco_images)
            assert len(good) <= len(dataset) <= len(doc["images"])
        check_coco(path, coco_images)
    finally:
        path.unlink()


# RecursionError from json; a ValueError from int() (over Python's 4300-digit limit) that does not
# name the file; a file_name too long for the OS (OSError from is_file()).
PATHOLOGICAL_COCO = {
    "nested-10k": "[" * 10_000 + "]" * 10_000,
    "int-5000-digits": "9" * 5000,
    "image-id-5000-digits": json.dumps(_coco()).replace('"id": 1, "file_name"',
                                                        '"id": ' + "9" * 5000 + ', "file_name"'),
    "long-file_name": json.dumps(_coco(images=[{"id": 1, "file_name": "a.png", "width": 8, "height": 6},
                                              {"id": 2, "file_name": "a/" * 3000, "width": 8, "height": 6}])),
}


@pytest.mark.parametrize("content", list(PATHOLOGICAL_COCO.values()), ids=list(PATHOLOGICAL_COCO))
def test_coco_pathological_content(workdir, coco_images, content):
    path = write_temp(workdir, content)
    try:
        check_coco(path, coco_images)
    finally:
        path.unlink()


def test_coco_missing_annotation_file(workdir, coco_images):
    path = workdir / "no-such-annotations.json"
    for build in (load_coco, lambda p: CocoDetection(p, coco_images)):
        with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
            build(path)


# --------------------------------------------------------------------------- the config resolver

def _leaf_keys(section: dict, where: str = "") -> list[str]:
    keys = []
    for key, value in section.items():
        path = f"{where}.{key}" if where else key
        keys += _leaf_keys(value, path) if isinstance(value, dict) else [path]
    return keys


def _search_preset() -> dict:
    return get_task("detection").search_preset("ssdlite", synthetic=True)


_KEYS = _leaf_keys(_search_preset()) + ["train", "search.alpha", "nope", "train.nope", "train.epochs.x", "", "."]
_YAML_VALUES = st.one_of(
    st.sampled_from(["abc", "1e-3", "1e400", "-1", "0", "2.5", "null", "true", "[1, 2]", "[64, 64]", "{a: 1}",
                     "[", "2024-01-01", ".inf", ".nan", "0x10", "'1'", "[[1]]", "sgd", "step", "- 1"]),
    st.text(max_size=12),
    st.integers(-10**30, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr))


@fuzz(300)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _YAML_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4))
@example(["train.epochs={a: 1}"])
@example(["task=\n"])
@example(["train.optimizer.lr=1e-3", "data.input_size=[64, 64]"])
def test_the_config_resolver_resolves_or_names_the_setting(assignments):
    task = get_task("detection")
    try:
        config = task.resolve_config(_search_preset(), None, assignments)
    except ValueError as err:
        message = str(err)
        assert message and "\n" not in message
        assert "--set" in message or "search.alpha_start_epoch" in message or "task and model.name" in message
        return
    assert task.check_config(config) == config  # a resolved config is a valid one
    assert yaml.safe_load(dump(config)) == config  # and config.yaml reads back the same


@fuzz(150)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                  st.sampled_from(["train", "search", "data", "epochs", "lr", "x"]), inner,
                                  max_size=3), max_leaves=10).map(json.dumps)))
def test_a_config_file_resolves_or_names_the_file(text):
    task = get_task("detection")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "settings.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            task.resolve_config(_search_preset(), path)
        except ValueError as err:
            assert "\n" not in str(err) and ("settings.yaml" in str(err) or "alpha_start_epoch" in str(err)
                                             or "task and model.name" in str(err)), str(err)
