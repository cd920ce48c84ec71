"""The pose task end to end on a tiny generated keypoints set: the registry, the loader's checks,
a search, parameter adaptation with OKS evaluation, the model file read back, evaluation on
detected boxes, the picture and the export."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.cli.count import count_task
from fna_ext.config import resolve
from fna_ext.data.synthetic import generate_keypoints
from fna_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fna_ext.engine.export import export_model
from fna_ext.engine.finetune import evaluate_checkpoint, finetune
from fna_ext.families.mbconv import build_network
from fna_ext.nas.search import search
from fna_ext.remap import save_weights
from fna_ext.tasks import get_task, load_model_file, resolve as resolve_model
from fna_ext.tasks.keypoints.data import CocoKeypoints
from fna_ext.tasks.keypoints.transforms import Augmentation

TINY = ["data.input_size=[64, 64]", "train.batch_size=4", "train.num_workers=0", "train.epochs=2",
        "train.schedule.warmup_iters=2", "train.log_every=1"]
VAL_JSON = "annotations/person_keypoints_val2017.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("keypoints")
    data = generate_keypoints(root / "people", images=16, size=96, seed=3)
    torch.manual_seed(0)
    seed = build_network(mobilenet_v2_arch(0.35), None)
    save_weights(root / "seed.pt", seed)
    return data, seed, root / "seed.pt"


def test_the_registry_knows_the_task_by_its_names_and_presets():
    task = get_task("coco-keypoints")
    assert task is get_task("keypoints") is get_task("pose") and resolve_model("simplebaseline") == (task, "simplebaseline")
    search_preset, finetune_preset = task.presets("simplebaseline", synthetic=False)
    assert finetune_preset["train"]["epochs"] == 140 and finetune_preset["train"]["optimizer"]["name"] == "adam"
    assert finetune_preset["train"]["schedule"]["milestones"] == [90, 120]  # SimpleBaseline's recipe
    assert finetune_preset["data"]["input_size"] == [256, 192] and finetune_preset["eval"]["flip"] is True
    assert search_preset["model"]["deconv_channels"] == 256
    assert task.search_space("simplebaseline").max_depths == (4, 4, 4, 4, 4, 1)


def test_count_reports_simplebaseline_at_256x192():
    report = count_task("simplebaseline", Arch.from_arg("resnet50"))
    assert report.params == 33_999_697 and report.input_size == (256, 192)
    # the head's deconvolutions, counted at their inputs: 8x6 -> 16x12 -> 32x24
    deconvs = 16 * 256 * (2048 * 8 * 6 + 256 * 16 * 12 + 256 * 32 * 24)
    assert sum(m.madds for m in report.modules if m.kind == "ConvTranspose2d") == deconvs


def test_a_training_sample_has_heatmaps_that_peak_at_its_joints(tiny):
    data, _, _ = tiny
    dataset = CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 48))
    image, target = dataset[0]
    assert image.shape == (3, 64, 48) and target["heatmaps"].shape == (13, 16, 12)
    person = dataset.people[0]
    labelled = person.joints[:, 2] > 0
    # COCO's pixel indices, read as continuous coordinates: half a pixel further on
    first = json.loads((data / VAL_JSON).read_text())["annotations"][0]
    written = np.asarray(first["keypoints"], dtype=np.float32).reshape(-1, 3)
    assert person.joints[labelled, :2] == pytest.approx(written[labelled, :2] + 0.5)
    weighted = target["weights"].numpy().astype(bool)
    assert weighted.any() and not (weighted & ~labelled).any()  # only labelled joints (inside the crop) count
    peaks = target["heatmaps"].flatten(1).max(1).values
    assert (peaks[target["weights"] > 0] > 0.6).all() and (peaks[target["weights"] == 0] == 0).all()
    torch.manual_seed(0)
    augmented = CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 48), augmentation=Augmentation(flip_p=1.0))
    assert augmented[0][1]["heatmaps"].shape == (13, 16, 12)


def _edited(data, tmp_path, edit):
    document = json.loads((data / VAL_JSON).read_text())
    edit(document)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(keypoints=d["annotations"][0]["keypoints"][:-3]), "holds 36 values, not 3 x 13"),
    (lambda d: [a["keypoints"].__setitem__(2, 3) for a in d["annotations"][:2]], "2 person annotations.*visibility flags \\[3\\]"),
    (lambda d: d["categories"][0].pop("sigmas"), "sigmas"),
    (lambda d: d["annotations"][0].pop("num_keypoints"), "'num_keypoints' is None"),
    (lambda d: d["annotations"][1].update(area=None), "'area' is None"),
    (lambda d: d["annotations"][1].update(iscrowd=[0]), "'iscrowd' is \\[0\\]"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(0, 10 ** 400), "not a finite number"),
    (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "ids must be unique"),
    # each of these would otherwise be scored, or dropped, without a word
    (lambda d: d["annotations"][1].update(image_id=999999), "image_id 999999 is not in 'images'"),
    (lambda d: d["annotations"][0].update(num_keypoints=0), "'num_keypoints' is 0, but \\d+ joints are labelled"),
])
def test_bad_keypoints_are_found_when_the_dataset_is_built(tiny, tmp_path, edit, message):
    data, _, _ = tiny
    with pytest.raises(ValueError, match=message) as error:
        CocoKeypoints(_edited(data, tmp_path, edit), data / "val2017", (64, 48))
    assert "edited.json" in str(error.value)


def test_joints_off_the_image_are_kept_with_a_warning_and_the_border_is_not_off(tiny, tmp_path):
    data, _, _ = tiny
    width = json.loads((data / VAL_JSON).read_text())["images"][0]["width"]

    def place(x):
        def edit(d):
            first = next(a for a in d["annotations"] if a["image_id"] == d["images"][0]["id"])
            first["keypoints"][0:3] = [x, 10, 2]
            first["num_keypoints"] = sum(1 for v in first["keypoints"][2::3] if v > 0)
        return edit

    with pytest.warns(UserWarning, match="1 person annotations have a labelled joint off their image.*\\(5000, 10\\)"):
        CocoKeypoints(_edited(data, tmp_path, place(5000)), data / "val2017", (64, 48))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a joint on the last pixel, or just past it, is on the image
        CocoKeypoints(_edited(data, tmp_path, place(width)), data / "val2017", (64, 48))


def test_validation_on_detected_boxes_still_checks_the_ground_truth(tiny, tmp_path):
    data, _, _ = tiny
    document = json.loads((data / VAL_JSON).read_text())
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": document["images"][0]["id"], "category_id": 1, "bbox": [0, 0, 9, 9],
                                  "score": 1.0}]))
    bad = _edited(data, tmp_path, lambda d: d["annotations"][1].update(image_id=999999))
    with pytest.raises(ValueError, match="image_id 999999 is not in 'images'"):
        CocoKeypoints(bad, data / "val2017", (64, 48), person_boxes=boxes)


def test_missing_images_are_counted_and_skipped(tiny, tmp_path):
    data, _, _ = tiny
    path = _edited(data, tmp_path, lambda d: d["images"][0].update(file_name="gone.jpg"))
    with pytest.warns(UserWarning, match="1 of .* images .* missing"):
        dataset = CocoKeypoints(path, data / "val2017", (64, 48))
    gone = json.loads(path.read_text())["images"][0]["id"]
    assert dataset.people and gone not in {p.image_id for p in dataset.people} and gone not in dataset.image_ids


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    data, seed, seed_path = tiny
    out = tmp_path_factory.mktemp("pose_run")
    task = get_task("keypoints")
    config = resolve(task.search_preset("simplebaseline", synthetic=True), None,
                     [f"data.root={data}", *TINY, "search.alpha_start_epoch=1", "model.deconv_channels=16"])
    found = search(config, seed, out / "search")
    config = resolve(task.finetune_preset("simplebaseline", synthetic=True), None,
                     [f"data.root={data}", *TINY, "model.deconv_channels=16"])
    result = finetune(task, config, found.arch, out / "train", seed_weights=seed_path)
    return out, found, result


def test_search_then_adapt_then_read_the_model_back(trained):
    out, found, result = trained
    record = json.loads((out / "search" / "arch.json").read_text())["search"]
    assert len(record["layers"]) == 4 * 5 + 1
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
    assert 0 <= metrics["AP"] <= 1 and result.metrics["AP"] == metrics["AP"]
    task, model, payload = load_model_file(result.weights)
    assert task is get_task("keypoints") and Arch.parse(payload["arch"]) == found.arch
    assert payload["skeleton"]["names"][1] == "left_shoulder" and len(payload["skeleton"]["sigmas"]) == 13
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 13, 16, 16)


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def test_evaluate_reproduces_the_metrics_and_draws_the_skeletons(trained, tmp_path):
    _, _, result = trained
    done = run("fna_ext.evaluate", "--checkpoint", str(result.weights), "--out", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == pytest.approx(result.metrics, abs=1e-9)
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    plain = evaluate_checkpoint(result.weights, eval_settings=["eval.flip=false"])
    assert plain.dataset.eval_flip is False and set(plain.metrics) == set(result.metrics)


def test_validation_can_crop_detected_people(trained, tiny, tmp_path):
    data, _, _ = tiny
    truth = json.loads((data / VAL_JSON).read_text())
    boxes = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in truth["annotations"]]
    boxes.append({"image_id": truth["images"][0]["id"], "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.01})
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    detected = CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 64), person_boxes=tmp_path / "boxes.json")
    assert len(detected) == len(truth["annotations"]) + 1 and not detected.people[0].joints.any()
    assert len(CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 64), person_boxes=tmp_path / "boxes.json",
                             min_box_score=0.5)) == len(truth["annotations"])
    _, _, result = trained
    on_boxes = evaluate_checkpoint(result.weights, eval_settings=[f"eval.person_boxes={tmp_path / 'boxes.json'}"])
    assert 0 <= on_boxes.metrics["AP"] <= 1 and len(on_boxes.dataset) == len(detected)
    done = run("fna_ext.evaluate", "--checkpoint", str(result.weights), "--person-boxes", str(tmp_path / "boxes.json"),
               "--out", str(tmp_path / "on_boxes.json"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "on_boxes.json").read_text())
    assert record["metrics"] == pytest.approx(on_boxes.metrics, abs=1e-9) and "eval.person_boxes" in record["settings"][0]
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 99999, "category_id": 1, "bbox": [0, 0, 5, 5],
                                                    "score": 1.0}]))
    with pytest.raises(ValueError, match="bad.json: 1 detections.*image 99999"):
        CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 64), person_boxes=tmp_path / "bad.json")


@pytest.mark.parametrize("boxes, message", [
    ([{"image_id": 1, "category_id": "1", "bbox": [0, 0, 9, 9], "score": 1.0}], "category_id '1', not an integer id"),
    ([{"image_id": 1, "category_id": 1, "bbox": ["0", "0", "9", "9"], "score": 1.0}], "not four numbers"),
    ([{"image_id": 1, "category_id": 1, "bbox": [500, 500, 9, 9], "score": 1.0}], "holds no pixel of its"),
    ([], "holds no detections"),
    ([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 9, 9], "score": 1.0}], "no detection of the person category \\(id 1\\), only of \\[7\\]"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.1}], "score under eval.min_box_score 0.5"),
    # another category's detections on images the keypoints file lacks are not ours to judge
    ([{"image_id": 99999, "category_id": 7, "bbox": [0, 0, 9, 9], "score": 1.0}], "only of \\[7\\]"),
    ("folder", "is a folder"),
])
def test_bad_person_boxes_are_named_for_what_they_are(tiny, tmp_path, boxes, message):
    data, _, _ = tiny
    path = tmp_path / "boxes.json"
    if boxes == "folder":
        path.mkdir()
    else:
        for box in (box for box in boxes if box["image_id"] == 1):  # 1: the file's first image
            box["image_id"] = json.loads((data / VAL_JSON).read_text())["images"][0]["id"]
        path.write_text(json.dumps(boxes))
    with pytest.raises(ValueError, match=message):
        CocoKeypoints(data / VAL_JSON, data / "val2017", (64, 64), person_boxes=path, min_box_score=0.5)


def test_the_torchscript_export_gives_the_models_heatmaps(trained, tmp_path):
    _, _, result = trained
    report = export_model(result.weights, tmp_path / "pose.torchscript.pt", "torchscript")
    assert report["matches"] and report["input_size"] == [64, 64]
    assert report["outputs"] == {"heatmaps": [1, 13, 16, 16]}
    _, model, _ = load_model_file(result.weights)
    images = torch.rand(2, 3, 64, 64) * 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((images / 255 - mean) / std)
        (got,) = torch.jit.load(str(tmp_path / "pose.torchscript.pt"))(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_the_commands_refuse_bad_settings_in_one_line(tiny):
    data, _, _ = tiny
    refused = run("fna_ext.train", "--task", "coco-keypoints", "--data", str(data), "--set", "data.input_size=[100, 64]")
    assert refused.returncode == 2 and refused.stderr.startswith("error:") and "multiples of 32" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    few = run("fna_ext.train", "--task", "coco-keypoints", "--data", str(data), "--set", "train.batch_size=4096")
    assert few.returncode == 2 and "people, fewer than one batch of 4096" in few.stderr, few.stderr


def test_the_onnx_export_runs_under_onnxruntime(trained, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    _, _, result = trained
    report = export_model(result.weights, tmp_path / "pose.onnx", "onnx")
    assert report["matches"] and report["outputs"] == {"heatmaps": [1, 13, 16, 16]}
