"""load_seed_weights against independent replicas of the three published layouts: minimal
re-implementations of torchvision's MobileNetV2, timm's mobilenetv2_100 and FNA's ImageNetModel,
written from their module structure. Loading a replica's file must reproduce its outputs."""

import pytest
import torch
from torch import nn

from fna_ext import mobilenet_v2
from fna_ext.families.mbconv import load_seed_weights, read_state_dict

# (expansion, channels, layers, stride)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_relu(c_in, c_out, k, stride=1, groups=1, eps=1e-5):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out, eps=eps), nn.ReLU6())


class TorchvisionInvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, t):
        super().__init__()
        hidden = c_in * t
        layers = [conv_bn_relu(c_in, hidden, 1)] if t != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.res = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        features, c_in = [conv_bn_relu(3, 32, 3, 2)], 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(TorchvisionInvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        features.append(conv_bn_relu(320, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class TimmBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, t):
        super().__init__()
        hidden = c_in * t
        self.t = t
        if t == 1:  # timm's DepthwiseSeparableConv
            self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
            self.bn1 = nn.BatchNorm2d(c_in)
            self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
        else:       # timm's InvertedResidual
            self.conv_pw = nn.Conv2d(c_in, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
            self.bn2 = nn.BatchNorm2d(hidden)
            self.conv_pwl = nn.Conv2d(hidden, c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
        self.res = stride == 1 and c_in == c_out

    def forward(self, x):
        r6 = nn.functional.relu6
        if self.t == 1:
            y = self.bn2(self.conv_pw(r6(self.bn1(self.conv_dw(x)))))
        else:
            y = r6(self.bn1(self.conv_pw(x)))
            y = self.bn3(self.conv_pwl(r6(self.bn2(self.conv_dw(y)))))
        return x + y if self.res else y


class TimmMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        stages, c_in = [], 32
        for t, c, n, s in SETTINGS:
            stages.append(nn.Sequential(*(TimmBlock(c_in if i == 0 else c, c, s if i == 0 else 1, t)
                                          for i in range(n))))
            c_in = c
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.classifier = nn.Linear(1280, 1000)

    def forward(self, x):
        r6 = nn.functional.relu6
        x = self.blocks(r6(self.bn1(self.conv_stem(x))))
        return self.classifier(r6(self.bn2(self.conv_head(x))).mean((2, 3)))


class FnaMBBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, t):
        super().__init__()
        hidden, eps = c_in * t, 1e-3
        layers = [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden, eps=eps), nn.ReLU6()] if t != 1 else []
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden, eps=eps), nn.ReLU6(),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=eps)]
        self.op = nn.Sequential(*layers)
        self.res = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.op(x) if self.res else self.op(x)


class FnaStage(nn.Module):
    def __init__(self, c_in, c_out, n, stride, t):
        super().__init__()
        self.layers = nn.Sequential(*(FnaMBBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, t)
                                      for i in range(n)))

    def forward(self, x):
        return self.layers(x)


class FnaConv1x1(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = conv_bn_relu(c_in, c_out, 1, eps=1e-3)

    def forward(self, x):
        return self.conv(x)


class FnaImageNetModel(nn.Module):
    def __init__(self):
        super().__init__()
        blocks, c_in = [conv_bn_relu(3, 32, 3, 2, eps=1e-3)], 32
        for t, c, n, s in SETTINGS:
            blocks.append(FnaStage(c_in, c, n, s, t))
            c_in = c
        blocks.append(FnaConv1x1(320, 1280))
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(1280, 1000)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3)))


def randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.2)
    return model.eval()


REPLICAS = {"torchvision": TorchvisionMobileNetV2, "timm": TimmMobileNetV2, "fna": FnaImageNetModel}


