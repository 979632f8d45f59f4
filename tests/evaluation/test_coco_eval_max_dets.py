"""COCOevalMaxDets and COCOEvaluator(max_dets_per_image=...) on a case computed by hand.

One 610 x 510 image holds 120 ground-truth boxes of 40 x 40 (area 1600: COCO "medium") on a
12 x 10 grid, and 120 detections equal to them with distinct scores. Every detection is a true
positive at every IoU threshold, so precision is 1 as far as the kept detections reach:

* at most 100 detections (COCO's summary): recall 100/120; the 84 recall points 0.00..0.83 get
  precision 1, the others 0: AP = 84/101;
* at most 150 (``COCOevalMaxDets`` with maxDets [1, 10, 150]): recall 1, AP = 1;
* AR with 1, 10 and 150 detections: 1/120, 10/120, 1.
"""

import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segtron.data.catalog import MetadataCatalog
from segtron.evaluation import COCOEvaluator
from segtron.evaluation.coco_evaluation import COCOevalMaxDets
from segtron.structures import Boxes, Instances

GRID_BOXES = [[50 * c + 5, 50 * r + 5, 40, 40] for r in range(10) for c in range(12)]
SCORES = [1.0 - 0.005 * i for i in range(len(GRID_BOXES))]


def _gt_dict():
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 1600,
             "iscrowd": 0} for i, b in enumerate(GRID_BOXES)]
    return {"images": [{"id": 1, "width": 610, "height": 510}], "annotations": anns,
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "other"}]}


def _evaluate(eval_cls, max_dets):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = COCO()
        coco_gt.dataset = _gt_dict()
        coco_gt.createIndex()
        results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s}
                   for b, s in zip(GRID_BOXES, SCORES)]
        coco_eval = eval_cls(coco_gt, coco_gt.loadRes(results), "bbox")
        coco_eval.params.maxDets = max_dets
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval, out.getvalue()


def test_summary_uses_the_custom_limit():
    coco_eval, printed = _evaluate(COCOevalMaxDets, [1, 10, 150])
    expected = [1, 1, 1, -1, 1, -1, 1 / 120, 10 / 120, 1, -1, 1, -1]
    assert coco_eval.stats.tolist() == pytest.approx(expected)
    assert "maxDets=150 ] = 1.000" in printed


def test_default_limit_gives_cocos_numbers():
    ours, _ = _evaluate(COCOevalMaxDets, [1, 10, 100])
    coco, _ = _evaluate(COCOeval, [1, 10, 100])
    assert ours.stats[0] == pytest.approx(84 / 101)
    assert ours.stats.tolist() == pytest.approx(coco.stats.tolist())
    # COCO's own summary looks maxDets=100 up by value: with 150 it has no AP (-1).
    coco_150, _ = _evaluate(COCOeval, [1, 10, 150])
    assert coco_150.stats[0] == -1


def test_summarize_needs_accumulate_and_three_limits():
    coco_eval = COCOevalMaxDets(iouType="bbox")
    with pytest.raises(ValueError, match="accumulate"):
        coco_eval.summarize()
    with pytest.raises(ValueError, match="fewer than 3"):
        _evaluate(COCOevalMaxDets, [1, 150])


@pytest.mark.parametrize("use_fast_impl", [False, True])
@pytest.mark.parametrize("max_dets, ap", [(None, 100 * 84 / 101), (150, 100.0)])
def test_coco_evaluator_max_dets_per_image(tmp_path, use_fast_impl, max_dets, ap):
    gt_file = tmp_path / "grid.json"
    gt_file.write_text(json.dumps(_gt_dict()))
    name = f"grid_max_dets_{use_fast_impl}_{max_dets}"
    MetadataCatalog.get(name).set(json_file=str(gt_file), thing_classes=["square", "other"],
                                  thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    try:
        evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False,
                                  use_fast_impl=use_fast_impl, max_dets_per_image=max_dets)
        inst = Instances((510, 610))
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in GRID_BOXES]
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32))
        inst.scores = torch.tensor(SCORES)
        inst.pred_classes = torch.zeros(len(SCORES), dtype=torch.int64)
        evaluator.process([{"image_id": 1}], [{"instances": inst}])
        res = evaluator.evaluate()["bbox"]
    finally:
        MetadataCatalog.remove(name)
    assert res["AP"] == pytest.approx(ap)
    assert res["AP50"] == pytest.approx(ap) and res["APm"] == pytest.approx(ap)
    assert res["AP-square"] == pytest.approx(ap)
