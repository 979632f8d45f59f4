"""The bad-input corpus of tests/reliability, written at test time (no binary files in git).

Every case is a tiny COCO-format dataset under a temporary directory: a json file plus 48 x 64
images (a light square and a dark triangle on grey), built from one valid dataset with one
thing broken. ``CASES`` maps a case name to its builder; a builder returns a ``Corpus`` that
records where the problem is (``bad_file``, ``bad_ids``) so the tests can check that the error
or the log line points at it.

``tiny_training_cfg`` and ``train_iterations`` run a few iterations of the tiny Mask R-CNN of
``configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml`` on such a dataset, on the CPU.
"""

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

H, W = 48, 64
SQUARE = (8, 10, 20, 16)  # XYWH
TRIANGLE = (36, 12, 20, 24)
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "triangle"}]

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"


# ----------------------------------------------------------------------------- pieces


def triangle_polygon(bbox: Sequence[float] = TRIANGLE) -> List[float]:
    """A triangle filling ``bbox`` (XYWH): apex at the top middle."""
    x, y, w, h = bbox
    return [x + w / 2, y, x + w, y + h, x, y + h]


def square_polygon(bbox: Sequence[float] = SQUARE) -> List[float]:
    """The rectangle ``bbox`` (XYWH) as a polygon."""
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def draw_image(height: int = H, width: int = W) -> np.ndarray:
    """BGR uint8 picture of the two objects of ``valid_data`` (same place in every image)."""
    image = np.full((height, width, 3), 96, dtype=np.uint8)
    x, y, w, h = SQUARE
    image[y : y + h, x : x + w] = 220
    tri = np.asarray(triangle_polygon(), dtype=np.int32).reshape(-1, 2)
    cv2.fillPoly(image, [tri], (20, 40, 60))
    return image


def write_image(path: Path, image: Optional[np.ndarray] = None) -> None:
    """Write ``image`` (default ``draw_image()``) as PNG or JPEG, by the file name's ending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), draw_image() if image is None else image)


def image_entry(image_id: int, file_name: str, height: int = H, width: int = W) -> dict:
    """One entry of the json's ``images``."""
    return {"id": image_id, "file_name": file_name, "height": height, "width": width}


def annotation(ann_id: int, image_id: int, category_id: int, bbox: Sequence[float],
               segmentation: Any) -> dict:
    """One entry of the json's ``annotations`` (area from the box)."""
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "segmentation": segmentation, "area": float(bbox[2] * bbox[3]), "iscrowd": 0}


def valid_data(num_images: int = 2, ext: str = "png") -> Dict[str, Any]:
    """A correct COCO dict: ``num_images`` images, each with a square (id 10i+1, polygon) and
    a triangle (id 10i+2, polygon)."""
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append(image_entry(i, f"img{i}.{ext}"))
        anns.append(annotation(10 * i + 1, i, 1, SQUARE, [square_polygon()]))
        anns.append(annotation(10 * i + 2, i, 2, TRIANGLE, [triangle_polygon()]))
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


@dataclass
class Corpus:
    """A written case: its json, image root, the data written, and what is wrong with it."""

    json_file: str
    image_root: str
    data: Dict[str, Any]
    bad_file: Optional[str] = None  # the offending file, when there is one
    bad_ids: List[Any] = field(default_factory=list)  # the offending ids, when there are any

    def path(self, file_name: str) -> str:
        """Absolute path of image ``file_name``."""
        return str(Path(self.image_root) / file_name)


def write_corpus(root: Path, data: Dict[str, Any], *, json_text: Optional[str] = None,
                 skip_images: Sequence[str] = ()) -> Corpus:
    """Write the images of ``data`` (but ``skip_images``) under ``root/images`` and the json
    (``json_text`` verbatim when given) at ``root/annotations.json``."""
    image_root = root / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    for im in data.get("images", []):
        if im["file_name"] not in skip_images:
            write_image(image_root / im["file_name"])
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps(data) if json_text is None else json_text)
    return Corpus(str(json_file), str(image_root), data)


# ----------------------------------------------------------------------------- cases


def _set_bbox(data: Dict[str, Any], ann_id: int, bbox: Sequence[float]) -> None:
    for ann in data["annotations"]:
        if ann["id"] == ann_id:
            ann["bbox"] = list(bbox)


