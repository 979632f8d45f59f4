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

from segtron.config import CfgNode, LazyConfig, get_cfg

__all__ = ["get_checkpoint_url", "get_config_file", "get_config", "get", "list_configs"]

logger = logging.getLogger(__name__)

_PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
_SOURCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _ModelZooUrls:
    """Detectron2's released model-zoo weights, by the config they were trained with."""

    S3_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"

    # config path without ".yaml" / ".py" -> "<model id>/model_final_<hash>.pkl": every config
    # of Detectron2's model zoo that has released weights (YAML configs, and the LazyConfig
    # new_baselines/*.py models).
    CONFIG_PATH_TO_URL_SUFFIX = {
        # COCO detection: Faster R-CNN
        "COCO-Detection/faster_rcnn_R_50_C4_1x": "137257644/model_final_721ade.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_1x": "137847829/model_final_51d356.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
        "COCO-Detection/faster_rcnn_R_50_C4_3x": "137849393/model_final_f97cb7.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_3x": "137849425/model_final_68d202.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
        "COCO-Detection/faster_rcnn_R_101_C4_3x": "138204752/model_final_298dad.pkl",
        "COCO-Detection/faster_rcnn_R_101_DC5_3x": "138204841/model_final_3e0943.pkl",
        "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
        "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": "139173657/model_final_68b088.pkl",
        # COCO detection: RetinaNet
        "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
        "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
        "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
        # COCO detection: RPN alone, and Fast R-CNN on its proposals
        "COCO-Detection/rpn_R_50_C4_1x": "137258005/model_final_450694.pkl",
        "COCO-Detection/rpn_R_50_FPN_1x": "137258492/model_final_02ce48.pkl",
        "COCO-Detection/fast_rcnn_R_50_FPN_1x": "137635226/model_final_e5f7ce.pkl",
        # COCO instance segmentation: Mask R-CNN
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": "137259246/model_final_9243eb.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x": "137260150/model_final_4f86c3.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": "137849525/model_final_4ce675.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x": "137849551/model_final_84107b.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": "138363239/model_final_a2914c.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x": "138363294/model_final_0464b7.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": "138205316/model_final_a3ec72.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x": "139653917/model_final_2d9806.pkl",  # noqa: E501
        # COCO instance segmentation: new baselines (LazyConfig .py files), trained from scratch
        # with large-scale jitter and long schedules
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ": "42047764/model_final_bb69de.pkl",
        "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ": "42047638/model_final_89a8d3.pkl",
        "new_baselines/mask_rcnn_R_50_FPN_400ep_LSJ": "42019571/model_final_14d201.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ": "42025812/model_final_4f7b58.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_200ep_LSJ": "42131867/model_final_0bb7ae.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ": "42073830/model_final_f96b26.pkl",
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ": "42047771/model_final_b7fbab.pkl",  # noqa: E501
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_200ep_LSJ": "42132721/model_final_5d87c1.pkl",  # noqa: E501
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_400ep_LSJ": "42025447/model_final_f1362d.pkl",  # noqa: E501
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ": "42047784/model_final_6ba57e.pkl",  # noqa: E501
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_200ep_LSJ": "42047642/model_final_27b9c1.pkl",  # noqa: E501
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ": "42045954/model_final_ef3a80.pkl",  # noqa: E501
        # COCO person keypoints: Keypoint R-CNN
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": "138363331/model_final_997cc7.pkl",
        "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x": "139686956/model_final_5ad38f.pkl",
        # COCO panoptic segmentation: Panoptic FPN
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "139514544/model_final_dbfeb4.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x": "139514569/model_final_c10459.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x": "139514519/model_final_cafdb1.pkl",
        # LVIS v0.5 instance segmentation: Mask R-CNN (Detectron2 released none for LVIS v1)
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "144219072/model_final_571f7c.pkl",  # noqa: E501
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": "144219035/model_final_824ab5.pkl",  # noqa: E501
        "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x": "144219108/model_final_5e3439.pkl",  # noqa: E501
        # Cityscapes and Pascal VOC
        "Cityscapes/mask_rcnn_R_50_FPN": "142423278/model_final_af9cf5.pkl",
        "PascalVOC-Detection/faster_rcnn_R_50_C4": "142202221/model_final_b1acc2.pkl",
        # Other settings: deformable convs, Cascade R-CNN, normalizations, training from scratch
        "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5": "138602867/model_final_65c703.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5": "144998336/model_final_821d0b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_1x": "138602847/model_final_e9d89b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_syncbn": "169527823/model_final_3b3c51.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_gn": "138602888/model_final_dc5d9e.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": "138602908/model_final_01ca85.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": "183808979/model_final_da7b4c.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": "184226666/model_final_5ce33e.pkl",
        "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": "139797668/model_final_be35db.pkl",
        "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": "18131413/model_0039999_e76410.pkl",  # noqa: E501
        # Detectron1 comparisons
        "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x": "137781054/model_final_7ab50c.pkl",  # noqa: E501
        "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x": "137781281/model_final_62ca52.pkl",  # noqa: E501
        "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x": "137781195/model_final_cce136.pkl",
    }

    # Configs whose Detectron2 release is a LazyConfig (.py) file; all others are YAML files.
    PY_CONFIG_PREFIXES = ("new_baselines/",)

    @classmethod
    def query(cls, config_path: str) -> Optional[str]:
        """The weights URL for ``config_path`` (``.yaml``, ``.py`` or no extension), or None if
        Detectron2 released none we list. A model's YAML and ``.py`` twins share its weights."""
        name = _strip_config_ext(config_path)
        suffix = cls.CONFIG_PATH_TO_URL_SUFFIX.get(name)
        return None if suffix is None else f"{cls.S3_PREFIX}{name}/{suffix}"

    @classmethod
    def config_files(cls) -> List[str]:
        """The config files (relative to ``configs/``, with extension) that have weights."""
        return [f"{name}.py" if name.startswith(cls.PY_CONFIG_PREFIXES) else f"{name}.yaml"
                for name in sorted(cls.CONFIG_PATH_TO_URL_SUFFIX)]


