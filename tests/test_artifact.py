import numpy as np
import pytest

from spkrec.models.artifact import FORMAT_KEY, ModelInfo, decode_metadata, encode_metadata
from spkrec.models.errors import ModelError


def _info(**kw):
    base = dict(sample_rate=16000, window_s=2.0, hop_s=0.5, embedding_dim=4, labels=("a", "b"),
                prototypes=np.eye(2, 4, dtype=np.float32), thresholds={"eer": 0.41, "far1": 0.63},
                fingerprint="abc123", training={"steps": 3})
    base.update(kw)
    return ModelInfo(**base)


def test_metadata_round_trips_exactly():
    info = _info(prototypes=np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32))
    back = decode_metadata(encode_metadata(info))
    assert back.labels == info.labels and back.fingerprint == info.fingerprint
    assert np.array_equal(back.prototypes, info.prototypes)
    assert back.thresholds == info.thresholds and back.window_samples == 32000 and back.hop_samples == 8000


def test_model_from_another_format_version_is_refused():
    meta = encode_metadata(_info())
    meta[FORMAT_KEY] = "2"
    with pytest.raises(ModelError, match="format version 2, newer"):
        decode_metadata(meta, "m.onnx")


def test_foreign_onnx_is_named_not_ours():
    with pytest.raises(ModelError, match="not a spkrec model"):
        decode_metadata({"producer": "someone"}, "other.onnx")


def test_inconsistent_metadata_is_caught():
    meta = encode_metadata(_info())
    meta["spkrec.labels"] = '["a", "b", "c"]'
    with pytest.raises(ModelError, match="inconsistent"):
        decode_metadata(meta)
