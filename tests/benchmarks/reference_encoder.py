"""A reference encoder for benchmarks: Resemblyzer's GE2E network as a spkrec ONNX model.

Why: the meeting and verification benchmarks measure the daemon's logic (VAD, windows,
smoothing, decisions, enrollment, clustering) and the encoder together. Running the same logic
on a strong, independent encoder in our own model contract separates the two: the daemon runs
this file exactly as it runs ours (``spkrec label --model``, ``spkrec live --model``).

Benchmark only, never shipped: the weights are Resemblyzer's ``pretrained.pt`` from its pip
wheel (Apache-2.0), and the file goes outside the repo (default /tmp/resemblyzer-spkrec.onnx).

The graph takes the raw waveform and does, inside it, what ``VoiceEncoder.embed_utterance``
does after ``normalize_volume(wav, -30, increase_only=True)``:
- volume normalisation, increase only, to -30 dBFS (RMS of the whole window);
- zero padding as ``compute_partial_slices`` asks (rate 1.3, min coverage 0.75): partials of
  160 frames every 77 frames (12320 samples); a window of N samples keeps
  ``max(N - 19200, 0) // 12320 + 1`` of them, computed from the input's length in the graph,
  so any length is exact; a 2-s window (32000 samples) has two, at frames 0 and 77;
- the mel spectrogram as librosa 0.11 computes it (n_fft 400, hop 160, periodic Hann, centred
  with zero padding, power 2, ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)``), the STFT
  as a conv1d with a fixed windowed DFT basis;
- LSTM (3 x 256), Linear, ReLU on the last hidden state, unit length per partial, their mean,
  unit length again.
Resemblyzer's ``trim_long_silences`` is left out: the daemon's VAD has already cut the pauses.

Its thresholds (``eer``, ``far1``, ``consistency``, and the clustering scales of
``models.clustering.measure_scales``) are measured as training/baseexport.py
measures the base model's, through the exported file, on the 251 LibriSpeech train-clean-100
voices, assumed unheard by Resemblyzer. A build fails unless its embeddings agree with Resemblyzer's own
(cosine >= 0.99) on 20 real 2-s test-other windows; an up-to-date file is reused.

    .venv/bin/pip install --no-deps resemblyzer==0.1.4 && .venv/bin/pip install librosa
    .venv/bin/python tests/benchmarks/reference_encoder.py [--out /tmp/resemblyzer-spkrec.onnx] [--force]
    .venv/bin/spkrec label meeting.wav --model /tmp/resemblyzer-spkrec.onnx --rttm meeting.rttm
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from spkrec.models.artifact import ModelInfo, decode_metadata, save_atomically, stamp
from spkrec.models.audio import load_audio
from spkrec.models.clustering import measure_scales
from spkrec.models.engine import Engine
from spkrec.models.errors import ModelError
from spkrec.models.windows import fit_length, frame_windows
from spkrec.training.baseexport import calibrate, consistency_threshold
from spkrec.training.export import export_onnx, speed_ms

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
VOICES = DATA / "librispeech-train-clean-100"
PARITY_VOICES = DATA / "librispeech-test-other"
DEFAULT_OUT = Path("/tmp/resemblyzer-spkrec.onnx")
BUILDER = 2  # bump when the graph or calibration changes: older files are then rebuilt

RATE, WINDOW_S, HOP_S, DIM = 16000, 2.0, 0.5, 256
N_FFT, FRAME_HOP, N_MELS = 400, 160, 40
PARTIAL_FRAMES = 160
PARTIAL_STEP = int(np.round(RATE / 1.3 / FRAME_HOP))  # 77 frames, as compute_partial_slices(rate=1.3)
MIN_COVERED = int(0.75 * PARTIAL_FRAMES * FRAME_HOP)  # 19200 samples: a last partial needs 75 % real audio
TARGET_RMS = 10 ** (-30 / 20)  # -30 dBFS
MIN_PARITY_COSINE = 0.99


class GE2E(nn.Module):
    """Waveform [batch, samples] -> (unit embedding [batch, 256], empty logits [batch, 0])."""

    def __init__(self) -> None:
        super().__init__()
        import librosa
        from resemblyzer import VoiceEncoder

        voice = VoiceEncoder("cpu", verbose=False)
        self.lstm, self.linear = voice.lstm, voice.linear
        bins = np.arange(N_FFT // 2 + 1)[:, None] * np.arange(N_FFT)[None, :]
        window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, librosa's get_window('hann', 400)
        angle = 2 * np.pi * bins / N_FFT
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window
        self.register_buffer("dft", torch.tensor(basis[:, None, :], dtype=torch.float32))
        self.register_buffer("mel", torch.from_numpy(librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS)))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rms = waveform.pow(2).mean(dim=1, keepdim=True).sqrt()
        wav = waveform * torch.clamp(TARGET_RMS / rms.clamp_min(1e-9), min=1.0)
        # Centre padding (n_fft / 2) on the left; on the right, more zeros than any partial reads.
        padded = F.pad(wav, (N_FFT // 2, PARTIAL_FRAMES * FRAME_HOP + N_FFT // 2))
        spec = F.conv1d(padded[:, None, :], self.dft, stride=FRAME_HOP)  # [batch, 2 * 201, frames]
        power = spec[:, : N_FFT // 2 + 1].pow(2) + spec[:, N_FFT // 2 + 1 :].pow(2)
        mels = torch.matmul(self.mel, power).transpose(1, 2)  # [batch, frames, 40]
        samples = torch._shape_as_tensor(waveform)[1]
        partials = torch.div(torch.clamp(samples - MIN_COVERED, min=0), PARTIAL_STEP * FRAME_HOP,
                             rounding_mode="floor") + 1
        starts = torch.arange(partials) * PARTIAL_STEP
        frames = (starts[:, None] + torch.arange(PARTIAL_FRAMES)[None, :]).reshape(-1)
        chunks = torch.index_select(mels, 1, frames).reshape(-1, PARTIAL_FRAMES, N_MELS)
        _, (hidden, _) = self.lstm(chunks)
        each = F.normalize(F.relu(self.linear(hidden[-1])), dim=1)
        embedding = F.normalize(each.reshape(waveform.shape[0], -1, DIM).mean(dim=1), dim=1)
        return embedding, embedding[:, :0]


def weights_digest() -> str:
    import resemblyzer

    return hashlib.sha256((Path(resemblyzer.__file__).parent / "pretrained.pt").read_bytes()).hexdigest()[:16]


def is_current(out: Path, voices_dir: Path = VOICES) -> bool:
    """True when ``out`` is a file this builder made from the same weights and voices, and its
    graph still hashes to its fingerprint."""
    if not out.is_file():
        return False
    try:
        model = onnx.load(str(out))
        info = decode_metadata({p.key: p.value for p in model.metadata_props}, out)
    except Exception:  # unreadable or not ours: rebuild
        return False
    graph = hashlib.sha256(model.graph.SerializeToString()).hexdigest()[:16]
    t = info.training
    return (graph == info.fingerprint and t.get("builder") == BUILDER and t.get("weights_sha256") == weights_digest()
            and t.get("calibration_voices") == voices_dir.name)


def voice_windows(voices_dir: Path) -> dict[str, np.ndarray]:
    """Each voice's recordings, joined, cut into 2-s windows every 0.5 s."""
    voices = {}
    for folder in sorted(p for p in voices_dir.iterdir() if p.is_dir()):
        audio = np.concatenate([load_audio(f, RATE) for f in sorted(folder.glob("*.flac"))])
        voices[folder.name] = frame_windows(audio, int(WINDOW_S * RATE), int(HOP_S * RATE))
    if not voices:
        raise ModelError(f"no voices (folders of .flac files) in {voices_dir}")
    return voices


