"""lidlib.models: offline EfficientNet-Lite0, VGG-16 weight loading (never downloading), stages, attributes."""
import urllib.error

import pytest
import torch
from torch import nn

from lidlib import images, models

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    return models.efficientnet_lite0()


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG-16 state dict on disk (with non-default values so a wrong load would show)."""
    torch.manual_seed(0)
    state = models.vgg16().state_dict()
    for v in state.values():
        v.add_(0.01)
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub directory, no $LIDLIB_VGG16_WEIGHTS, and a network that fails if touched."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(models.ENV_VAR, raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "hub"


def assert_same_params(model, state):
    ours = model.state_dict()
    assert ours.keys() == state.keys()
    assert all(torch.equal(ours[k], state[k]) for k in state)


# --------------------------------------------------------------------------- EfficientNet-Lite0

@torch.no_grad()
def test_lite0_recognises_real_photos(lite0):
    x = torch.cat([images.to_model_input(images.photo(n), lite0) for n in ("chelsea", "coffee")])
    top1 = lite0(x).argmax(1).tolist()
    assert top1[0] in CATS, lite0.categories[top1[0]]
    assert top1[1] == ESPRESSO, lite0.categories[top1[1]]


def test_lite0_is_built_from_hookable_modules_each_used_once(lite0):
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.ZeroPad2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
               nn.Linear, nn.Sequential, models.MBConv, models.EfficientNetLite0)
    assert all(isinstance(m, allowed) for m in lite0.modules())
    leaves = [m for m in lite0.modules() if not list(m.children())]
    calls = {id(m): 0 for m in leaves}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for m in leaves]
    try:
        with torch.no_grad():
            lite0(torch.zeros(1, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert set(calls.values()) == {1}
    assert sum(isinstance(m, nn.ReLU6) for m in leaves) == 33
    assert sum(b.residual for b in lite0.blocks) == 9


def test_lite0_attributes_and_state(lite0):
    assert not lite0.training
    assert lite0.display_name == "EfficientNet-Lite0" and lite0.input_size == 224
    assert len(lite0.categories) == 1000 and lite0.categories[ESPRESSO] == "espresso"
    assert "efficientnet-lite0" in lite0.source
    names = dict(lite0.named_modules())
    assert "preprocess" not in names and not any(k.startswith(("preprocess", "categories")) for k in lite0.state_dict())
    assert lite0.train().eval() is lite0 and lite0.stages == models.LITE0_STAGES
    assert not models.efficientnet_lite0(pretrained=False).training


def test_lite0_preprocess_is_tf_scaling(lite0):
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    y = lite0.preprocess(x)
    assert y.shape == (3, 2, 2)
    assert torch.allclose(y[:, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)
    assert lite0.preprocess(x[None]).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="3,H,W"):
        lite0.preprocess(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("name,expected", [("lite0", models.LITE0_STAGES), ("vgg", models.VGG16_STAGES)])
def test_stages_have_five_resolutions(name, expected, lite0):
    model = lite0 if name == "lite0" else models.vgg16()
    assert model.stages == expected
    modules = dict(model.named_modules())
    sizes = {}
    hooks = [modules[m].register_forward_hook(lambda mod, i, o, s=s: sizes.__setitem__(s, o.shape[-1]))
             for s, m in model.stages.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert [sizes[s] for s in ("s1", "s2", "s3", "s4", "s5")] == [112, 56, 28, 14, 7]


# --------------------------------------------------------------------------- VGG-16

def test_vgg16_random_and_attributes():
    model = models.vgg16()
    assert not model.training and model.display_name == "VGG-16" and "random" in model.source
    assert model.preprocess.mean == (0.485, 0.456, 0.406) and len(model.categories) == 1000


def test_vgg16_loads_local_state_dict(vgg_file):
    path, state = vgg_file
    model = models.vgg16(path)
    assert_same_params(model, state)
    assert not model.training and str(path) in model.source
    assert_same_params(models.vgg16(str(path)), state)


def test_vgg16_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        models.vgg16(missing)


def test_vgg16_unreadable_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        models.vgg16(bad)


def test_vgg16_wrong_type():
    with pytest.raises(TypeError, match="weights must be"):
        models.vgg16(3)


def test_vgg16_imagenet_offline_says_where_to_put_the_file(empty_hub):
    expected = empty_hub / "checkpoints" / "vgg16-397923af.pth"
    for download in (False, True):  # True: the (disabled) download fails -> same helpful error
        with pytest.raises(models.WeightsUnavailableError) as err:
            models.vgg16("imagenet", download=download)
        assert str(expected) in str(err.value) and "pass its path" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_vgg16_imagenet_reads_hub_cache_before_any_download(empty_hub, vgg_file):
    path, state = vgg_file
    cached = models.vgg16_cache_path()
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    model = models.vgg16("imagenet")  # load_state_dict_from_url would raise: the cache must be read first
    assert_same_params(model, state)
    assert str(cached) in model.source


# --------------------------------------------------------------------------- imagenet()

def test_imagenet_falls_back_to_lite0_offline(empty_hub):
    model = models.imagenet()
    assert model.display_name == "EfficientNet-Lite0" and not model.training
    assert "offline" in model.source and str(models.vgg16_cache_path()) in models.imagenet_source(model)


def test_imagenet_returns_vgg16_when_weights_exist(empty_hub, vgg_file, monkeypatch):
    path, state = vgg_file
    model = models.imagenet(path)
    assert model.display_name == "VGG-16" and str(path) in model.source and not model.training
    assert_same_params(model, state)
    monkeypatch.setenv(models.ENV_VAR, str(path))
    assert models.imagenet().display_name == "VGG-16"
    monkeypatch.delenv(models.ENV_VAR)
    cached = models.vgg16_cache_path()
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    assert models.imagenet().display_name == "VGG-16"


def test_imagenet_explicit_missing_path_is_an_error(tmp_path, empty_hub, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        models.imagenet(tmp_path / "missing.pth")
    with pytest.raises(TypeError):
        models.imagenet(42)
    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "gone.pth"))  # a stale variable: fall back, say so
    model = models.imagenet()
    assert model.display_name == "EfficientNet-Lite0" and "gone.pth" in model.source
