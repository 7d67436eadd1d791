"""The runtime contract between training and the daemon.

Everything here runs without torch: the ONNX artifact and its metadata, the ONNX Runtime
engine, audio decoding, windowing, scoring, calibration metrics and configuration.
"""

__version__ = "0.1.0"
