"""The tests' media samples are the bench's: one maker of PNG/WAV/MP4 bytes."""
from server.bench.media_samples import mp4, png, wav  # noqa: F401
