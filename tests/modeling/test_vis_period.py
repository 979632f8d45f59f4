"""VIS_PERIOD: GeneralizedRCNN's training picture (ground truth left, top proposals right), the
mask head's prediction | target pictures, and both reaching a TensorBoard event file.

Detectron2 names the R-CNN picture "Left: GT bounding boxes;  Right: Predicted proposals"
(two spaces after the semicolon) and draws the first image of the batch with at most 20
proposals; the mask head's are "Left: mask prediction;   Right: mask GT (<k>)".
"""

import os
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from segtron.data.datasets.shapes import register_shapes_instances
from segtron.engine import HookBase, PeriodicWriter, SimpleTrainer
from segtron.modeling import build_model
from segtron.modeling.meta_arch import GeneralizedRCNN
from segtron.solver import build_optimizer
from segtron.structures import Boxes, Instances
from segtron.utils.colormap import colormap
from segtron.utils.event_writers import TensorboardXWriter
from segtron.utils.events import EventStorage
from tests.conftest import REPO_ROOT
from tests.modeling.test_rcnn import MEAN, STD, _RecordingROIHeads, _TinyBackbone

RCNN_TITLE = "Left: GT bounding boxes;  Right: Predicted proposals"
MASK_TITLE = "Left: mask prediction;   Right: mask GT"
TINY_CONFIG = REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"

# An RGB background at least 63 away (in one channel) from every palette colour a box may be
# drawn in, so a box edge drawn at opacity 0.5 changes its pixels by 31 or more.
BACKGROUND_RGB = (0, 128, 64)
H, W = 64, 96
GT_BOX = (8.0, 8.0, 40.0, 30.0)
TOP_PROPOSAL = (50.0, 20.0, 90.0, 60.0)  # the 20 highest-scoring proposals
LOW_PROPOSAL = (4.0, 40.0, 30.0, 60.0)  # ranked 21st and below: not drawn


class _FixedProposals(nn.Module):
    """A proposal generator returning 25 proposals per image, sorted by objectness: 20 copies
    of TOP_PROPOSAL, then 5 of LOW_PROPOSAL."""

    def forward(self, images, features, gt_instances=None):
        proposals = []
        for size in images.image_sizes:
            inst = Instances(size)
            inst.proposal_boxes = Boxes(torch.tensor([TOP_PROPOSAL] * 20 + [LOW_PROPOSAL] * 5))
            inst.objectness_logits = torch.linspace(5.0, -5.0, 25)
            proposals.append(inst)
        return proposals, {}


def _rcnn(vis_period):
    return GeneralizedRCNN(
        backbone=_TinyBackbone(), proposal_generator=_FixedProposals(),
        roi_heads=_RecordingROIHeads(), pixel_mean=MEAN, pixel_std=STD, input_format="BGR",
        vis_period=vis_period,
    ).train()


def _bgr_batch():
    """Two images in BGR order, the first uniformly BACKGROUND_RGB, with one GT box each."""
    first = torch.tensor(BACKGROUND_RGB[::-1], dtype=torch.uint8).view(3, 1, 1).expand(3, H, W)
    batch = []
    for image in (first.clone(), torch.zeros(3, 48, 48, dtype=torch.uint8)):
        gt = Instances(tuple(image.shape[1:]))
        gt.gt_boxes = Boxes(torch.tensor([GT_BOX]))
        gt.gt_classes = torch.zeros(1, dtype=torch.int64)
        batch.append({"image": image, "instances": gt})
    return batch


def _changed(picture, x, y):
    """Largest channel change at pixel (x, y) of an HxWx3 picture from BACKGROUND_RGB."""
    return int(np.abs(picture[y, x].astype(int) - np.array(BACKGROUND_RGB)).max())


def test_background_is_far_from_every_box_colour():
    palette = colormap(rgb=True, maximum=255)
    assert np.abs(palette - np.array(BACKGROUND_RGB)).max(axis=1).min() >= 63


