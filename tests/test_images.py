"""lidlib.images: bundled photos, the two-object composite, loading any image, input checks."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lidlib import images, models

# preprocessing only, no weights: (255·x − 127) / 128
STUB = SimpleNamespace(input_size=224, preprocess=models.LITE0_PREPROCESS)


@pytest.mark.parametrize("name", images.PHOTOS)
def test_photos(name):
    x = images.photo(name)
    assert x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] == 3 and min(x.shape[1:]) >= 224
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05


def test_unknown_photo_lists_names():
    with pytest.raises(ValueError, match="chelsea"):
        images.photo("dog")


@pytest.mark.parametrize("size", [224, 99])
def test_composite_layout_and_masks(size):
    img, (left, right) = images.composite("chelsea", images.photo("coffee"), size)
    assert img.shape == (3, size, size) and left.shape == right.shape == (size, size)
    assert left.dtype == torch.bool and not (left & right).any() and (left | right).all()
    assert left[:, 0].all() and right[:, -1].all() and left.sum() == size * (size // 2)
    # the left half is the cat photo, fitted to a portrait strip
    strip = images.composite("chelsea", "chelsea", size)[0]
    assert torch.equal(img[:, :, : size // 2], strip[:, :, : size // 2])


@torch.no_grad()
def test_two_object_has_both_classes_in_lite0_top5():
    model = models.efficientnet_lite0()
    img, (a, b), (mask_a, mask_b) = images.two_object()
    assert (a, b) == (285, 967) and img.shape == (3, 224, 224)
    assert mask_a[:, -1].all() and mask_b[:, 0].all() and not (mask_a & mask_b).any()  # cat right, coffee left
    top5 = model(images.to_model_input(img, model))[0].topk(5).indices.tolist()
    assert a in top5 and b in top5, [model.categories[i] for i in top5]


def test_to_model_input_fits_and_preprocesses():
    img = torch.rand(3, 300, 500)
    x = images.to_model_input(img, STUB)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[0], STUB.preprocess(images.fit(img)))
    assert images.check_input(x, STUB) is x


@pytest.mark.parametrize("mode,size", [("L", (50, 31)), ("RGBA", (640, 480)), ("P", (224, 224)), ("RGB", (1001, 37)),
                                       ("I;16", (80, 90)), ("1", (300, 300))])
def test_load_image_any_mode_and_size(tmp_path, mode, size):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    im = rgb.convert(mode) if mode not in ("I;16",) else rgb.convert("L").convert("I;16")
    path = tmp_path / f"img.{'png' if mode != 'P' else 'gif'}"
    im.save(path)
    x = images.load_image(path, STUB)
    assert x.shape == (1, 3, 224, 224) and torch.isfinite(x).all()
    assert x.min() >= -127 / 128 - 1e-6 and x.max() <= 1 + 1e-6
    assert images.load_image(str(path), STUB).shape == (1, 3, 224, 224)


def test_load_image_values_gray_and_transparent():
    gray = np.full((10, 20), 127, np.uint8)
    assert torch.allclose(images.load_image(gray, STUB), torch.zeros(1, 3, 224, 224), atol=1e-6)
    clear = np.zeros((40, 40, 4), np.uint8)  # fully transparent -> white -> (255 − 127)/128 = 1
    assert torch.allclose(images.load_image(clear, STUB), torch.ones(1, 3, 224, 224), atol=1e-6)
    assert torch.allclose(images.load_image(Image.fromarray(clear, "RGBA"), STUB), torch.ones(1, 3, 224, 224))
    assert images.load_image(torch.rand(1, 64, 48), STUB).shape == (1, 3, 224, 224)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        images.load_image(tmp_path / "missing.png", STUB)
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="bad.png"):
        images.load_image(bad, STUB)
    with pytest.raises(ValueError, match="channels first"):
        images.load_image(torch.rand(224, 224, 3), STUB)
    with pytest.raises(ValueError, match=r"\(H,W\)"):
        images.load_image(np.zeros((2, 3, 4, 5)), STUB)
    with pytest.raises(TypeError):
        images.load_image(42, STUB)


def test_load_folder(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        images.load_folder(tmp_path, STUB)
    with pytest.raises(FileNotFoundError):
        images.load_folder(tmp_path / "nowhere", STUB)
    (tmp_path / "notes.txt").write_text("ignored")
    Image.new("L", (30, 60), 127).save(tmp_path / "b.png")
    Image.new("RGB", (300, 200), (255, 255, 255)).save(tmp_path / "a.JPG")
    x = images.load_folder(tmp_path, STUB)
    assert x.shape == (2, 3, 224, 224)
    assert torch.allclose(x[0], torch.ones(3, 224, 224), atol=1e-2) and x[1].abs().max() < 1e-6  # sorted by name


def test_check_input_explains_expected_shape():
    for bad, err in [(torch.zeros(3, 224, 224), ValueError), (torch.zeros(1, 1, 224, 224), ValueError),
                     (torch.zeros(1, 3, 200, 224), ValueError), (np.zeros((1, 3, 224, 224)), TypeError),
                     (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), TypeError)]:
        with pytest.raises(err, match="224") as e:
            images.check_input(bad, STUB)
        assert "load_image" in str(e.value) or "to_model_input" in str(e.value)
