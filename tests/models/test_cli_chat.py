"""`nextgpt chat` on the tiny preset writes a PNG, a WAV and an MP4 in one call."""
import subprocess
import sys

import av
import soundfile as sf
from PIL import Image

from tests import samples


def run_chat(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "server.cli", "chat", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_chat_writes_playable_media(tmp_path, tiny_dir):
    image = tmp_path / "in.png"
    image.write_bytes(samples.png())
    audio = tmp_path / "in.wav"
    audio.write_bytes(samples.wav())
    out = tmp_path / "out"
    done = run_chat("Describe these, then show, play and animate.", "--image", str(image), "--audio", str(audio),
                    "--want", "image,audio,video", "--weights", str(tiny_dir), "--out", str(out), "--seed", "3",
                    "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert Image.open(out / "nextgpt-image.png").size == (32, 32)
    wave, rate = sf.read(out / "nextgpt-audio.wav")
    assert rate == 16000 and len(wave) == 16000
    with av.open(str(out / "nextgpt-video.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    for name in ("image.png", "audio.wav", "video.mp4"):
        assert f"wrote {out / ('nextgpt-' + name)}" in done.stdout


def test_chat_reports_a_bad_file_plainly(tmp_path, tiny_dir):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = run_chat("What is this?", "--image", str(broken), "--weights", str(tiny_dir))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
