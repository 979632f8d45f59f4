"""Visualizer, GenericMask and the colour palette: pixels change where things are drawn, only
there, at the requested size."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from segtron.data import Metadata
from segtron.data.datasets.coco import load_coco_json
from segtron.data.datasets.shapes import SHAPES_CLASSES, generate_shapes_dataset
from segtron.data.detection_utils import read_image
from segtron.structures import BitMasks, Boxes, Instances, PolygonMasks
from segtron.utils.colormap import colormap, random_color, random_colors
from segtron.utils.visualizer import ColorMode, GenericMask, VisImage, Visualizer
from segtron.utils.visualizer_utils import _create_text_labels

# pycocotools 2.0.x under numpy 2 warns on every mask call; not this module's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 120, 160
GREY = 128


@pytest.fixture(autouse=True)
def _seed_numpy():
    np.random.seed(0)  # instance colours are random palette picks


def _grey_image():
    return np.full((H, W, 3), GREY, dtype=np.uint8)


def _two_instances():
    """A 40x50 rectangle (class 0) and a radius-25 disc (class 1), with their boxes."""
    masks = np.zeros((2, H, W), dtype=bool)
    masks[0, 20:60, 20:70] = True
    yy, xx = np.mgrid[:H, :W]
    masks[1] = (yy - 80) ** 2 + (xx - 110) ** 2 < 25 ** 2
    boxes = torch.tensor([[20.0, 20.0, 70.0, 60.0], [85.0, 55.0, 135.0, 105.0]])
    return masks, boxes


def _predictions(masks, boxes):
    return Instances((H, W), pred_boxes=Boxes(boxes), scores=torch.tensor([0.97, 0.6]),
                     pred_classes=torch.tensor([1, 0]), pred_masks=torch.from_numpy(masks))


def _changed(a, b, tol=6):
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2) > tol


def _meta(**kwargs):
    return Metadata(name="test_vis", **kwargs)


# ----------------------------------------------------------------------------- colormap


def test_colormap_palette():
    rgb = colormap(rgb=True, maximum=1)
    assert rgb.shape == (74, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0], [0.000, 0.447, 0.741], atol=1e-6)
    np.testing.assert_allclose(rgb[1], [0.850, 0.325, 0.098], atol=1e-6)
    np.testing.assert_allclose(colormap()[0], rgb[0][::-1] * 255, rtol=1e-6)  # BGR, 0..255
    c = random_color(rgb=True, maximum=1)
    assert any(np.allclose(c, row) for row in rgb)
    picked = random_colors(20, rgb=True, maximum=1)
    assert len({tuple(x) for x in picked}) == 20
    assert len(random_colors(100)) == 100  # more than the palette: reused
    with pytest.raises(ValueError, match="maximum"):
        colormap(maximum=10)


# ----------------------------------------------------------------------------- instances


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_draw_instance_predictions_two_instances(scale):
    masks, boxes = _two_instances()
    meta = _meta(thing_classes=["square", "circle"])
    out = Visualizer(_grey_image(), meta, scale=scale).draw_instance_predictions(
        _predictions(masks, boxes)).get_image()
    assert out.shape == (int(H * scale), int(W * scale), 3) and out.dtype == np.uint8
    # Compare at input resolution (nearest pixel of the output).
    small = out[(np.arange(H) * scale + scale / 2).astype(int)][:, (np.arange(W) * scale
                                                                     + scale / 2).astype(int)]
    changed = _changed(small, _grey_image())
    for m in masks:
        assert changed[m].mean() > 0.95  # blended colour inside every mask
    # Nothing drawn outside the boxes (plus their outline) and the labels at their top-left
    # corners, or below them for boxes under 40 * scale pixels high ("circle 97%" and
    # "square 60%" are about 65 x 14 input pixels).
    allowed = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in boxes.int().tolist():
        allowed[y0 - 3:y1 + 3, x0 - 3:x1 + 3] = True
        allowed[y0 - 3:y0 + 18, x0 - 3:x0 + 75] = True
        allowed[y1 - 3:y1 + 18, x0 - 3:x0 + 75] = True
    assert not changed[~allowed].any()


def test_overlay_blends_assigned_colour_with_alpha():
    masks, _ = _two_instances()
    out = Visualizer(_grey_image()).overlay_instances(
        masks=[masks[0]], assigned_colors=[(1.0, 0.0, 0.0)], alpha=0.5).get_image()
    inside = out[30:50, 30:60].reshape(-1, 3).astype(float)
    np.testing.assert_allclose(inside.mean(0), [0.5 * 255 + 0.5 * GREY, 0.5 * GREY, 0.5 * GREY],
                               atol=2)
    outside = np.ones((H, W), dtype=bool)
    outside[18:62, 18:72] = False  # the mask and its 1-point outline
    assert (out[outside] == GREY).all()


def test_labels_text_and_placement():
    assert _create_text_labels([0, 1], [0.97, 0.5], ["circle", "square"]) == [
        "circle 97%", "square 50%"]
    assert _create_text_labels([1], None, None, is_crowd=[1]) == ["1|crowd"]
    assert _create_text_labels(None, [0.25], None) == ["25%"]
    assert _create_text_labels(None, None, None) is None
    with pytest.raises(IndexError, match="thing_classes"):
        _create_text_labels([3], None, ["a"])

    # A large box gets its label (dark background) inside its top-left corner.
    box = np.array([[20.0, 10.0, 150.0, 110.0]])
    plain = Visualizer(_grey_image()).overlay_instances(
        boxes=box, assigned_colors=["g"]).get_image()
    labelled = Visualizer(_grey_image()).overlay_instances(
        boxes=box, labels=["circle 97%"], assigned_colors=["g"]).get_image()
    ys, xs = np.nonzero(_changed(labelled, plain))
    assert ys.min() >= 9 and ys.max() < 35 and xs.min() >= 19 and xs.max() < 110
    assert (labelled[ys, xs].max(axis=1) < 60).mean() > 0.3  # mostly the dark label background


def test_segmentation_mode_uses_thing_colors():
    masks, boxes = _two_instances()
    meta = _meta(thing_classes=["square", "circle"], thing_colors=[[0, 0, 255], [255, 0, 0]])
    out = Visualizer(_grey_image(), meta, instance_mode=ColorMode.SEGMENTATION)\
        .draw_instance_predictions(_predictions(masks, boxes)).get_image().astype(int)
    circle = out[70:90, 100:120].reshape(-1, 3).mean(0)  # class 0 -> blue
    square = out[35:50, 30:60].reshape(-1, 3).mean(0)  # class 1 -> red
    assert circle[2] > circle[0] + 50 and circle[2] > circle[1] + 50
    assert square[0] > square[1] + 50 and square[0] > square[2] + 50


def test_image_bw_mode_greys_out_background():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    masks, boxes = _two_instances()
    out = Visualizer(img, instance_mode=ColorMode.IMAGE_BW).draw_instance_predictions(
        Instances((H, W), pred_masks=torch.from_numpy(masks))).get_image().astype(int)
    background = ~masks.any(0)
    background[np.abs(np.mgrid[:H, :W][0] - 80) < 30] = False  # away from the disc's edge
    background[:65, :75] = False
    spread = out[background].max(1) - out[background].min(1)
    assert spread.max() <= 1  # grey
    inside = out[30:50, 30:60].reshape(-1, 3)
    assert (inside.max(1) - inside.min(1)).mean() > 20  # still coloured


@pytest.mark.parametrize("kind", ["bitmasks", "polygons", "rle", "numpy", "boxes_only"])
def test_draw_instance_predictions_mask_formats(kind):
    masks, boxes = _two_instances()
    inst = Instances((H, W), pred_boxes=Boxes(boxes), pred_classes=torch.tensor([0, 1]))
    if kind == "bitmasks":
        inst.pred_masks = BitMasks(torch.from_numpy(masks))
    elif kind == "polygons":
        inst.pred_masks = PolygonMasks([[[20, 20, 70, 20, 70, 60, 20, 60]],
                                        [GenericMask(masks[1], H, W).polygons[0]]])
    elif kind == "rle":
        inst.pred_masks = [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                           for m in masks]
    elif kind == "numpy":
        inst.pred_masks = masks.astype(np.uint8)
    out = Visualizer(_grey_image()).draw_instance_predictions(inst).get_image()
    changed = _changed(out, _grey_image())
    assert out.shape == (H, W, 3)
    if kind == "boxes_only":
        assert not changed[35:45, 35:55].any()  # box outline only, no fill
        assert changed[20, 30:60].mean() > 0.8
    else:
        assert changed[masks[1]].mean() > 0.95 and changed[30:50, 30:60].mean() > 0.95


def test_errors_name_the_problem():
    masks, boxes = _two_instances()
    with pytest.raises(ValueError, match="does not match the image"):
        Visualizer(np.zeros((60, 80, 3), np.uint8)).draw_instance_predictions(
            _predictions(masks, boxes))
    with pytest.raises(ValueError, match="RGB image"):
        Visualizer(np.zeros((3, H, W), np.uint8).transpose(0, 2, 1)[:, :, :2])
    with pytest.raises(ValueError, match="one entry per instance"):
        Visualizer(_grey_image()).overlay_instances(boxes=boxes, labels=["only one"])


# ----------------------------------------------------------------------------- datasets


def test_draw_dataset_dict_on_shapes(tmp_path):
    json_file = generate_shapes_dataset(str(tmp_path), "tiny", 2, seed=3, image_size=64,
                                        num_workers=0)
    dicts = load_coco_json(json_file, str(tmp_path / "tiny"))
    meta = _meta(thing_classes=list(SHAPES_CLASSES))
    for dic in dicts:
        dic = dict(dic, annotations=[dict(a, category_id=a["category_id"] - 1)
                                     for a in dic["annotations"]])  # json ids 1..5 -> 0..4
        img = read_image(dic["file_name"], "RGB")
        out = Visualizer(img, meta).draw_dataset_dict(dic).get_image()
        assert out.shape == img.shape
        changed = _changed(out, img, tol=3)
        for ann in dic["annotations"]:
            segm = ann["segmentation"]
            rle = (mask_util.merge(mask_util.frPyObjects(segm, *img.shape[:2]))
                   if isinstance(segm, list) else segm)
            m = mask_util.decode(rle).astype(bool)
            assert changed[m].mean() > 0.8


def test_draw_dataset_dict_sem_seg_file(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[60:] = 1
    labels[:5, :5] = 255  # ignored
    path = tmp_path / "seg.png"
    Image.fromarray(labels).save(path)
    meta = _meta(stuff_classes=["sky", "grass"], stuff_colors=[[0, 0, 255], [0, 255, 0]])
    out = Visualizer(_grey_image(), meta).draw_dataset_dict(
        {"sem_seg_file_name": str(path)}).get_image().astype(int)
    assert out[100, 20, 1] > out[100, 20, 0] + 60  # grass green
    assert out[30, 120, 2] > out[30, 120, 0] + 60  # sky blue
    assert (out[1, 1] == GREY).all()


def test_draw_sem_seg_colours_threshold_and_ignore():
    seg = np.zeros((H, W), np.int64)
    seg[60:] = 1
    seg[100:104, 150:154] = 2  # 16 pixels: below the area threshold
    seg[:6, :6] = 255
    meta = _meta(stuff_classes=["a", "b", "c"],
                 stuff_colors=[[255, 0, 0], [0, 0, 255], [0, 255, 0]])
    out = Visualizer(_grey_image(), meta).draw_sem_seg(seg, area_threshold=50).get_image()
    expected_a = 0.2 * GREY + 0.8 * np.array([255, 0, 0])
    np.testing.assert_allclose(out[5:20, 10:40].reshape(-1, 3).mean(0), expected_a, atol=3)
    assert out[80, 60, 2] > 200  # "b" is blue
    assert (out[101:103, 151:153] == GREY).all()  # tiny "c" not drawn (a hole of "b")
    assert (out[1:4, 1:4] == GREY).all()  # 255 never drawn
    # Without stuff_classes every id but the ignore label is drawn, named by number.
    out2 = Visualizer(_grey_image()).draw_sem_seg(seg).get_image()
    assert _changed(out2, _grey_image())[10:50, 20:150].mean() > 0.9
    assert (out2[1:4, 1:4] == GREY).all()


def test_draw_panoptic_seg():
    pan = torch.zeros((H, W), dtype=torch.int32)
    pan[60:] = 1
    masks, _ = _two_instances()
    pan[torch.from_numpy(masks[1])] = 2
    info = [{"id": 1, "category_id": 0, "isthing": False},
            {"id": 2, "category_id": 0, "isthing": True, "score": 0.9}]
    meta = _meta(stuff_classes=["grass"], thing_classes=["circle"])
    out = Visualizer(_grey_image(), meta).draw_panoptic_seg(pan, info).get_image()
    changed = _changed(out, _grey_image())
    assert changed[masks[1]].mean() > 0.95 and changed[100:, :50].mean() > 0.9
    assert not changed[:50, 100:].any()  # id 0 has no segment info: not drawn


def test_keypoints_and_rotated_boxes():
    kps = np.array([[[40.0, 40.0, 2.0], [100.0, 90.0, 0.0]]])  # the second is not labelled
    out = Visualizer(_grey_image()).overlay_instances(keypoints=kps).get_image().astype(int)
    assert out[40, 40, 0] > 200 and out[40, 40, 1] < 60  # red dot
    assert (out[90, 100] == GREY).all()
    rot = Visualizer(_grey_image()).overlay_instances(
        boxes=np.array([[80.0, 60.0, 60.0, 30.0, 30.0]]), labels=["r"]).get_image()
    changed = _changed(rot, _grey_image())
    assert changed.any() and not changed[:20].any()


# ----------------------------------------------------------------------------- GenericMask


def test_generic_mask_polygon_mask_round_trip():
    polygon = [np.array([20, 20, 120, 30, 100, 100, 30, 90], dtype=np.float64)]
    gm = GenericMask(polygon, H, W)
    mask = gm.mask
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and gm.area() == mask.sum() > 5000
    assert not gm.has_holes
    back = GenericMask(mask, H, W)
    assert not back.has_holes and len(back.polygons) == 1
    again = GenericMask(back.polygons, H, W).mask
    iou = (again & mask).sum() / (again | mask).sum()
    assert iou > 0.97
    np.testing.assert_allclose(gm.bbox(), [20, 20, 120, 100], atol=1)

    # RLE in its three spellings decodes to the same mask.
    rle = mask_util.encode(np.asfortranarray(mask))
    as_str = dict(rle, counts=rle["counts"].decode("ascii"))
    uncompressed = {"size": [H, W], "counts": _uncompressed_counts(mask)}
    for r in (rle, as_str, uncompressed):
        np.testing.assert_array_equal(GenericMask(r, H, W).mask, mask)


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_generic_mask_holes_empty_and_errors():
    ring = np.zeros((H, W), np.uint8)
    ring[20:80, 20:80] = 1
    ring[40:60, 40:60] = 0
    gm = GenericMask(torch.from_numpy(ring), H, W)
    assert gm.has_holes and len(gm.polygons) == 2 and gm.area() == 3600 - 400
    empty = GenericMask(np.zeros((H, W), bool), H, W)
    assert empty.polygons == [] and empty.area() == 0 and not empty.bbox().any()
    with pytest.raises(ValueError, match="does not match"):
        GenericMask(np.zeros((10, 10)), H, W)
    with pytest.raises(ValueError, match="does not match"):
        GenericMask({"size": [10, 10], "counts": b""}, H, W)
    with pytest.raises(ValueError, match="even length"):
        GenericMask([[1, 2, 3, 4, 5, 6, 7]], H, W)
    with pytest.raises(TypeError, match="GenericMask"):
        GenericMask(3.0, H, W)


# ----------------------------------------------------------------------------- primitives


def test_primitives_and_vis_image(tmp_path):
    vis = Visualizer(torch.full((H, W), GREY, dtype=torch.uint8))  # grey HxW tensor accepted
    assert vis.draw_line([10, 150], [10, 10], color="r") is vis.get_output()
    vis.draw_circle((30, 60), color="b", radius=5)
    vis.draw_box((60, 40, 100, 80), edge_color="g")
    vis.draw_polygon(np.array([[120, 90], [150, 90], [135, 115]]), color="y", alpha=0.9)
    vis.draw_text("hello", (80, 100))
    vis.draw_binary_mask(np.pad(np.ones((10, 10)), ((100, H - 110), (5, W - 15))), color="m",
                         text="m")
    vis.draw_soft_mask(np.pad(np.full((10, 10), 0.8), ((5, H - 15), (140, W - 150))))
    out = vis.get_output().get_image()
    changed = _changed(out, _grey_image())
    for y, x in [(10, 80), (60, 30), (40, 80), (100, 135), (105, 10), (10, 145)]:
        assert changed[y, x], (y, x)
    assert not changed[60:75, 110:150].any()

    path = tmp_path / "vis.png"
    vis.get_output().save(str(path))
    with Image.open(path) as im:
        assert im.size == (W, H) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), out)
    with pytest.raises(ValueError, match=".png"):
        vis.get_output().save(str(tmp_path / "vis.unknown"))
    assert VisImage(_grey_image(), scale=0.5).get_image().shape == (H // 2, W // 2, 3)


# ----------------------------------------------------------------------------- video


def test_video_visualizer_keeps_colours_across_frames():
    from segtron.utils.video_visualizer import VideoVisualizer

    masks, boxes = _two_instances()
    video = VideoVisualizer(_meta(thing_classes=["square", "circle"]))

    def colours(shift):
        inst = Instances((H, W), pred_boxes=Boxes(boxes + shift),
                         pred_classes=torch.tensor([0, 1]), scores=torch.tensor([0.9, 0.8]),
                         pred_masks=torch.from_numpy(np.roll(masks, shift, axis=2)))
        out = video.draw_instance_predictions(_grey_image(), inst).get_image()
        assert out.shape == (H, W, 3)
        return [tuple(c) for c in (d.color for d in video._old_instances[:2])]

    first = colours(0)
    assert colours(3) == first  # moved a little: same objects, same colours
    assert video.draw_instance_predictions(_grey_image(), Instances((H, W))).get_image().shape \
        == (H, W, 3)
