"""Resize model outputs to the caller's image size (Detectron2 path:
``detectron2.modeling.postprocessing``)."""

from typing import Tuple, Union

import torch
from torch.nn import functional as F

from ..structures import Boxes, Instances, ROIMasks

__all__ = ["detector_postprocess", "sem_seg_postprocess"]

_Size = Union[int, torch.Tensor]


def detector_postprocess(
    results: Instances,
    output_height: _Size,
    output_width: _Size,
    mask_threshold: float = 0.5,
) -> Instances:
    """Map detections from the network's input resolution to an output resolution.

    The network sees a resized image (``results.image_size``); callers usually want results in
    the original image's size. This:

    - scales ``pred_boxes`` (or ``proposal_boxes``) by (out_w / in_w, out_h / in_h), clips them
      to the output size and drops boxes that became empty (zero width or height);
      ``RotatedBoxes`` use their own ``scale`` / ``clip`` (only nearly horizontal ones clip);
    - pastes ``pred_masks`` ((N, 1, M, M) probabilities, or ``ROIMasks``) into the output size
      with bilinear sampling inside each box and thresholds them at ``mask_threshold``, giving
      an (N, out_h, out_w) bool tensor;
    - scales the x and y of ``pred_keypoints`` (N, K, 3).

    Args:
        results: detections of one image; ``image_size`` is the network input's (h, w).
        output_height, output_width: target size (ints, or 0-dim tensors e.g. while tracing).
        mask_threshold: probability at or above which a mask pixel is on.

    Returns:
        new ``Instances`` with ``image_size == (output_height, output_width)`` (a stacked
        tensor when the sizes are tensors). ``results`` itself is not modified.
    """
    if isinstance(output_width, torch.Tensor):
        # Float copies so the scale is a true division even for integer tensors.
        out_w, out_h = output_width.float(), output_height.float()
        new_size = torch.stack([output_height, output_width])
    else:
        out_w, out_h = output_width, output_height
        new_size = (output_height, output_width)
    in_h, in_w = results.image_size
    scale_x, scale_y = out_w / in_w, out_h / in_h

    if results.has("pred_boxes"):
        box_field = "pred_boxes"
    elif results.has("proposal_boxes"):
        box_field = "proposal_boxes"
    else:
        raise ValueError(
            "detector_postprocess: results must contain 'pred_boxes' or 'proposal_boxes'; "
            f"fields are {sorted(results.get_fields())}."
        )
    boxes = results.get(box_field)
    # Boxes or RotatedBoxes (which scale, clip and test emptiness their own way).
    boxes = type(boxes)(boxes.tensor.clone()) if isinstance(boxes, Boxes) else Boxes(boxes.clone())
    boxes.scale(scale_x, scale_y)
    boxes.clip(new_size)

    fields = dict(results.get_fields())
    fields[box_field] = boxes
    out = Instances(new_size, **fields)
    # One nonzero for all fields (a boolean mask would cost one host sync per field on a GPU).
    out = out[torch.nonzero(boxes.nonempty()).squeeze(1)]

    if out.has("pred_masks"):
        masks = out.pred_masks
        if not isinstance(masks, ROIMasks):
            if masks.dim() != 4 or masks.shape[1] != 1:
                raise ValueError(
                    "detector_postprocess: pred_masks must be ROIMasks or an (N, 1, M, M) tensor "
                    f"of probabilities, got shape {tuple(masks.shape)}."
                )
            masks = ROIMasks(masks[:, 0, :, :])
        out.pred_masks = masks.to_bitmasks(
            out.get(box_field), output_height, output_width, mask_threshold
        ).tensor

    if out.has("pred_keypoints"):
        keypoints = out.pred_keypoints.clone()
        keypoints[:, :, 0] *= scale_x
        keypoints[:, :, 1] *= scale_y
        out.pred_keypoints = keypoints
    return out


def sem_seg_postprocess(
    result: torch.Tensor, img_size: Tuple[int, int], output_height: int, output_width: int
) -> torch.Tensor:
    """Map a semantic-segmentation prediction to the output resolution.

    Args:
        result: (C, H, W) per-class scores on the padded network input (H, W multiples of the
            size divisibility).
        img_size: (h, w) of the image inside the padding (before padding, after resizing).
        output_height, output_width: target size, usually the original image's.

    Returns:
        (C, output_height, output_width): ``result`` cropped to ``img_size`` (dropping the
        padding) and resized bilinearly (``align_corners=False``).
    """
    cropped = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(
        cropped, size=(output_height, output_width), mode="bilinear", align_corners=False
    )[0]
