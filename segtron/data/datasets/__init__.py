"""Dataset loaders and builtin registrations.

Importing this package registers every builtin dataset name (COCO, LVIS, Cityscapes, Pascal
VOC, ADE20K, the synthetic ``shapes_train`` / ``shapes_val`` and their semantic / panoptic
variants ``shapes_sem_seg_*`` / ``shapes_panoptic_*``) lazily: nothing is read from disk until
``DatasetCatalog.get(name)``.
"""

from .coco import convert_to_coco_json, load_coco_json, load_sem_seg, register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from .pascal_voc import load_voc_instances, register_pascal_voc
from .shapes import register_shapes
from .shapes_panoptic import register_shapes_panoptic
from . import builtin as _builtin  # noqa: F401  (registers the builtin datasets)

register_shapes()
register_shapes_panoptic()

__all__ = [k for k in globals().keys() if not k.startswith("_")]