@pytest.mark.parametrize("layout", sorted(REPLICAS))
def test_each_layout_reproduces_the_replica(tmp_path, layout):
    replica = randomise(REPLICAS[layout]())
    path = tmp_path / f"{layout}.pth"
    torch.save(replica.state_dict(), path)
    model = mobilenet_v2().eval()
    report = load_seed_weights(model, path)
    assert report.layout == layout
    assert report.loaded == len(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), replica(x), rtol=1e-4, atol=1e-5)
    if layout == "fna":
        assert model.stem.bn.eps == 1e-3 and report.notes


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix", "safetensors", "own"])
def test_wrappers_and_formats(tmp_path, wrap):
    replica = randomise(TorchvisionMobileNetV2())
    state = replica.state_dict()
    path = tmp_path / "w.pth"
    if wrap == "state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif wrap == "model":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif wrap == "safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
        path = tmp_path / "w.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        source = mobilenet_v2()
        load_seed_weights(source, _saved(tmp_path / "tv.pt", state))
        torch.save(source.state_dict(), path)
    model = mobilenet_v2().eval()
    report = load_seed_weights(model, path)
    assert report.layout == ("fna_ext" if wrap == "own" else "torchvision")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), replica(x), rtol=1e-4, atol=1e-5)


def _saved(path, obj):
    torch.save(obj, path)
    return path


def test_classifier_can_be_skipped_or_absent(tmp_path):
    path = _saved(tmp_path / "tv.pth", randomise(TorchvisionMobileNetV2()).state_dict())
    with pytest.raises(ValueError, match=r"classifier.1.weight: file \(1000, 1280\) vs network \(10, 1280\)"):
        load_seed_weights(mobilenet_v2(num_classes=10), path)
    report = load_seed_weights(mobilenet_v2(num_classes=10), path, skip_classifier=True)
    assert report.ignored == ["classifier.1.weight", "classifier.1.bias"]
    assert load_seed_weights(mobilenet_v2(num_classes=None), path).ignored == report.ignored


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = randomise(TorchvisionMobileNetV2()).state_dict()
    del state["features.3.conv.1.0.weight"]
    state["features.3.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_seed_weights(mobilenet_v2(), _saved(tmp_path / "w.pth", state))
    assert "missing keys (1): features.3.conv.1.0.weight" in str(err.value)
    assert "unexpected keys (1): features.3.extra.weight" in str(err.value)


def test_nothing_is_copied_when_anything_does_not_fit(tmp_path):
    state = randomise(TorchvisionMobileNetV2()).state_dict()
    state["features.18.1.weight"] = torch.zeros(7)
    model = mobilenet_v2()
    before = model.stem.conv.weight.clone()
    with pytest.raises(ValueError, match="shape mismatches"):
        load_seed_weights(model, _saved(tmp_path / "w.pth", state))
    assert torch.equal(model.stem.conv.weight, before)


class NotWeights:
    pass


@pytest.mark.parametrize("content, message", [
    (b"this is not a checkpoint", "cannot be loaded: it is damaged or not a file torch.save wrote"),
    ("pickle", "cannot be loaded: it holds pickled Python objects"),
    ({"epoch": 3, "optimizer": "sgd"}, "not a state dict"),
    ({"foo.weight": torch.zeros(1)}, "unrecognised weight layout"),
])
def test_wrong_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":  # an arbitrary object: weights_only=True must refuse to unpickle it
        torch.save(NotWeights(), path)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message) as err:
        load_seed_weights(mobilenet_v2(), path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such weights file"):
        read_state_dict(tmp_path / "nope.pth")


def test_the_seed_network_is_built_with_its_weights_eps(tmp_path):
    from fna_ext.families import get_family
    from fna_ext.remap import load_seed_network

    path = tmp_path / "fna.pth"
    torch.save(randomise(REPLICAS["fna"]()).state_dict(), path)
    assert get_family().seed_bn_eps(path) == 1e-3
    seed = load_seed_network(path)
    assert {m.eps for m in seed.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    # built with the right eps, the load has nothing to change and says nothing
    assert not load_seed_weights(seed, path, skip_classifier=True).notes
