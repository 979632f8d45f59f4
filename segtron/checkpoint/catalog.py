"""``catalog://`` paths: Detectron's ImageNet backbones and Caffe2 Detectron baselines by name.

``catalog://ImageNetPretrained/MSRA/R-50`` resolves to the MSRA ResNet-50 ``.pkl`` on
Detectron's public storage; ``catalog://Caffe2Detectron/COCO/<id>/<name>`` to a Detectron (v1)
COCO baseline. Importing this module registers ``ModelCatalogHandler`` in ``PathManager``.
"""

import logging
from typing import Any, Dict, List

from segtron.utils.file_io import PathHandler, PathManager

__all__ = ["ModelCatalog", "ModelCatalogHandler"]

logger = logging.getLogger(__name__)


class ModelCatalog:
    """Names of third-party (Caffe2 Detectron) models and the URLs that hold them.

    The MSRA ResNets were trained with the stride on the first 1x1 conv
    (``MODEL.RESNETS.STRIDE_IN_1X1 True``), the FAIR ones on the 3x3 conv. All these BN models
    have their BN folded into an affine transform, so load them into FrozenBN only; they expect
    BGR input with ``PIXEL_STD`` of 1.
    """

    S3_C2_DETECTRON_PREFIX = "https://dl.fbaipublicfiles.com/detectron"

    # name (after "ImageNetPretrained/") -> path under S3_C2_DETECTRON_PREFIX
    C2_IMAGENET_MODELS: Dict[str, str] = {
        "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "FAIR/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
        "FAIR/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
        "FAIR/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
        "FAIR/X-101-64x4d": "ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl",
        "FAIR/X-152-32x8d-IN5k": "ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl",
    }

    C2_DETECTRON_PATH_FORMAT = "{prefix}/{url}/output/train/{dataset}/{type}/model_final.pkl"
    C2_DATASET_COCO = "coco_2014_train%3Acoco_2014_valminusminival"
    C2_DATASET_COCO_KEYPOINTS = "keypoints_coco_2014_train%3Akeypoints_coco_2014_valminusminival"

    # name (after "Caffe2Detectron/COCO/") -> run directory under S3_C2_DETECTRON_PREFIX
    C2_DETECTRON_MODELS: Dict[str, str] = {
        "35857197/e2e_faster_rcnn_R-50-C4_1x": "35857197/12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml.01_33_49.iAX0mXvW",  # noqa: E501
        "35857345/e2e_faster_rcnn_R-50-FPN_1x": "35857345/12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml.01_36_30.cUF7QR7I",  # noqa: E501
        "35857890/e2e_faster_rcnn_R-101-FPN_1x": "35857890/12_2017_baselines/e2e_faster_rcnn_R-101-FPN_1x.yaml.01_38_50.sNxI7sX7",  # noqa: E501
        "36761737/e2e_faster_rcnn_X-101-32x8d-FPN_1x": "36761737/12_2017_baselines/e2e_faster_rcnn_X-101-32x8d-FPN_1x.yaml.06_31_39.5MIHi1fZ",  # noqa: E501
        "35858791/e2e_mask_rcnn_R-50-C4_1x": "35858791/12_2017_baselines/e2e_mask_rcnn_R-50-C4_1x.yaml.01_45_57.ZgkA7hPB",  # noqa: E501
        "35858933/e2e_mask_rcnn_R-50-FPN_1x": "35858933/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml.01_48_14.DzEQe4wC",  # noqa: E501
        "35861795/e2e_mask_rcnn_R-101-FPN_1x": "35861795/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_1x.yaml.02_31_37.KqyEK4tT",  # noqa: E501
        "36761843/e2e_mask_rcnn_X-101-32x8d-FPN_1x": "36761843/12_2017_baselines/e2e_mask_rcnn_X-101-32x8d-FPN_1x.yaml.06_35_59.RZotkLKI",  # noqa: E501
        "48616381/e2e_mask_rcnn_R-50-FPN_2x_gn": "GN/48616381/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn_0416.13_23_38.bTlTI97Q",  # noqa: E501
        "37697547/e2e_keypoint_rcnn_R-50-FPN_1x": "37697547/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml.08_42_54.kdzV35ao",  # noqa: E501
        "35998355/rpn_R-50-C4_1x": "35998355/12_2017_baselines/rpn_R-50-C4_1x.yaml.08_00_43.njH5oD9L",  # noqa: E501
        "35998814/rpn_R-50-FPN_1x": "35998814/12_2017_baselines/rpn_R-50-FPN_1x.yaml.08_06_03.Axg0r179",  # noqa: E501
        "36225147/fast_R-50-FPN_1x": "36225147/12_2017_baselines/fast_rcnn_R-50-FPN_1x.yaml.08_39_09.L3obSdQ2",  # noqa: E501
    }

    @staticmethod
    def get(name: str) -> str:
        """Return the URL of catalog entry ``name``.

        Args:
            name: ``ImageNetPretrained/<key of C2_IMAGENET_MODELS>`` or
                ``Caffe2Detectron/COCO/<key of C2_DETECTRON_MODELS>``.

        Raises:
            RuntimeError: if ``name`` is not in the catalog (the message lists valid names).
        """
        if name.startswith("ImageNetPretrained/"):
            key = name[len("ImageNetPretrained/") :]
            if key in ModelCatalog.C2_IMAGENET_MODELS:
                return "/".join([ModelCatalog.S3_C2_DETECTRON_PREFIX, ModelCatalog.C2_IMAGENET_MODELS[key]])
        elif name.startswith("Caffe2Detectron/COCO/"):
            key = name[len("Caffe2Detectron/COCO/") :]
            if key in ModelCatalog.C2_DETECTRON_MODELS:
                return ModelCatalog._c2_detectron_url(key)
        raise RuntimeError(
            f"Model '{name}' is not in the catalog. Valid names: "
            + ", ".join(ModelCatalog.names())
        )

    @staticmethod
    def names() -> List[str]:
        """All catalog names, as accepted by ``get`` (and after ``catalog://``)."""
        return [f"ImageNetPretrained/{k}" for k in ModelCatalog.C2_IMAGENET_MODELS] + [
            f"Caffe2Detectron/COCO/{k}" for k in ModelCatalog.C2_DETECTRON_MODELS
        ]

    @staticmethod
    def _c2_detectron_url(key: str) -> str:
        if "keypoint_rcnn" in key:
            dataset = ModelCatalog.C2_DATASET_COCO_KEYPOINTS
        else:
            dataset = ModelCatalog.C2_DATASET_COCO
        # The C4 RPN-only baseline was stored under "rpn", every other run under its model type.
        model_type = "rpn" if key == "35998355/rpn_R-50-C4_1x" else "generalized_rcnn"
        return ModelCatalog.C2_DETECTRON_PATH_FORMAT.format(
            prefix=ModelCatalog.S3_C2_DETECTRON_PREFIX,
            url=ModelCatalog.C2_DETECTRON_MODELS[key],
            dataset=dataset,
            type=model_type,
        )


class ModelCatalogHandler(PathHandler):
    """Resolve ``catalog://<name>`` through ``ModelCatalog.get`` to an https URL.

    Downloading and caching are then done by the HTTP handler of ``PathManager``.
    """

    PREFIX = "catalog://"

    def _get_supported_prefixes(self) -> List[str]:
        return [self.PREFIX]

    def to_url(self, path: str) -> str:
        """Return the URL that ``catalog://<name>`` stands for (no network access)."""
        return ModelCatalog.get(path[len(self.PREFIX) :])

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        url = self.to_url(path)
        logger.info("Catalog entry %s points to %s", path, url)
        return PathManager.get_local_path(url, **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


if ModelCatalogHandler.PREFIX not in PathManager._path_handlers:
    PathManager.register_handler(ModelCatalogHandler())