def check_parity(path: Path) -> tuple[float, float]:
    """(min, mean) cosine between the file's embeddings and Resemblyzer's own, on 20 real 2-s
    windows (the middle of every 5th test-other recording); raises below MIN_PARITY_COSINE."""
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

    files = sorted(PARITY_VOICES.glob("*/*.flac"))[::5][:20]
    if len(files) < 20:
        raise ModelError(f"parity needs 20 recordings in {PARITY_VOICES}, found {len(files)}")
    windows = []
    for f in files:
        audio = load_audio(f, RATE)
        start = max(0, (audio.size - int(WINDOW_S * RATE)) // 2)
        windows.append(fit_length(audio[start:], int(WINDOW_S * RATE)))
    batch = np.stack(windows)
    voice = VoiceEncoder("cpu", verbose=False)
    reference = np.stack([voice.embed_utterance(normalize_volume(w, -30, increase_only=True)) for w in batch])
    cosines = np.sum(Engine(path, provider="cpu").embed(batch) * reference, axis=1)
    low, mean = float(cosines.min()), float(cosines.mean())
    if not low >= MIN_PARITY_COSINE:
        raise ModelError(f"parity failed: cosine to Resemblyzer's embed_utterance min {low:.4f} "
                         f"(mean {mean:.4f}) < {MIN_PARITY_COSINE}")
    return low, mean


def build(out: Path = DEFAULT_OUT, voices_dir: Path = VOICES, force: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """Export, check against Resemblyzer, calibrate on ``voices_dir`` (thresholds and clustering
    scales: meetings refuse a model without them) and write ``out`` (reused as is when it is
    current and not ``force``)."""
    out = Path(out)
    if not force and is_current(out, voices_dir):
        log(f"{out} is current (builder {BUILDER}, same weights and voices): reused; --force rebuilds")
        return out
    started = time.perf_counter()
    training = {"kind": "reference encoder", "source": "Resemblyzer 0.1.4 GE2E (benchmark reference, not shipped)",
                "licence": "Apache-2.0", "calibration_voices": voices_dir.name, "builder": BUILDER,
                "weights_sha256": weights_digest(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    info = ModelInfo(sample_rate=RATE, window_s=WINDOW_S, hop_s=HOP_S, embedding_dim=DIM, labels=(),
                     prototypes=np.zeros((0, DIM), np.float32), thresholds={}, fingerprint="",
                     training=training, precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "draft.onnx"
        with warnings.catch_warnings():  # the tracer's LSTM batch-size caution: parity runs 40 partials,
            warnings.simplefilter("ignore")  # calibration 32 and fewer, the daemon 2 per window
            export_onnx(GE2E().eval(), info, draft)
        low, mean = check_parity(draft)
        log(f"parity with Resemblyzer on 20 test-other 2-s windows: cosine min {low:.5f}, mean {mean:.5f}")
        engine = Engine(draft, provider="cpu")
        per_voice = {v: engine.embed_windows(w) for v, w in voice_windows(voices_dir).items()}
        model = onnx.load(str(draft))
    cal = calibrate(per_voice)
    consistency, consistency_report = consistency_threshold(per_voice)
    thresholds = {"eer": cal["eer"], "far1": cal["far1"], "consistency": consistency}
    thresholds.update(measure_scales(per_voice))
    training["validation"] = {"window_vs_voiceprint_eer": cal["window_eer"], "targets": cal["targets"],
                              "nontargets": cal["nontargets"], "consistency": consistency_report,
                              "parity_cosine_min": low, "parity_cosine_mean": mean}
    info = stamp(model, dataclasses.replace(info, thresholds=thresholds, training=training))
    save_atomically(model, out)
    log(f"{len(per_voice)} {voices_dir.name} voices, {sum(map(len, per_voice.values()))} windows: "
        f"window EER {cal['window_eer']:.2%}; thresholds {json.dumps(thresholds)}")
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fingerprint {info.fingerprint}) "
        f"in {time.perf_counter() - started:.0f} s; {speed_ms(out, int(WINDOW_S * RATE)):.1f} ms per 2-s window on CPU")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the model file to write (default {DEFAULT_OUT})")
    parser.add_argument("--voices", type=Path, default=VOICES, help="calibration voices: one folder of .flac per voice")
    parser.add_argument("--force", action="store_true", help="rebuild even when --out is current")
    args = parser.parse_args(argv)
    build(args.out, args.voices, force=args.force)


if __name__ == "__main__":
    main()
