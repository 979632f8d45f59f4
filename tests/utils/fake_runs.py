"""Fake training OUTPUT_DIRs (metrics.json, config.yaml, log.txt) for the run-analysis tests.

The files look like what ``train_net.py`` writes: one JSON line every 20 iterations with the
losses, ``lr`` and timings; evaluation results on the line of iteration 99 and, after training,
on a line of their own at ``max_iter``; validation losses on the same lines as the evaluation.
"""

import json
from pathlib import Path
from typing import Dict, List, Optional

from segtron.config import get_cfg

MAX_ITER = 200
PERIOD = 20
EVAL_ITERS = (99, MAX_ITER)
LOSS_NAMES = ("loss_cls", "loss_box_reg", "loss_mask")


def fake_records(base_lr: float, ap_offset: float = 0.0, with_f1max: bool = False) -> List[Dict]:
    """Metrics records of a 200-iteration run with two evaluations (``with_f1max``: also the
    operating point at max F1 of ``COCOEvaluator``: bbox/F1max 45, segm/F1max 40 at the end)."""
    records = []
    for itr in range(PERIOD - 1, MAX_ITER, PERIOD):
        progress = (itr + 1) / MAX_ITER
        decay = min(0.9, 30 * base_lr) * progress  # a larger LR learns faster here
        losses = {name: (0.8 - 0.3 * decay) / (i + 1) + 0.02 * ((itr // PERIOD) % 3)
                  for i, name in enumerate(LOSS_NAMES)}
        record = {"iteration": itr, "total_loss": sum(losses.values()), **losses,
                  "lr": base_lr * min(1.0, (itr + 1) / 100), "time": 0.5, "data_time": 0.01,
                  "eta_seconds": (MAX_ITER - itr - 1) * 0.5, "rpn/num_pos_anchors": 5.0,
                  "fast_rcnn/cls_accuracy": 0.9}
        records.append(record)
    for itr in EVAL_ITERS:
        scale = 0.5 if itr < MAX_ITER else 1.0
        results = {}
        for task, base in (("bbox", 30.0), ("segm", 25.0)):
            for name, extra in (("AP", 0), ("AP50", 20), ("AP75", 5), ("APs", -10), ("APm", 0),
                                ("APl", 8)):
                results[f"{task}/{name}"] = (base + extra + ap_offset) * scale
        results["segm/AP-circle"] = 40.0 * scale + ap_offset
        if with_f1max:
            for task, base in (("bbox", 45.0), ("segm", 40.0)):
                results[f"{task}/F1max"] = (base + ap_offset) * scale
                results[f"{task}/thresh@F1max"] = 0.5
        results["val_total_loss"] = 1.2 - 0.3 * scale
        results["val_loss_cls"] = 0.6 - 0.1 * scale
        if itr < MAX_ITER:
            records[[r["iteration"] for r in records].index(itr)].update(results)
        else:  # the evaluation after training: a line of its own
            records.append({"iteration": itr, **results})
    return records


def make_fake_run(directory: Path, base_lr: float = 0.01, batch_size_per_image: int = 512,
                  ap_offset: float = 0.0, truncated_last_line: bool = False,
                  log_time: Optional[str] = None, with_f1max: bool = False) -> Path:
    """Write a fake OUTPUT_DIR at ``directory`` and return it.

    Its config is the default one with ``SOLVER.BASE_LR``, ``MODEL.ROI_HEADS.
    BATCH_SIZE_PER_IMAGE`` and ``OUTPUT_DIR`` set; ``truncated_last_line`` appends half a
    record (a crash mid-write); ``log_time`` (e.g. ``"0:01:40"``) writes a log.txt with that
    total training time; ``with_f1max`` adds F1max results (see ``fake_records``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, sort_keys=True) for r in fake_records(base_lr, ap_offset, with_f1max)]
    text = "\n".join(lines) + "\n"
    if truncated_last_line:
        text += '{"data_time": 0.01, "iteration": 219, "loss_'
    (directory / "metrics.json").write_text(text)

    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = base_lr
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch_size_per_image
    cfg.OUTPUT_DIR = str(directory)
    (directory / "config.yaml").write_text(cfg.dump())

    if log_time is not None:
        (directory / "log.txt").write_text(
            "[11/22 00:41:19] segtron.engine.hooks INFO: Overall training speed: 197 iterations "
            f"in {log_time} (0.5000 s / it)\n"
            f"[11/22 00:41:19] segtron.engine.hooks INFO: Total training time: {log_time} "
            "(0:00:02 on hooks)\n"
        )
    return directory