def test_rcnn_picture_has_gt_left_and_top_20_proposals_right():
    with EventStorage(start_iter=0) as storage:
        _rcnn(vis_period=1)(_bgr_batch())
        (name, picture, iteration), = storage.vis_data
    assert (name, iteration) == (RCNN_TITLE, 0)
    assert picture.dtype == torch.uint8 and tuple(picture.shape) == (3, H, 2 * W)
    picture = picture.permute(1, 2, 0).numpy()
    left, right = picture[:, :W], picture[:, W:]

    def edge_points(box):  # the middle of the top and left edges
        x0, y0, x1, y1 = (int(v) for v in box)
        return [((x0 + x1) // 2, y0), (x0, (y0 + y1) // 2)]

    for x, y in edge_points(GT_BOX):
        assert _changed(left, x, y) > 15 and _changed(right, x, y) == 0
    for x, y in edge_points(TOP_PROPOSAL):
        assert _changed(left, x, y) == 0 and _changed(right, x, y) > 15
    for x, y in edge_points(LOW_PROPOSAL):
        assert _changed(left, x, y) == 0 and _changed(right, x, y) == 0
    # Away from every box, both halves show the image in RGB (the input was BGR).
    assert _changed(left, 45, 5) == 0 and _changed(right, 45, 5) == 0


def test_rcnn_picture_only_every_vis_period_iterations():
    model = _rcnn(vis_period=3)
    with EventStorage(start_iter=0) as storage:
        for iteration in range(7):
            storage.iter = iteration
            model(_bgr_batch())
        assert [step for _, _, step in storage.vis_data] == [0, 3, 6]


def test_rcnn_without_vis_period_puts_no_picture():
    with EventStorage(start_iter=0) as storage:
        _rcnn(vis_period=0)(_bgr_batch())
        assert storage.vis_data == []


# ----------------------------------------------------------------------------- tiny training


class _RecordingLoader:
    """Wraps a training loader; keeps the size of each batch's first image."""

    def __init__(self, loader):
        self._loader = loader
        self.first_image_sizes = []

    def __iter__(self):
        for batch in self._loader:
            self.first_image_sizes.append(tuple(batch[0]["image"].shape[1:]))
            yield batch


class _RecordImages(HookBase):
    """Copies (name, shape, iteration) of the queued images after each step, before the
    PeriodicWriter (registered after it) writes and drops them."""

    def __init__(self):
        self.seen = []

    def after_step(self):
        self.seen += [(n, tuple(img.shape), it) for n, img, it in self.trainer.storage.vis_data]


@pytest.fixture
def tiny_shapes(tmp_path):
    name = f"vis_period_shapes_{uuid.uuid4().hex[:8]}"
    register_shapes_instances(name, str(tmp_path / "shapes"), "train", 4, 0, image_size=64)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_mask_rcnn_training_writes_pictures_to_tensorboard(tiny_shapes, tmp_path,
                                                                one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(["VIS_PERIOD", "1", "DATASETS.TRAIN", f"('{tiny_shapes}',)",
                         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                         "SEED", "0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    loader = _RecordingLoader(build_detection_train_loader(cfg))
    trainer = SimpleTrainer(model, loader, build_optimizer(cfg, model))
    recorder = _RecordImages()
    log_dir = str(tmp_path / "tb")
    trainer.register_hooks([recorder, PeriodicWriter([TensorboardXWriter(log_dir)], period=1)])
    trainer.train(0, 2)

    for iteration, (height, width) in enumerate(loader.first_image_sizes[:2]):
        rcnn = [shape for name, shape, it in recorder.seen
                if name == RCNN_TITLE and it == iteration]
        assert rcnn == [(3, height, 2 * width)]
        masks = [shape for name, shape, it in recorder.seen
                 if name.startswith(MASK_TITLE) and it == iteration]
        # One picture per foreground ROI: the 28x28 prediction next to its 28x28 target.
        assert masks and set(masks) == {(3, 28, 56)}

    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    assert RCNN_TITLE in events.Tags()["images"]
    written = events.Images(RCNN_TITLE)
    assert [e.step for e in written] == [0, 1]
    for event, (height, width) in zip(written, loader.first_image_sizes):
        assert (event.height, event.width) == (height, 2 * width)
    assert any(tag.startswith(MASK_TITLE) for tag in events.Tags()["images"])
    assert os.listdir(log_dir) and not trainer.storage.vis_data  # written, then dropped
