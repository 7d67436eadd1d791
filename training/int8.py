"""int8 calibration for a model: activation ranges measured on real speech, written into its metadata.

``models.quantize`` builds the static int8 copy a CPU runs from these ranges. They are measured
on windows of the model's own training audio (what it will hear is speech like that), with ONNX
Runtime's MinMax calibrator over the same float graph the quantiser later sees. Only the
metadata changes: the fingerprint hashes the graph, so voiceprints enrolled with the model stay
valid.

    python -m spkrec.training.int8 MODEL.onnx --audio TRAINING_FILES... [--out NEW.onnx]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from spkrec.models.artifact import INPUT_NAME, ModelInfo, info_of, save_atomically, stamp
from spkrec.models.audio import load_audio
from spkrec.models.errors import ModelError
from spkrec.models.quantize import OP_TYPES, PORTABLE_RECIPE, excluded_nodes, float_initializers, quantize_static_int8
from spkrec.models.windows import frame_windows


BATCH = 8
MAX_WINDOWS = 400  # the shipped base model's calibration: 13 minutes of speech from 100 voices
RUN_WINDOWS = 128  # what `spkrec train` measures at export: a few seconds more per run


def measure_ranges(model_path: Path, windows: np.ndarray) -> dict[str, tuple[float, float]]:
    """{tensor: (low, high)} of the activations the quantiser will quantise, over ``windows``."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([windows[i:i + BATCH] for i in range(0, len(windows), BATCH)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    model = onnx.load(str(model_path))
    float_initializers(model)
    skip = set(excluded_nodes(model))
    with tempfile.TemporaryDirectory(prefix="spkrec-int8-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        onnx.save(model, str(float_path))
        calibrator = create_calibrator(float_path, OP_TYPES, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(Windows())
        data = calibrator.compute_data()
    inside = {name for node in model.graph.node if node.name not in skip for name in (*node.input, *node.output)}
    return {name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
            for name, t in data.data.items() if name in inside}


def windows_of(audios: list[np.ndarray], window: int, limit: int = MAX_WINDOWS) -> np.ndarray:
    """Non-overlapping windows spread over ``audios`` (an even share of each, up to ``limit``)."""
    per_item = max(1, limit // max(1, len(audios)))
    picked = [w for audio in audios if audio.size >= window for w in frame_windows(audio, window, window)[:per_item]]
    if not picked:
        raise ModelError("no recording is as long as one window: nothing to calibrate int8 on")
    return np.stack(picked[:limit]).astype(np.float32)


def stamp_ranges(model_path: Path, windows: np.ndarray, out: Path | None = None) -> ModelInfo:
    """Measure the ranges on ``windows`` and write them into the model's metadata (in place by default)."""
    model = onnx.load(str(model_path))
    info = info_of(model, model_path)
    ranges = measure_ranges(model_path, windows)
    training = {**info.training, "int8_calibration": {"windows": len(windows), "tensors": len(ranges)}}
    info = stamp(model, dataclasses.replace(info, int8_ranges=ranges, training=training))
    save_atomically(model, out or model_path)
    return info


def quantize_copy(src: Path, dst: Path, windows: Callable[[], np.ndarray]) -> ModelInfo:
    """The static int8 copy of ``src`` as a file of its own (``spkrec export --int8``), from the
    model's ranges, or from ranges measured on ``windows()`` for a model exported without them.
    A file is carried to CPUs it was not built on, where no fp32 is at hand to check it against, so
    it takes the recipe that agrees everywhere: 7-bit weights (``u8s7``, models.quantize)."""
    model = onnx.load(str(src), load_external_data=False)
    info = info_of(model, src)
    ranges = info.int8_ranges or measure_ranges(src, windows())
    quantize_static_int8(src, dst, ranges, PORTABLE_RECIPE)
    quantized = onnx.load(str(dst))
    info = stamp(quantized, dataclasses.replace(info, precision="int8", int8_ranges=ranges), fingerprint=False)
    save_atomically(quantized, dst)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spkrec.training.int8", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--audio", type=Path, nargs="+", required=True, help="recordings of the model's training audio")
    parser.add_argument("--out", type=Path, help="where to write the stamped model (default: in place)")
    args = parser.parse_args(argv)
    info = info_of(onnx.load(str(args.model), load_external_data=False), args.model)
    windows = windows_of([load_audio(path, info.sample_rate) for path in args.audio], info.window_samples)
    info = stamp_ranges(args.model, windows, args.out)
    print(f"int8 ranges for {len(info.int8_ranges)} tensors from {len(windows)} windows -> {args.out or args.model}")


if __name__ == "__main__":
    main()
