"""Static int8 for the CPU: a QDQ copy of a model, built from activation ranges the model carries.

Dynamic int8 measures activation ranges on every call, and its ConvInteger path made a ResNet50
slower than fp32 on x86 (README, "CPU: static int8"). Static int8 fixes the ranges once, calibrated on
real speech at export (``training.int8`` stamps them into the metadata as ``int8_ranges``), so
ONNX Runtime runs fused int8 convolutions (QLinearConv, VNNI where the CPU has it).

The recipe depends on the CPU that will run it (ONNX Runtime's quantization guide): uint8
activations times int8 weights ("u8s8") on CPUs with VNNI and on ARM64, whose dot-product
instructions do not saturate. On other x86 CPUs u8s8 goes through VPMADDUBSW, whose 16-bit sums
of two products saturate (the shipped model's copy fell to cosine 0.93 of fp32 on an AVX2-only
EPYC): there the weights take 7 bits ("u8s7", ONNX Runtime's reduce_range), so two products
can no longer overflow, on the same fast kernels. "u8u8" (uint8 weights, a kernel that never
saturates, but slower than fp32 where it was timed) is the fall-back when a copy disagrees.
``models.precision`` checks every copy against fp32 on the machine before using it
(``models.agreement``).

The int8 copy is not shipped: the package holds one model file. It is built from that file and
its ranges (``ModelInfo.int8_ranges``) on first use on a CPU, in a few seconds, and cached
(``models.precision``), so every later start loads it directly. What is quantised: the
backbone's convolutions and residual additions, weights per output channel (int8), activations
per tensor (uint8). The DFT/mel front end and the
embedding head stay float: quantising a fixed Fourier basis adds error to every feature, and the
head is a small share of the work.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .private import private_dir

QUANTIZER = "qdq-pc-v2"  # in the cache key with the recipe: a new quantiser builds new copies
OP_TYPES = ["Conv", "Add"]
RECIPES = ("u8s8", "u8s7", "u8u8")
PORTABLE_RECIPE = "u8s7"  # an int8 file carried to other CPUs (`spkrec export --int8`): agrees on all of them


def cpu_features() -> set[str]:
    """The CPU's instruction-set features as CPUID reports them (numpy's runtime dispatch
    reads them; /proc/cpuinfo is the fall-back), upper-case: AVX2, AVX512VNNI, ASIMDDP..."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            __cpu_features__ = {}
    found = {name.upper() for name, on in __cpu_features__.items() if on}
    if not found:
        try:
            flags = next((line for line in open("/proc/cpuinfo") if line.startswith(("flags", "Features"))), "")
            found = {f.upper().replace("_", "") for f in flags.split(":", 1)[-1].split()}
        except OSError:
            pass
    return found


CPU_CLASSES = ("vnni", "arm64", "x86")  # what cpu_class() answers; int8 copies are cached per class


def cpu_class() -> str:
    """'vnni' (x86 with AVX512-VNNI or AVX-VNNI), 'arm64', or 'x86' (AVX2 or older, no VNNI)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    features = cpu_features()
    return "vnni" if {"AVX512VNNI", "AVXVNNI"} & features else "x86"


def recipe_for(cpu: str) -> str:
    """The fastest int8 recipe whose kernels do not saturate on this class of CPU."""
    return "u8s8" if cpu in ("vnni", "arm64") else "u8s7"


def is_frontend(name: str) -> bool:
    """Front-end nodes of an exported spkrec model (the STFT as a convolution, the mel matrix)."""
    return "/frontend/" in name


def excluded_nodes(model) -> list[str]:
    """Everything outside the backbone stays float: the front end and the embedding head."""
    return [n.name for n in model.graph.node if is_frontend(n.name) or "/embed" in n.name]


def float_initializers(model) -> None:
    """Models stored with fp16 weights cast to fp32 at load (the shipped base model, to fit the
    package) are given their fp32 weights as initializers, in place, so the quantiser sees
    constant float weights it can quantise per channel."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    kept, used = [], set()
    for node in graph.node:
        source = node.input[0] if node.op_type == "Cast" and len(node.input) == 1 else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source in initializers and to == TensorProto.FLOAT:
            weights = numpy_helper.to_array(initializers[source]).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(weights, node.output[0]))
            used.add(source)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    still_read = {name for node in graph.node for name in node.input}
    for name in used - still_read:
        graph.initializer.remove(initializers[name])


def quantize_static_int8(src: Path, dst: Path, ranges: dict[str, tuple[float, float]], recipe: str = "u8s8") -> None:
    """Write the static int8 (QDQ) copy of ``src`` to ``dst`` (atomically), from ``ranges``:
    activations uint8, weights per output channel int8 (``u8s8``; ``u8s7`` in 7 bits; both
    symmetric) or uint8 (``u8u8``, asymmetric)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = onnx.load(str(src))
    float_initializers(model)
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()})
    root = logging.getLogger()  # the quantiser advises "pre-process the model" on the root logger: noise here
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        signed = recipe in ("u8s8", "u8s7")
        quantizer = QDQQuantizer(model, per_channel=True, reduce_range=recipe == "u8s7",
                                 weight_qType=QuantType.QInt8 if signed else QuantType.QUInt8,
                                 activation_qType=QuantType.QUInt8, tensors_range=tensors, nodes_to_quantize=[],
                                 nodes_to_exclude=excluded_nodes(model), op_types_to_quantize=OP_TYPES,
                                 extra_options={"ActivationSymmetric": False, "WeightSymmetric": signed})
        quantizer.quantize_model()
    finally:
        root.setLevel(level)
    private_dir(dst.parent)  # the cache is created owner-only, as every folder spkrec makes for itself
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # named after its copy: a crash's leftover is swept with it
    try:
        onnx.save(quantizer.model.model, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
