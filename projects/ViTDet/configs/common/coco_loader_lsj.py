# COCO with large-scale jitter (LSJ) for ViTDet: Detectron2's
# projects/ViTDet/configs/common/coco_loader_lsj.py. Images are flipped, resized by a random
# 0.1-2.0 of 1024 x 1024 and cropped to at most 1024 x 1024, without padding: the model pads
# every batch to a 1024 square (SimpleFeaturePyramid's square_pad).
import segtron.data.transforms as T
from segtron import model_zoo
from segtron.config import LazyCall as L

image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),  # flip first
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
# Cropping cuts boxes: recompute them from the masks.
dataloader.train.mapper.recompute_boxes = True

dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
