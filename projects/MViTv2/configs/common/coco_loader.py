# COCO loaders of Detectron2's MViTv2 project (projects/MViTv2/configs/common/coco_loader.py):
# configs/common/data/coco.py with RGB input, and half of the training images first resized to
# a short side of 400/500/600 and cropped to 384..600 px (the DETR-style crop), then the usual
# multi-scale 480..800 resize.
import segtron.data.transforms as T
from segtron import model_zoo
from segtron.config import LazyCall as L

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomApply)(
        tfm_or_aug=L(T.AugmentationList)(
            augs=[
                L(T.ResizeShortestEdge)(short_edge_length=[400, 500, 600], sample_style="choice"),
                L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            ]
        ),
        prob=0.5,
    ),
    L(T.ResizeShortestEdge)(
        short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
        sample_style="choice",
        max_size=1333,
    ),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows it
