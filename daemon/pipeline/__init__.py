"""The audio path of one process: sources, VAD, windows, decisions, the pipeline loop, sinks and events."""
