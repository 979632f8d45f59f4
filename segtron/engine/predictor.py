"""``DefaultPredictor``: a model built from a config, run on one image at a time.

Detectron2 path: ``detectron2.engine.defaults.DefaultPredictor`` (re-exported there).
"""

from typing import Any, Dict

import numpy as np
import torch

from segtron.checkpoint import DetectionCheckpointer
from segtron.config import CfgNode
from segtron.data import MetadataCatalog
from segtron.data import transforms as T
from segtron.modeling import build_model

__all__ = ["DefaultPredictor"]


class DefaultPredictor:
    """Run a model built from ``cfg`` on single images, as Detectron2's ``DefaultPredictor``.

    Builds ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE`` in eval mode, loads
    ``cfg.MODEL.WEIGHTS``, resizes each image to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``
    (ResizeShortestEdge) and returns the model's output for it, in the coordinates of the
    original image. ``metadata`` is that of ``DATASETS.TEST[0]`` when there is one.

    Example::

        predictor = DefaultPredictor(cfg)
        outputs = predictor(cv2.imread("input.jpg"))   # {"instances": Instances}
    """

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"DefaultPredictor supports INPUT.FORMAT 'BGR' or 'RGB', got "
                f"{self.input_format!r}."
            )

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """Predict on one image.

        Args:
            original_image: an (H, W, C) uint8 image in BGR order, as ``cv2.imread`` returns it
                (Detectron2's convention); it is flipped to RGB first when INPUT.FORMAT is RGB.

        Returns:
            the model's predictions for this image, e.g. ``{"instances": Instances}``.
        """
        if not isinstance(original_image, np.ndarray) or original_image.ndim != 3:
            raise ValueError(
                "DefaultPredictor expects one (H, W, C) numpy image, e.g. from cv2.imread; got "
                f"{type(original_image).__name__} of shape {getattr(original_image, 'shape', None)}."
            )
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = self.aug.get_transform(original_image).apply_image(original_image)
            image = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
            image = image.to(self.cfg.MODEL.DEVICE)
            inputs = {"image": image, "height": height, "width": width}
            return self.model([inputs])[0]