def _strip_config_ext(config_path: str) -> str:
    """``config_path`` without a trailing ``.yaml`` or ``.py``."""
    for ext in (".yaml", ".py"):
        if config_path.endswith(ext):
            return config_path[: -len(ext)]
    return config_path


def get_checkpoint_url(config_path: str) -> str:
    """Return the URL of the Detectron2 model-zoo weights trained with ``config_path``.

    Args:
        config_path: config path relative to ``configs/``, e.g.
            ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"`` or
            ``"new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"``; a YAML config and its
            ``.py`` twin share the weights.

    Raises:
        RuntimeError: if no released weights are known for that config.
    """
    url = _ModelZooUrls.query(config_path)
    if url is None:
        with_weights = _ModelZooUrls.config_files()
        closest = difflib.get_close_matches(config_path, with_weights, n=5, cutoff=0.0)
        raise RuntimeError(
            f"No pretrained model-zoo weights are known for '{config_path}'. Detectron2 released "
            f"weights for {len(with_weights)} configs (none for the base configs, common/, "
            f"quick_schedules or LVISv1); the closest: {', '.join(closest)}."
        )
    return url


def _config_roots() -> List[Path]:
    """Directories that hold shipped configs: the installed copy first, then the checkout's."""
    return [root for root in (_PACKAGE_CONFIGS, _SOURCE_CONFIGS) if root.is_dir()]


def list_configs() -> List[str]:
    """All shipped config paths (relative to ``configs/``, with ``/`` separators), sorted."""
    found = set()
    for root in _config_roots():
        for pattern in ("*.yaml", "*.py"):
            found.update(p.relative_to(root).as_posix() for p in root.rglob(pattern))
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


def get_config(config_path: str, trained: bool = False):
    """Return the config of a model-zoo model.

    A ``.yaml`` path gives ``get_cfg()`` merged with the shipped YAML (a ``CfgNode``); a ``.py``
    path gives ``LazyConfig.load`` of the shipped Python config (a ``DictConfig``).

    Args:
        config_path: path relative to ``configs/``.
        trained: use the model-zoo weights trained with this config (``MODEL.WEIGHTS``, or
            ``train.init_checkpoint`` of a .py config); otherwise the weights stay as the config
            says (usually an ImageNet backbone, with the rest of the model randomly initialised).
    """
    cfg_file = get_config_file(config_path)
    if cfg_file.endswith(".py"):
        return _get_lazy_config(cfg_file, config_path, trained)
    if not cfg_file.endswith(".yaml"):
        raise RuntimeError(f"{cfg_file}: model-zoo configs are .yaml or .py files.")
    cfg: CfgNode = get_cfg()
    cfg.merge_from_file(cfg_file)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


def _get_lazy_config(cfg_file: str, config_path: str, trained: bool):
    """A shipped .py config, with ``train.init_checkpoint`` set to its weights if ``trained``."""
    cfg = LazyConfig.load(cfg_file)
    if trained:
        url = get_checkpoint_url(config_path)
        if "train" not in cfg or "init_checkpoint" not in cfg.train:
            raise ValueError(f"{cfg_file} has no train.init_checkpoint to set the trained "
                             "weights on; set it yourself to get_checkpoint_url(path).")
        cfg.train.init_checkpoint = url
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """Build a model-zoo model and load its weights (``MODEL.WEIGHTS``; for a .py config,
    ``instantiate(cfg.model)`` with ``train.init_checkpoint``).

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
    if not isinstance(cfg, CfgNode):  # a LazyConfig
        from segtron.config import instantiate

        model = instantiate(cfg.model)
        if device is not None:
            model = model.to(device)
        if "train" in cfg and "init_checkpoint" in cfg.train:
            DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return model
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model
