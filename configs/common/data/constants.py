"""Pixel statistics of ImageNet, for models' ``pixel_mean`` / ``pixel_std`` (0-255 scale)."""

constants = dict(
    imagenet_rgb256_mean=[123.675, 116.28, 103.53],
    imagenet_rgb256_std=[58.395, 57.12, 57.375],
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    # MSRA and Detectron1 pre-trained models absorb the std into their conv1 weights, so the
    # std is 1 for them; otherwise use the ImageNet std [57.375, 57.120, 58.395] (BGR).
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
)
