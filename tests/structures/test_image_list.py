"""ImageList.from_tensors padding against a numpy reference."""

import numpy as np
import pytest
import torch

from segtron.structures import ImageList


def ref_pad(images, out_h, out_w, pad_value):
    """Place each (..., h, w) array at the top-left of a pad-filled (..., out_h, out_w) canvas."""
    lead = images[0].shape[:-2]
    out = np.full((len(images), *lead, out_h, out_w), pad_value, dtype=images[0].dtype)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        for r in range(h):
            for c in range(w):
                out[(i, ..., r, c)] = img[(..., r, c)]
    return out


def round_up(v, d):
    return v if d <= 1 else ((v + d - 1) // d) * d


def rand_images(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = (channels,) if channels else ()
    return [torch.rand(*lead, h, w, generator=g) * 255 for h, w in sizes]


@pytest.mark.parametrize("divisibility", [0, 1, 8, 32])
@pytest.mark.parametrize("pad_value", [0.0, -7.5])
def test_padding_matches_reference(divisibility, pad_value):
    sizes = [(17, 30), (25, 11), (3, 3)]
    imgs = rand_images(sizes)
    batch = ImageList.from_tensors(imgs, size_divisibility=divisibility, pad_value=pad_value)
    out_h = round_up(max(h for h, _ in sizes), divisibility)
    out_w = round_up(max(w for _, w in sizes), divisibility)
    assert batch.tensor.shape == (3, 3, out_h, out_w)
    assert batch.tensor.is_contiguous() and batch.tensor.dtype == torch.float32
    want = ref_pad([t.numpy() for t in imgs], out_h, out_w, pad_value)
    np.testing.assert_array_equal(batch.tensor.numpy(), want)
    assert batch.image_sizes == sizes
    assert all(type(v) is int for hw in batch.image_sizes for v in hw)
    for i, img in enumerate(imgs):
        assert torch.equal(batch[i], img)  # unpadded content intact
    assert len(batch) == 3


def test_divisible_sizes_are_not_padded_further():
    imgs = rand_images([(32, 64), (16, 64)])
    batch = ImageList.from_tensors(imgs, size_divisibility=32)
    assert batch.tensor.shape[-2:] == (32, 64)


def test_two_dim_images_and_single_image():
    imgs = [torch.arange(6.0).view(2, 3), torch.ones(4, 1)]
    batch = ImageList.from_tensors(imgs, pad_value=9.0)
    assert batch.tensor.shape == (2, 4, 3)
    want = ref_pad([t.numpy() for t in imgs], 4, 3, 9.0)
    np.testing.assert_array_equal(batch.tensor.numpy(), want)
    one = ImageList.from_tensors([torch.ones(2, 5, 7, dtype=torch.uint8)], size_divisibility=4)
    assert one.tensor.shape == (1, 2, 8, 8) and one.tensor.dtype == torch.uint8
    assert one.tensor[0, :, :5, :7].all() and one.tensor[0, :, 5:].sum() == 0
    assert one.image_sizes == [(5, 7)]


def test_square_size_and_constraint_divisibility():
    imgs = rand_images([(20, 30), (10, 12)], channels=1)
    sq = ImageList.from_tensors(imgs, padding_constraints={"square_size": 40}, pad_value=1.5)
    assert sq.tensor.shape == (2, 1, 40, 40)
    want = ref_pad([t.numpy() for t in imgs], 40, 40, 1.5)
    np.testing.assert_array_equal(sq.tensor.numpy(), want)
    # "size_divisibility" in the constraints overrides the argument
    over = ImageList.from_tensors(
        imgs, size_divisibility=64, padding_constraints={"size_divisibility": 16}
    )
    assert over.tensor.shape[-2:] == (32, 32)
    # square first, then the divisibility rounding
    both = ImageList.from_tensors(
        imgs, padding_constraints={"square_size": 40, "size_divisibility": 32}
    )
    assert both.tensor.shape[-2:] == (64, 64)
    plain = ImageList.from_tensors(imgs, size_divisibility=8, padding_constraints={})
    assert plain.tensor.shape[-2:] == (24, 32)
    with pytest.raises(ValueError, match="square_size"):
        ImageList.from_tensors(imgs, padding_constraints={"square_size": 25})


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        ImageList.from_tensors([])
    with pytest.raises(ValueError, match="channels"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(TypeError, match="element 1"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), np.zeros((3, 4, 4))])
    with pytest.raises(TypeError):
        ImageList.from_tensors(torch.zeros(2, 3, 4, 4))


def test_to_and_device():
    batch = ImageList.from_tensors(rand_images([(4, 5), (6, 3)]))
    assert batch.device.type == "cpu"
    half = batch.to(torch.float16)
    assert half.tensor.dtype == torch.float16 and half.image_sizes == batch.image_sizes
    meta_imgs = [torch.empty(3, 4, 5, device="meta"), torch.empty(3, 6, 2, device="meta")]
    meta = ImageList.from_tensors(meta_imgs)
    assert meta.device.type == "meta" and meta.tensor.shape == (2, 3, 6, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch():
    imgs = [t.cuda() for t in rand_images([(5, 9), (7, 2)])]
    batch = ImageList.from_tensors(imgs, size_divisibility=4)
    assert batch.device.type == "cuda" and batch.tensor.shape == (2, 3, 8, 12)
    assert torch.equal(batch[1], imgs[1])
