"""COCO API back-ends for ``COCOEvaluator`` (``detectron2.evaluation.fast_eval_api``).

Detectron2 ships ``COCOeval_opt``, a C++ re-implementation of pycocotools' ``evaluateImg`` and
``accumulate``. segtron gets the same from the ``faster-coco-eval`` package: its ``COCO`` and
``COCOeval_faster`` are drop-in, pycocotools-compatible classes (``params``, ``eval``,
``stats``) with the per-image matching and accumulation in C++. They need their own ``COCO``
objects (ground truth and results), so each back-end here pairs a ``COCO`` class with its
``COCOeval`` class:

* ``get_coco_backend(fast)`` -> ``(COCO class, COCOeval class, name)``; the fast one falls back to
  pycocotools when faster-coco-eval is not installed;
* ``load_coco_api(json_file, fast)`` reads a ground-truth file with the chosen back-end;
* ``run_coco_eval`` runs evaluate/accumulate/summarize with the summary lines in the log, and
  supports a maximum number of detections other than 100: faster-coco-eval's summarize knows
  it; with pycocotools it uses ``COCOevalMaxDets`` (Detectron2's class, re-exported by
  ``coco_evaluation``), whose summarize reports AP at ``maxDets[2]`` instead of a fixed 100.
"""

import contextlib
import io
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = [
    "COCOevalMaxDets",
    "COCOeval_opt",
    "FAST_COCO_EVAL_AVAILABLE",
    "get_coco_backend",
    "is_fast_coco",
    "load_coco_api",
    "run_coco_eval",
    "summarize_detection_stats",
]

logger = logging.getLogger(__name__)

try:
    from faster_coco_eval import COCO as _FastCOCO
    from faster_coco_eval import COCOeval_faster as COCOeval_opt

    FAST_COCO_EVAL_AVAILABLE = True
except ImportError:  # pragma: no cover - faster-coco-eval is a declared dependency
    _FastCOCO = None
    COCOeval_opt = None
    FAST_COCO_EVAL_AVAILABLE = False


def get_coco_backend(fast: bool) -> Tuple[type, type, str]:
    """Return ``(COCO class, COCOeval class, description)`` of the requested back-end.

    ``fast=True`` gives faster-coco-eval's classes when the package is importable, else (with
    an info line) pycocotools'; ``fast=False`` always gives pycocotools'.
    """
    if fast and FAST_COCO_EVAL_AVAILABLE:
        return _FastCOCO, COCOeval_opt, "faster-coco-eval"
    if fast:
        logger.info(
            "faster-coco-eval is not installed; falling back to the official pycocotools COCO "
            "evaluation (pip install faster-coco-eval for the fast path)."
        )
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval, "pycocotools"


def is_fast_coco(coco_api) -> bool:
    """True when ``coco_api`` is a faster-coco-eval ``COCO`` (else a pycocotools one)."""
    return _FastCOCO is not None and isinstance(coco_api, _FastCOCO)


