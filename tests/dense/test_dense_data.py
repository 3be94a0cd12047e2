"""Data loading for the dense tasks and its errors: each bad input gives one clear DataError line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dense_synthetic import SIZE, make_ade20k, make_coco
from PIL import Image

from dccnext_cli.dense import load_dense_recipe, train_dense
from dccnext_cli.dense.data import ADE20KSegmentation, CocoInstances, resolve_coco
from dccnext_cli.dense.tasks import get_dense_task
from dccnext_cli.errors import ConfigError, DataError, OutputExistsError


def test_coco_targets(coco_json):
    data = CocoInstances(coco_json)
    assert data.class_names == ["square", "triangle"] and len(data) == 4
    image, target = data[0]
    assert image.shape == (3, *SIZE) and 0.0 <= image.min() and image.max() <= 1.0
    assert target["labels"].tolist() == [1, 2]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([8.0, 8.0, 36.0, 30.0]))
    masks = target["masks"]
    assert masks.shape == (2, *SIZE) and masks.dtype == torch.uint8
    # the RLE-coded square and the polygon-coded triangle both decode inside their boxes
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert xs.min() >= 8 and xs.max() <= 36 and ys.min() >= 8 and ys.max() <= 30
    assert image[0][masks[0].bool()].mean() > 0.8  # the red square is where its mask says


def test_coco_training_flip_moves_boxes_and_masks(coco_json):
    data = CocoInstances(coco_json, train=True, hflip=1.0)
    image, target = data[0]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([80 - 36.0, 8.0, 80 - 8.0, 30.0]))
    assert image[0][target["masks"][0].bool()].mean() > 0.8


def test_resolve_standard_coco_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert resolve_coco(tmp_path, "val") == (tmp_path / "annotations" / "instances_val2017.json",
                                             tmp_path / "val2017")
    assert resolve_coco(tmp_path / "annotations" / "instances_val2017.json")[1] == tmp_path / "val2017"
    with pytest.raises(DataError, match="instances_train2017.json"):
        resolve_coco(tmp_path, "train")


def _edit(coco_json, tmp_path, change) -> str:
    data = json.loads(coco_json.read_text())
    change(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    for image in coco_json.parent.glob("*.png"):
        (tmp_path / image.name).write_bytes(image.read_bytes())
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("annotations"), "the top level lacks the key(s) annotations"),
    (lambda d: d["annotations"][1].pop("bbox"), "annotation #1 lacks the key(s) bbox"),
    (lambda d: d["images"][0].pop("height"), "an image entry lacks the key(s) height"),
    (lambda d: d.__setitem__("categories", []), "the category list is empty"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 99), "category_id 99, not in categories"),
])
def test_bad_coco_json(coco_json, tmp_path, change, message):
    path = _edit(coco_json, tmp_path, change)
    with pytest.raises(DataError) as err:
        get_dense_task("mask-rcnn").open_data(f"coco:{path}", train=True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_masks_of_the_wrong_size(coco_json, tmp_path):
    def shrink_rle(d):
        d["annotations"][0]["segmentation"]["size"] = [32, 40]

    data = CocoInstances(_edit(coco_json, tmp_path, shrink_rle))
    with pytest.raises(DataError, match="RLE mask is 40 wide, 32 high but the image is 80 wide, 64 high"):
        data[0]

    def wrong_image_size(d):
        d["images"][1]["height"] = 48

    data = CocoInstances(_edit(coco_json, tmp_path, wrong_image_size))
    with pytest.raises(DataError, match="img1.png is 64x80 but edited.json says 48x80"):
        data[1]


def test_bad_polygon(coco_json, tmp_path):
    data = CocoInstances(_edit(coco_json, tmp_path, lambda d: d["annotations"][1].__setitem__("segmentation",
                                                                                               [[1, 2, 3]])))
    with pytest.raises(DataError, match="even number"):
        data[0]


def test_ade20k_labels_and_augmentation(ade_root):
    data = ADE20KSegmentation(ade_root, "training", num_classes=5)
    image, label = data[0]
    assert image.shape[-2:] != label.shape  # eval: image resized into 2048x512, label at full size
    assert label.shape == SIZE and set(label.unique().tolist()) == {0, 3, 4, 255}  # 1->0, 4->3, 5->4, 0->255
    raw = np.array(Image.open(data.labels[0])).astype(np.int64)
    assert (label.numpy() == np.where(raw == 0, 255, raw - 1)).all()
    from dccnext_cli.dense.data import SegAugment

    train = ADE20KSegmentation(ade_root, "training", num_classes=5, train=True,
                               augment=SegAugment(crop_size=(48, 40), scale=(128, 64)))
    image, label = train[1]
    assert image.shape == (3, 48, 40) and label.shape == (48, 40)


def test_ade20k_bad_inputs(tmp_path):
    root = make_ade20k(tmp_path / "ade", num_images=2)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "annotations" / "training" / "ADE_0001.png")
    data = ADE20KSegmentation(root, num_classes=150)
    with pytest.raises(DataError, match="is 10x10 but its image is 64x80"):
        data[1]
    (root / "annotations" / "training" / "ADE_0001.png").unlink()
    with pytest.raises(DataError, match="ADE_0001.jpg has no label map"):
        ADE20KSegmentation(root)
    with pytest.raises(DataError, match="holds class 5, above the 4 classes"):
        (root / "images" / "training" / "ADE_0001.jpg").unlink()
        ADE20KSegmentation(root, num_classes=4)[0]
    with pytest.raises(DataError, match="needs images/validation/"):
        ADE20KSegmentation(tmp_path, "validation")


def test_wrong_source_for_the_task(coco_json, ade_root):
    with pytest.raises(DataError, match="semantic-fpn reads ade20k:PATH, not coco:"):
        get_dense_task("semantic-fpn").open_data(f"coco:{coco_json}", train=True)
    with pytest.raises(DataError, match="is not coco:PATH or ade20k:PATH"):
        get_dense_task("retinanet").open_data(str(coco_json), train=True)


def test_recipes_and_output_guard(tmp_path, coco_json):
    seg = load_dense_recipe("semantic-fpn")
    assert (seg.lr, seg.iterations, seg.batch_size, seg.poly_power, seg.crop_size) == (1e-4, 40000, 32, 0.9,
                                                                                       (512, 512))
    det = load_dense_recipe("mask-rcnn")
    assert (det.epochs, det.iterations, det.schedule, det.step_epochs) == (12, None, "step", (8, 11))
    with pytest.raises(ConfigError, match="unknown key"):
        load_dense_recipe("retinanet", ["learning_rate=1"])
    with pytest.raises(ConfigError, match="no dense recipe 'yolo'"):
        load_dense_recipe("yolo")
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "summary.json").write_text("{}")  # a run's file: the folder holds a run
    with pytest.raises(OutputExistsError, match=r"already holds a run \(summary.json\)"):
        train_dense(det, f"coco:{coco_json}", out, progress=False)
    assert (out / "keep.txt").read_text() == "mine" and (out / "summary.json").read_text() == "{}"


def test_lr_schedules():
    from dccnext_cli.dense.train import lr_factor

    seg = load_dense_recipe("semantic-fpn")
    assert lr_factor(0, 40000, seg, 100) == 1.0
    assert lr_factor(20000, 40000, seg, 100) == pytest.approx(0.5 ** 0.9)
    det = load_dense_recipe("retinanet")
    assert lr_factor(0, 1200, det, 100) == pytest.approx(1e-3)
    assert lr_factor(250, 1200, det, 100) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_factor(799, 1200, det, 100) == 1.0 and lr_factor(800, 1200, det, 100) == pytest.approx(0.1)
    assert lr_factor(1100, 1200, det, 100) == pytest.approx(0.01)


def test_make_coco_without_rle(tmp_path):
    data = CocoInstances(make_coco(tmp_path, num_images=1, rle_first=False))
    assert data[0][1]["masks"].sum() > 0
