"""The real huggingface_hub client against the stand-in hub: a whole fetch through the CLI, then
the model loads and answers; and each way a fetch goes wrong, said in plain words."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.weights.conftest import make_tiny_release, reset
from weights.fetch import FetchError

ALL = ("llm", "image", "audio", "video")
# (repository, file) pairs the server never needs: docs, the safety checker, root checkpoints, the
# base's pickled copy and tokenizer (NExT-GPT ships its own), SD's fp32 copy beside its fp16 one.
NEVER_FETCHED = [("", "README.md"), ("", "safety_checker/"), ("", "v1-5-pruned"), ("", "zs2_576w"),
                 ("llama-7b/", ".bin"), ("llama-7b/", "tokenizer.model"),
                 ("stable-diffusion", "unet/diffusion_pytorch_model.safetensors")]


@pytest.fixture(scope="module")
def fetched(hub_server, tmp_path_factory):
    """One whole fetch through `nextgpt weights fetch`, in-process (tiny architecture constants)."""
    from huggingface_hub import constants

    from weights import cli

    dest = tmp_path_factory.mktemp("fetched") / "nextgpt-7b-tiva-v0"
    reset(hub_server)
    release = make_tiny_release(hub_server)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(cli, "RELEASES", {release.name: release})
        code = cli.main(["weights", "fetch", "--dir", str(dest), "--endpoint", hub_server.url, "--yes",
                         "--no-progress"])
    return dest, code, list(hub_server.requests)


def test_fetch_gets_only_the_needed_files(fetched):
    _, code, requests = fetched
    assert code == 0
    gets = [path for method, path, _ in requests if method == "HEAD" and "/resolve/" in path]  # one per file
    assert any(p.endswith("unet/diffusion_pytorch_model.fp16.safetensors") for p in gets)  # fp16 variant chosen
    assert any("llama-7b/resolve/" in p and p.endswith("model-00001-of-00002.safetensors") for p in gets)
    assert any(p.endswith("/files/imagebind_huge.pth") for _, p, _ in requests)
    for repo, name in NEVER_FETCHED:
        assert not any(repo in p and name in p for p in gets), (repo, name)


def test_fetch_assembles_the_release_layout(fetched, tiny_dir):
    dest, _, _ = fetched
    assert not (dest / "downloads").exists()  # sources removed once converted
    names = [p.name for p in dest.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth")) or ".fp16." in n]  # nothing pickled
    assert (dest / "nextgpt" / "added_tokens.json").is_file() and (dest / "llm" / "model.safetensors.index.json").is_file()
    release = load_file(str(dest / "nextgpt" / "pytorch_model.safetensors"))
    tiny = load_file(str(tiny_dir / "nextgpt" / "pytorch_model.safetensors"))
    assert release.keys() == tiny.keys() and all(torch.equal(release[k], tiny[k]) for k in tiny)
    vicuna = {}
    for shard in (dest / "llm").glob("*.safetensors"):
        vicuna.update(load_file(str(shard)))
    llm = load_file(str(tiny_dir / "llm" / "model.safetensors"))
    assert vicuna.keys() == llm.keys()  # the delta's [PAD] row and inv_freq buffer are gone
    assert all(torch.allclose(vicuna[k], llm[k], atol=1e-6) for k in llm)  # base + delta = Vicuna
    towers = {k.split(".")[1] for k in load_file(str(dest / "imagebind" / "model.safetensors"))}
    assert towers == {"vision", "audio"}


def test_fetch_verifies_and_prints_the_tables(fetched, capsys):
    from weights.cli import main

    dest, _, _ = fetched
    assert main(["weights", "verify", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "llm (llm/): OK" in out and "video decoder (video_decoder/): OK" in out
    assert "skipped: the server runs Stable Diffusion without its safety checker" in out


def test_fetched_model_loads_and_answers(fetched):
    from models.generate import SamplingParams
    from models.nextgpt import NextGPT
    from models.types import Message

    model = NextGPT.from_pretrained(fetched[0])
    out = model.chat([Message("user", "hi")], sampling=SamplingParams(max_new_tokens=4))
    assert isinstance(out.text, str) and out.usage.completion_tokens <= 4


def test_second_fetch_downloads_nothing(fetched, hub, fetch):
    _, log = fetch(fetched[0])
    assert "already holds every requested part" in log[-1]
    assert not hub.requests  # not even a listing


def test_fetch_resumes_after_an_interruption(hub, fetch, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr("weights.fetch.time.sleep", lambda s: None)  # also huggingface_hub's retry pause
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # its writes (10 MB) are larger than our files
    shard = "huggyllama/llama-7b/model-00001-of-00002.safetensors"
    hub.truncate[shard] = [1000]  # the connection drops once: the client resumes with a Range request
    hub.truncate["url:imagebind_huge.pth"] = [40_000] * 3  # drops on every try: this run gives up
    with pytest.raises(FetchError, match="resumes from the 120000 bytes already on disk"):
        fetch(tmp_path / "m", ("llm",))
    assert any(r == "bytes=768-" for _, p, r in hub.requests if "/cdn/" in p)  # the 3 full chunks kept
    hub.requests.clear()
    fetch(tmp_path / "m", ("llm",))  # the second run: finished files skipped, ImageBind resumed
    assert [r for _, p, r in hub.requests if p.endswith("imagebind_huge.pth") and r] == ["bytes=120000-"]
    assert not [p for m, p, _ in hub.requests if m == "GET" and ("/resolve/" in p or "/cdn/" in p)]
    from weights.verify import verify

    assert all(c.ok for c in verify(tmp_path / "m", ("llm",)))


def test_missing_file_is_named(hub, fetch, tmp_path):
    del hub.repos["ChocoWu/nextgpt_7b_tiva_v0"].files["pytorch_model.pt"]
    with pytest.raises(FetchError, match="ChocoWu/nextgpt_7b_tiva_v0 no longer holds pytorch_model.pt"):
        fetch(tmp_path / "m", ("llm",))
    assert not [p for m, p, _ in hub.requests if "/resolve/" in p]  # found out before downloading


def test_file_gone_from_the_hub_is_named(hub, fetch, tmp_path):
    hub.absent.add("ChocoWu/nextgpt_7b_tiva_v0/added_tokens.json")
    with pytest.raises(FetchError, match="a file the server needs is missing from ChocoWu/nextgpt_7b_tiva_v0"):
        fetch(tmp_path / "m", ("llm",))


@pytest.mark.parametrize("token, phrase", [
    (False, "gated and no Hugging Face token was found: accept its licence at .*huggyllama/llama-7b"),
    ("hf_not_granted", "gated and your Hugging Face token has no access to it"),
])
def test_gated_repository(hub, fetch, tmp_path, monkeypatch, token, phrase):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hub.repos["huggyllama/llama-7b"].gated_tokens = {"hf_granted"}
    with pytest.raises(FetchError, match=phrase):
        fetch(tmp_path / "m", ("llm",), token=token)
    assert (403 if token else 401) in hub.statuses  # what the hub answers in each case


def test_gated_repository_with_access(hub, tmp_path):
    from weights.fetch import download, plan_hub_part
    from weights.release import NEXTGPT_7B_TIVA_V0

    hub.repos["huggyllama/llama-7b"].gated_tokens = {"hf_granted"}
    part = NEXTGPT_7B_TIVA_V0.hub_parts[1]
    files = plan_hub_part(part, tmp_path, hub.url, "hf_granted")
    download(files, tmp_path, hub.url, "hf_granted", progress=False, log=lambda s: None)
    assert all(f.dest.is_file() for f in files)


@pytest.mark.parametrize("path, kind", [("pytorch_model.pt", "sha256"), ("tokenizer_config.json", "git blob id")])
def test_corrupted_download_is_caught_and_deleted(hub, fetch, tmp_path, path, kind):
    hub.corrupt.add(f"ChocoWu/nextgpt_7b_tiva_v0/{path}")
    with pytest.raises(FetchError, match=f"{path} from ChocoWu/nextgpt_7b_tiva_v0 is corrupted \\({kind}"):
        fetch(tmp_path / "m", ("llm",))
    assert not (tmp_path / "m" / "downloads" / "nextgpt" / path).exists()
    hub.corrupt.clear()  # the same command again fetches it afresh
    from weights.fetch import download, plan_hub_part
    from weights.release import NEXTGPT_7B_TIVA_V0

    files = plan_hub_part(NEXTGPT_7B_TIVA_V0.hub_parts[0], tmp_path / "m" / "downloads", hub.url, False)
    download(files, tmp_path / "m" / "downloads", hub.url, False, progress=False, log=lambda s: None)
    assert (tmp_path / "m" / "downloads" / "nextgpt" / path).is_file()


def test_network_failure(fetch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(FetchError, match="network failure .* run the same command again"):
        fetch(tmp_path / "m", ("llm",), endpoint=f"http://127.0.0.1:{port}")


def test_full_disk_is_refused_before_downloading(hub, fetch, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("weights.fetch.shutil.disk_usage", lambda p: usage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(FetchError, match=r"not enough disk space .* needs about [0-9.]+ MB .* and 1.0 MB is free"):
        fetch(tmp_path / "m", ALL)
    assert not [p for m, p, _ in hub.requests if m == "GET" and p.endswith((".safetensors", ".bin", ".pt", ".pth"))]


def test_licences_are_said_and_can_be_refused(hub, fetch, tmp_path):
    log = []
    from weights.assemble import fetch_release

    with pytest.raises(FetchError, match="licences were not accepted"):
        fetch_release(make_tiny_release(hub), tmp_path / "m", ALL, endpoint=hub.url, confirm=lambda: False,
                      log=log.append, progress=False)
    assert "CC BY-NC-SA 4.0" in log[0] and "LLaMA licence" in log[0]
    assert not hub.requests


def test_cli_dry_run_reaches_the_hub_named_by_HF_ENDPOINT(hub, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    args = [sys.executable, "-m", "weights.cli", "fetch", "--dir", str(tmp_path / "m"), "--only", "llm,video",
            "--dry-run", "--yes", "--imagebind-url", f"{hub.url}/files/imagebind_huge.pth"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    assert "ImageBind-huge: CC BY-NC-SA 4.0" in run.stdout and "still to download" in run.stdout
    assert ("GET", "/api/models/ChocoWu/nextgpt_7b_tiva_v0/revision/main", None) in hub.requests
    assert not [p for m, p, _ in hub.requests if m == "GET" and p.endswith((".safetensors", ".bin", ".pt"))]
