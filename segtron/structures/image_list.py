"""``ImageList``: images of different sizes padded into one batch tensor.

Detectron2 path: ``detectron2.structures.image_list``.
"""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import device  # (TorchScript resolves the bare name in annotations)

logger = logging.getLogger(__name__)

__all__ = ["ImageList"]


class ImageList:
    """A padded batch of images plus the size of each image before padding.

    Attributes:
        tensor: (N, ..., H, W) batch; image i occupies ``[i, ..., :h_i, :w_i]`` and the rest is
            padding.
        image_sizes: list of the original (h_i, w_i), as Python ints.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        """Args:
            tensor: (N, ..., H, W) padded batch.
            image_sizes: N pairs (h, w), each no larger than (H, W).
        """
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Return image ``idx`` without its padding: a (..., h, w) view of the batch tensor."""
        height, width = self.image_sizes[idx]
        return self.tensor[idx, ..., :height, :width]

    @torch.jit.unused
    def to(self, *args: Any, **kwargs: Any) -> "ImageList":
        """Return a copy with the tensor converted as by ``Tensor.to`` (device and/or dtype)."""
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> device:
        """Device of the batch tensor."""
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: List[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[Dict[str, int]] = None,
    ) -> "ImageList":
        """Pad images at the bottom and right into one batch.

        Args:
            tensors: non-empty list of (H_i, W_i) or (C, H_i, W_i) tensors (any leading dims,
                equal across images), all on the same device.
            size_divisibility: when > 1, the padded height and width are rounded up to a
                multiple of it (e.g. 32 for FPN backbones).
            pad_value: value written into the padding.
            padding_constraints: optional dict; ``"size_divisibility"`` replaces the argument,
                and ``"square_size"`` > 0 pads every image to a square of that side (before the
                divisibility rounding, as in Detectron2).

        Returns:
            ``ImageList`` whose tensor is (N, ..., H, W) with H, W the (rounded) per-batch maxima,
            in the dtype and device of ``tensors[0]``, and ``image_sizes`` the original (h, w).
        """
        if not torch.jit.is_scripting():
            _check_images(tensors)
            if torch.jit.is_tracing():
                # Sizes stay the tracer's 0-dim size tensors so that a traced model accepts
                # other image sizes (eager code keeps Python ints, as documented).
                traced_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
                max_h, max_w = torch.stack([torch.stack(s) for s in traced_sizes]).max(0).values
                max_h, max_w = _padded_size(max_h, max_w, size_divisibility, padding_constraints)
                return _pad_traced(tensors, traced_sizes, max_h, max_w, pad_value)
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h, max_w = _padded_size(
            max([size[0] for size in image_sizes]), max([size[1] for size in image_sizes]),
            size_divisibility, padding_constraints,
        )
        first = tensors[0]
        batch_shape = [len(tensors)] + list(first.shape[:-2]) + [max_h, max_w]
        batched = first.new_full(batch_shape, pad_value)
        for i, img in enumerate(tensors):
            batched[i, ..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)


def _check_images(tensors: Sequence[torch.Tensor]) -> None:
    """Raise TypeError / ValueError unless ``tensors`` is a non-empty list of images with equal
    leading dims (eager only)."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(
            f"ImageList.from_tensors expects a list or tuple of tensors, got {type(tensors)}."
        )
    if len(tensors) == 0:
        raise ValueError("ImageList.from_tensors got an empty list; pass at least one image.")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"ImageList.from_tensors: element {i} is a {type(t).__name__}, not a torch "
                "Tensor; convert images with torch.as_tensor(...) first."
            )
        if t.dim() < 2:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has shape {tuple(t.shape)}; images need "
                "at least 2 dims (H, W)."
            )
        if t.shape[:-2] != tensors[0].shape[:-2]:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has leading shape (channels) "
                f"{tuple(t.shape[:-2])} but element 0 has {tuple(tensors[0].shape[:-2])}; "
                "all images must have the same number of channels."
            )


def _padded_size(
    max_h: int, max_w: int, size_divisibility: int, padding_constraints: Optional[Dict[str, int]]
) -> Tuple[int, int]:
    """The batch's (height, width) for the largest image size ``max_h`` x ``max_w``: square
    padding and divisibility as ``ImageList.from_tensors`` documents (0-dim tensors while
    tracing)."""
    if padding_constraints is not None:
        square_size = int(padding_constraints.get("square_size", 0))
        if square_size > 0:
            if max_h > square_size or max_w > square_size:
                raise ValueError(
                    f"ImageList.from_tensors: padding_constraints square_size={square_size} is "
                    f"smaller than the largest image ({max_h}x{max_w}); resize the images "
                    "first or raise square_size."
                )
            max_h = square_size
            max_w = square_size
        if "size_divisibility" in padding_constraints:
            size_divisibility = padding_constraints["size_divisibility"]

    if size_divisibility > 1:
        stride = int(size_divisibility)
        # Round up with non-negative operands only: the ONNX export of `//` truncates, so
        # the -(-x // s) form would round down in an exported (traced) model.
        max_h = (max_h + (stride - 1)) // stride * stride
        max_w = (max_w + (stride - 1)) // stride * stride
    return max_h, max_w


def _pad_traced(
    tensors: Sequence[torch.Tensor], image_sizes, max_h, max_w, pad_value: float
) -> ImageList:
    """Pad each image and stack (while tracing: the ONNX export of copy_ into a slice freezes
    the traced image size, so another size would fail in onnxruntime)."""
    batched = torch.stack([
        torch.nn.functional.pad(
            img, [0, max_w - img.shape[-1], 0, max_h - img.shape[-2]], value=pad_value
        )
        for img in tensors
    ])
    return ImageList(batched.contiguous(), image_sizes)

