"""Our own exceptions. The CLI edge turns each into one clear line and a non-zero exit."""


class SpkrecError(Exception):
    """Base of every error a user can cause and fix; its message is shown as is."""

    exit_code = 2


class ConfigError(SpkrecError):
    """A configuration file or flag is wrong; the message names the key."""


class AudioError(SpkrecError):
    """An audio file cannot be decoded or holds nothing usable."""


class ModelError(SpkrecError):
    """A model file is missing, corrupt, not ours, or from an incompatible format version."""


class EngineError(SpkrecError):
    """ONNX Runtime cannot run the model as asked (for example CUDA requested but absent)."""


class DataError(SpkrecError):
    """A training or evaluation dataset is unusable."""


class DeviceError(SpkrecError):
    """An audio input device is missing or cannot be opened."""


class GalleryError(SpkrecError):
    """The enrolled-speaker gallery cannot be read or written as asked."""
