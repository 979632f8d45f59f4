"""Find the configs shipped with segtron and the Detectron2 model-zoo weights trained with them.

Config paths are relative to the ``configs/`` directory, as in Detectron2
(``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``). They are found in the package
(``segtron/model_zoo/configs``, copied there by ``pip install``) or, in a source checkout, in the
repository's ``configs/``.
"""

import difflib
import logging
from pathlib import Path
from typing import List, Optional

from segtron.config import CfgNode, get_cfg

__all__ = ["get_checkpoint_url", "get_config_file", "get_config", "get", "list_configs"]

logger = logging.getLogger(__name__)

_PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _ModelZooUrls:
    """Detectron2's released model-zoo weights for the configs segtron ships."""

    S3_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"

    # config path without ".yaml" -> "<model id>/model_final_<hash>.pkl"
    CONFIG_PATH_TO_URL_SUFFIX = {
        "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
        "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": "137259246/model_final_9243eb.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "139514544/model_final_dbfeb4.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
    }

    @classmethod
    def query(cls, config_path: str) -> Optional[str]:
        """The weights URL for ``config_path``, or None if Detectron2 released none we list."""
        name = config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
        suffix = cls.CONFIG_PATH_TO_URL_SUFFIX.get(name)
        return None if suffix is None else f"{cls.S3_PREFIX}{name}/{suffix}"


def get_checkpoint_url(config_path: str) -> str:
    """Return the URL of the Detectron2 model-zoo weights trained with ``config_path``.

    Args:
        config_path: config path relative to ``configs/``, e.g.
            ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"``.

    Raises:
        RuntimeError: if no released weights are known for that config.
    """
    url = _ModelZooUrls.query(config_path)
    if url is None:
        known = ", ".join(f"{k}.yaml" for k in sorted(_ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX))
        raise RuntimeError(
            f"No pretrained model-zoo weights are known for '{config_path}'. Configs with "
            f"weights: {known}."
        )
    return url


def _config_roots() -> List[Path]:
    """Directories that hold shipped configs: the installed copy first, then the checkout's."""
    return [root for root in (_PACKAGE_CONFIGS, _SOURCE_CONFIGS) if root.is_dir()]


def list_configs() -> List[str]:
    """All shipped config paths (relative to ``configs/``, with ``/`` separators), sorted."""
    found = set()
    for root in _config_roots():
        found.update(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """Return the absolute path of a shipped config file.

    Args:
        config_path: path relative to ``configs/``, e.g.
            ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"``.

    Raises:
        RuntimeError: if no shipped config has that path; the message lists the closest ones.
    """
    for root in _config_roots():
        candidate = root / config_path
        if candidate.is_file():
            return str(candidate)
    available = list_configs()
    if not available:
        raise RuntimeError(
            f"'{config_path}' not available in the model zoo: no configs found in "
            f"{_PACKAGE_CONFIGS} or {_SOURCE_CONFIGS}. Reinstall segtron (pip install .) so the "
            "configs are shipped, or run from a source checkout."
        )
    closest = difflib.get_close_matches(config_path, available, n=5, cutoff=0.0)
    raise RuntimeError(
        f"'{config_path}' not available in the model zoo (paths are relative to configs/). "
        f"Closest available configs: {', '.join(closest)}."
    )


def get_config(config_path: str, trained: bool = False) -> CfgNode:
    """Return the config of a model-zoo model: ``get_cfg()`` merged with the shipped YAML.

    Args:
        config_path: path relative to ``configs/``.
        trained: set ``MODEL.WEIGHTS`` to the model-zoo weights trained with this config;
            otherwise it stays as the YAML says (usually an ImageNet backbone, with the rest
            of the model randomly initialised).
    """
    cfg_file = get_config_file(config_path)
    if not cfg_file.endswith(".yaml"):
        raise RuntimeError(
            f"{cfg_file}: only YAML configs are supported (LazyConfig .py files are not)."
        )
    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """Build a model-zoo model and load its weights (``MODEL.WEIGHTS``).

    Args:
        config_path: path relative to ``configs/``, e.g.
            ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"``.
        trained: load the model-zoo weights trained with this config (see ``get_config``).
        device: overrides ``MODEL.DEVICE``; defaults to "cpu" when CUDA is not available.

    Returns:
        The model (an ``nn.Module`` in training mode).
    """
    import torch

    from segtron.checkpoint import DetectionCheckpointer
    from segtron.modeling import build_model

    cfg = get_config(config_path, trained)
    if device is None and not torch.cuda.is_available():
        device = "cpu"
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model