def truncated_jpeg(root: Path) -> Corpus:
    corpus = write_corpus(root, valid_data(ext="jpg"))
    path = Path(corpus.path("img2.jpg"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    corpus.bad_file = str(path)
    return corpus


def empty_jpeg(root: Path) -> Corpus:
    corpus = write_corpus(root, valid_data(ext="jpg"))
    Path(corpus.path("img1.jpg")).write_bytes(b"")
    corpus.bad_file = corpus.path("img1.jpg")
    return corpus


def missing_image(root: Path) -> Corpus:
    corpus = write_corpus(root, valid_data(), skip_images=["img2.png"])
    corpus.bad_file = corpus.path("img2.png")
    return corpus


def wrong_size_in_json(root: Path) -> Corpus:
    data = valid_data()
    data["images"][1]["height"] = H + 8
    corpus = write_corpus(root, data)
    corpus.bad_file = corpus.path("img2.png")
    return corpus


def malformed_json(root: Path) -> Corpus:
    data = valid_data()
    text = json.dumps(data)
    return write_corpus(root, data, json_text=text[: len(text) // 2])


def unknown_category(root: Path) -> Corpus:
    data = valid_data()
    data["annotations"][3]["category_id"] = 7
    corpus = write_corpus(root, data)
    corpus.bad_ids = [data["annotations"][3]["id"], 7]
    return corpus


def duplicate_annotation_id(root: Path) -> Corpus:
    data = valid_data()
    data["annotations"][3]["id"] = data["annotations"][0]["id"]
    corpus = write_corpus(root, data)
    corpus.bad_ids = [data["annotations"][0]["id"]]
    return corpus


def duplicate_image_id(root: Path) -> Corpus:
    data = valid_data()
    data["images"][1]["id"] = 1
    corpus = write_corpus(root, data)
    corpus.bad_ids = [1]
    return corpus


def zero_width_box(root: Path) -> Corpus:
    data = valid_data()
    _set_bbox(data, 12, (36, 12, 0, 24))
    corpus = write_corpus(root, data)
    corpus.bad_ids = [12]
    return corpus


def non_finite_boxes(root: Path) -> Corpus:
    data = valid_data()
    _set_bbox(data, 11, (float("nan"), 10, 20, 16))
    _set_bbox(data, 22, (36, 12, float("inf"), 24))
    corpus = write_corpus(root, data)
    corpus.bad_ids = [11, 22]
    return corpus


def short_polygon(root: Path) -> Corpus:
    data = valid_data()
    data["annotations"][1]["segmentation"] = [[36.0, 12.0, 56.0, 36.0]]  # two points
    corpus = write_corpus(root, data)
    corpus.bad_ids = [data["annotations"][1]["id"]]
    return corpus


def polygon_outside_image(root: Path) -> Corpus:
    data = valid_data()
    data["annotations"][2]["segmentation"] = [square_polygon((W + 4, 10, 20, 16))]
    corpus = write_corpus(root, data)
    corpus.bad_ids = [data["annotations"][2]["id"]]
    return corpus


def rle_and_polygon(root: Path) -> Corpus:
    """The triangles as compressed RLE (image 1) and uncompressed RLE (image 2); the squares
    stay polygons. A correct dataset: polygons and RLE may be mixed."""
    data = valid_data()
    mask = np.zeros((H, W), dtype=np.uint8)
    cv2.fillPoly(mask, [np.asarray(triangle_polygon(), dtype=np.int32).reshape(-1, 2)], 1)
    rle = mask_util.encode(np.asfortranarray(mask))
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    data["annotations"][1]["segmentation"] = {"size": [H, W],
                                              "counts": rle["counts"].decode("ascii")}
    data["annotations"][3]["segmentation"] = {"size": [H, W], "counts": runs}
    return write_corpus(root, data)


def no_images(root: Path) -> Corpus:
    return write_corpus(root, {"images": [], "annotations": [], "categories": CATEGORIES})


def no_annotations(root: Path) -> Corpus:
    data = valid_data()
    data["annotations"] = []
    return write_corpus(root, data)


def sixteen_bit_png(root: Path) -> Corpus:
    """Image 1 is a 16-bit grayscale PNG: the picture in the high byte, the column index in
    the low byte."""
    corpus = write_corpus(root, valid_data())
    gray = cv2.cvtColor(draw_image(), cv2.COLOR_BGR2GRAY).astype(np.uint16)
    deep = (gray << 8) | np.arange(W, dtype=np.uint16)[None, :]
    assert cv2.imwrite(corpus.path("img1.png"), deep)
    corpus.bad_file = corpus.path("img1.png")
    return corpus


def rgba_png(root: Path) -> Corpus:
    """Image 2 is an RGBA PNG, fully transparent on its left half."""
    corpus = write_corpus(root, valid_data())
    rgb = draw_image()[:, :, ::-1]
    alpha = np.full((H, W, 1), 255, dtype=np.uint8)
    alpha[:, : W // 2] = 0
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(
        corpus.path("img2.png"))
    corpus.bad_file = corpus.path("img2.png")
    return corpus


CASES: Dict[str, Callable[[Path], Corpus]] = {
    f.__name__: f
    for f in (
        truncated_jpeg, empty_jpeg, missing_image, wrong_size_in_json, malformed_json,
        unknown_category, duplicate_annotation_id, duplicate_image_id, zero_width_box,
        non_finite_boxes, short_polygon, polygon_outside_image, rle_and_polygon, no_images,
        no_annotations, sixteen_bit_png, rgba_png,
    )
}


def build(case: str, root: Path) -> Corpus:
    """Write case ``case`` under ``root``."""
    return CASES[case](root)


# ----------------------------------------------------------------------------- training


def tiny_training_cfg(dataset_name: str, *overrides: Any):
    """The tiny Mask R-CNN config on ``dataset_name`` at 48-64 px, 2 classes, 2 images per
    batch, plus ``overrides`` (KEY, VALUE, ...)."""
    from segtron.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (dataset_name,), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (48,), "INPUT.MAX_SIZE_TRAIN", 64,
        "MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 2,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
        "SOLVER.WARMUP_ITERS", 0, "SEED", 1, *overrides,
    ])
    return cfg


def train_iterations(cfg, iterations: int = 5) -> List[float]:
    """Train ``cfg``'s model for ``iterations`` steps; return the total loss of each step."""
    from segtron.data import build_detection_train_loader
    from segtron.engine import SimpleTrainer
    from segtron.modeling import build_model
    from segtron.solver import build_optimizer

    model = build_model(cfg)
    loader = build_detection_train_loader(cfg)
    trainer = SimpleTrainer(model, loader, build_optimizer(cfg, model))
    trainer.train(0, iterations)
    return [v for v, _ in trainer.storage.history("total_loss").values()]