def load_coco_api(json_file: str, fast: bool):
    """Read COCO json ``json_file`` into the ``COCO`` class of the chosen back-end.

    pycocotools' progress prints are kept off stdout.
    """
    coco_cls, _, _ = get_coco_backend(fast)
    with contextlib.redirect_stdout(io.StringIO()):
        if coco_cls is _FastCOCO and _FastCOCO is not None:
            return coco_cls(json_file, print_function=logger.debug)
        return coco_cls(json_file)


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCO marks 'no ground truth' with -1); -1 when none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize_detection_stats(coco_eval, max_det_index: Optional[int] = None) -> np.ndarray:
    """The 12 bbox/segm summary numbers of an accumulated COCOeval, for any ``maxDets``.

    Same layout and definitions as pycocotools' ``summarize`` (AP, AP50, AP75, APs, APm, APl,
    AR@maxDets[0..2], ARs, ARm, ARl), except that the AP and area entries use the entry
    ``max_det_index`` (default: the last) of ``params.maxDets`` instead of a fixed 100 -- what
    Detectron2's ``COCOevalMaxDets`` does for limits such as 300 detections per image.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    recall = coco_eval.eval["recall"]  # [T, K, A, M]
    iou_thrs = np.asarray(params.iouThrs)
    labels = list(params.areaRngLbl)
    last = len(params.maxDets) - 1 if max_det_index is None else max_det_index

    def ap(iou: Optional[float] = None, area: str = "all") -> float:
        values = precision[..., labels.index(area), last]
        if iou is not None:
            values = values[np.where(np.isclose(iou_thrs, iou))[0]]
        return _mean_valid(values)

    def ar(max_det_index: int = last, area: str = "all") -> float:
        return _mean_valid(recall[..., labels.index(area), max_det_index])

    return np.array(
        [
            ap(),
            ap(iou=0.5),
            ap(iou=0.75),
            ap(area="small"),
            ap(area="medium"),
            ap(area="large"),
            ar(0),
            ar(1),
            ar(2),
            ar(area="small"),
            ar(area="medium"),
            ar(area="large"),
        ]
    )


class COCOevalMaxDets(COCOeval):
    """pycocotools' ``COCOeval`` whose summary uses the custom detection limit (Detectron2's).

    COCO's ``summarize`` reports AP at ``maxDets=100`` only; this one reports AP, AP50, AP75,
    APs/m/l and ARs/m/l at ``params.maxDets[2]`` (e.g. 300 for LVIS-style
    ``COCOEvaluator(max_dets_per_image=300)``) and AR at ``maxDets[0..2]``. ``evaluate`` sorts
    ``maxDets`` first. Keypoints keep COCO's summary (20 detections).
    """

    def summarize(self) -> None:
        """Set ``self.stats`` (12 fractions, -1 where undefined) and print COCO's summary lines.

        Raises:
            ValueError: before ``accumulate()``, or with fewer than 3 ``params.maxDets``.
        """
        if not self.eval:
            raise ValueError(
                "COCOevalMaxDets.summarize: nothing accumulated; call evaluate() and "
                "accumulate() first."
            )
        if self.params.iouType == "keypoints":
            super().summarize()
            return
        max_dets = list(self.params.maxDets)
        if len(max_dets) < 3:
            raise ValueError(
                f"COCOevalMaxDets: params.maxDets={max_dets} has fewer than 3 limits; set 3, "
                "e.g. [1, 10, 300]."
            )
        self.stats = summarize_detection_stats(self, max_det_index=2)
        print(_format_stats(self.stats, max_dets[:3]))


def _log_lines(text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            logger.info(line.rstrip())


def run_coco_eval(
    coco_gt,
    coco_dt,
    iou_type: str,
    *,
    fast: bool,
    max_dets: Sequence[int] = (1, 10, 100),
    img_ids: Optional[List[int]] = None,
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
):
    """Evaluate results ``coco_dt`` against ``coco_gt`` and return the summarized COCOeval.

    Args:
        coco_gt / coco_dt: ``COCO`` objects of the back-end chosen by ``fast`` (``coco_dt`` from
            ``coco_gt.loadRes``).
        iou_type: "bbox", "segm" or "keypoints".
        fast: faster-coco-eval (when installed) or pycocotools.
        max_dets: the three detection limits (bbox/segm only; keypoints keep COCO's 20).
        img_ids: evaluate these images only (default: all of ``coco_gt``).
        kpt_oks_sigmas: per-keypoint OKS sigmas overriding COCO's person sigmas.

    Returns:
        The COCOeval object after evaluate/accumulate/summarize: ``stats`` holds the summary
        numbers (fractions, -1 where undefined) and ``eval["precision"]`` the PR arrays. The
        library's summary printout goes to this module's logger.
    """
    _, eval_cls, _ = get_coco_backend(fast)
    max_dets = [int(m) for m in max_dets]
    # COCOeval sorts maxDets; pycocotools' summarize only knows a largest limit of 100.
    if eval_cls is not COCOeval_opt and iou_type != "keypoints" and max(max_dets) != 100:
        eval_cls = COCOevalMaxDets
    kwargs: dict = {}
    if eval_cls is COCOeval_opt and COCOeval_opt is not None:
        kwargs["print_function"] = logger.info
    coco_eval = eval_cls(coco_gt, coco_dt, iou_type, **kwargs)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if kpt_oks_sigmas:
        coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas, dtype=np.float64)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = max_dets

    # pycocotools prints its progress and summary on stdout: route them to the log.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    _log_lines(captured.getvalue())
    return coco_eval


def _format_stats(stats: np.ndarray, max_dets: Sequence[int]) -> str:
    """Text of the 12 summary numbers in pycocotools' layout (for the log)."""
    rows: List[Tuple[str, str, str, int]] = [
        ("Average Precision  (AP)", "0.50:0.95", "all", max_dets[-1]),
        ("Average Precision  (AP)", "0.50", "all", max_dets[-1]),
        ("Average Precision  (AP)", "0.75", "all", max_dets[-1]),
        ("Average Precision  (AP)", "0.50:0.95", "small", max_dets[-1]),
        ("Average Precision  (AP)", "0.50:0.95", "medium", max_dets[-1]),
        ("Average Precision  (AP)", "0.50:0.95", "large", max_dets[-1]),
        ("Average Recall     (AR)", "0.50:0.95", "all", max_dets[0]),
        ("Average Recall     (AR)", "0.50:0.95", "all", max_dets[1]),
        ("Average Recall     (AR)", "0.50:0.95", "all", max_dets[2]),
        ("Average Recall     (AR)", "0.50:0.95", "small", max_dets[-1]),
        ("Average Recall     (AR)", "0.50:0.95", "medium", max_dets[-1]),
        ("Average Recall     (AR)", "0.50:0.95", "large", max_dets[-1]),
    ]
    return "\n".join(
        f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={md:>3d} ] = {value:0.3f}"
        for (title, iou, area, md), value in zip(rows, stats)
    )

