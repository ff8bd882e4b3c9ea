"""From nothing to a model directory: licences, plan, disk check, download, convert, assemble, verify.

Each component folder is written under a temporary name and renamed when complete, so a folder
that exists is finished: a re-run skips its downloads and its conversion. Downloads live in
`DIR/downloads/` until the component made from them is written (kept with `keep_sources`).
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Callable

from models.config import CONFIG_FILE

from .fetch import FetchError, RemoteFile, bytes_missing, check_disk, default_endpoint, download, human, plan
from .release import GROUPS, Release

DOWNLOADS = "downloads"
# download part -> the component (attribute of models.config.Components) made from it
COMPONENT_OF = {"nextgpt": "nextgpt", "llama": "llm", "vicuna_delta": "llm", "imagebind": "encoder",
                "image": "image", "audio": "audio", "video": "video"}
HF_LOCAL_CACHE = ".cache"  # huggingface_hub's bookkeeping inside a local_dir


def licences(release: Release, groups) -> str:
    lines = [f"Before downloading {release.name}, note the licences of its parts:"]
    seen = set()
    for part in release.parts(groups):
        if part.licence not in seen:
            seen.add(part.licence)
            lines.append(f"  - {part.licence}")
    lines.append("By continuing you confirm you may use them under these terms.")
    return "\n".join(lines)


def component_dir(dest: Path, release: Release, part_name: str) -> Path:
    return dest / getattr(release.components, COMPONENT_OF[part_name])


def pending_parts(release: Release, dest: Path, groups) -> list[str]:
    """Parts whose component folder is not yet written."""
    return [p.name for p in release.parts(groups) if not component_dir(dest, release, p.name).is_dir()]


def output_bytes(files: list[RemoteFile]) -> int:
    """What conversion will write beside the downloads: converted copies of pickles, the merged LLM."""
    return sum(f.size or 0 for f in files
               if f.path.endswith((".pt", ".pth", ".bin")) or (f.part == "llama" and f.path.endswith(".safetensors")))


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def _fresh(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def assemble_nextgpt(src: Path, out: Path) -> None:
    """The release's tokenizer files as they are, and its checkpoint converted to safetensors."""
    from models.checkpoint import CHECKPOINT_FILE

    from .convert import convert_checkpoint

    tmp = _fresh(out)
    files = [p for p in src.rglob("*") if p.is_file() and HF_LOCAL_CACHE not in p.relative_to(src).parts]
    for path in files:
        if path.suffix != ".pt":
            shutil.copy2(path, tmp / path.name)
    convert_checkpoint(next(p for p in files if p.suffix == ".pt"), tmp / CHECKPOINT_FILE)
    _publish(tmp, out)


def assemble_encoder(src: Path, out: Path, kwargs: dict) -> None:
    from .convert import convert_imagebind

    tmp = _fresh(out)
    convert_imagebind(next(src.glob("*.pth")), tmp, kwargs)
    _publish(tmp, out)


def assemble_decoder(src: Path, out: Path, keep_source: bool = False) -> None:
    """A diffusers download becomes the component as it is, with fp16 variants renamed to the names
    the loader reads and pickled weights converted."""
    from .convert import canonicalize_variants, convert_bin_folder

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if keep_source:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(HF_LOCAL_CACHE))
    else:
        src.replace(tmp)  # a rename costs no disk space
    shutil.rmtree(tmp / HF_LOCAL_CACHE, ignore_errors=True)
    for folder in [tmp] + sorted(p for p in tmp.iterdir() if p.is_dir()):
        canonicalize_variants(folder)
        convert_bin_folder(folder)
    _publish(tmp, out)


def assemble(release: Release, dest: Path, groups, keep_sources: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> None:
    """Write every pending component from the downloads, then nextgpt.json."""
    from .delta import apply_delta

    downloads = dest / DOWNLOADS
    pending = set(pending_parts(release, dest, groups))
    steps = [
        ("nextgpt", lambda: assemble_nextgpt(downloads / "nextgpt", component_dir(dest, release, "nextgpt")), ["nextgpt"]),
        ("llama", lambda: apply_delta(downloads / "llama", downloads / "vicuna_delta",
                                      component_dir(dest, release, "llama"), progress=progress), ["llama", "vicuna_delta"]),
        ("imagebind", lambda: assemble_encoder(downloads / "imagebind", component_dir(dest, release, "imagebind"),
                                               release.imagebind_kwargs()), ["imagebind"]),
    ] + [(m, (lambda m=m: assemble_decoder(downloads / m, component_dir(dest, release, m), keep_sources)), [m])
         for m in ("image", "audio", "video")]
    for name, run, sources in steps:
        if name not in pending:
            continue
        log(f"assembling {COMPONENT_OF[name]} ...")
        run()
        if not keep_sources:
            for source in sources:
                shutil.rmtree(downloads / source, ignore_errors=True)
    release.config().save(dest)
    leftovers = [p for p in downloads.glob("*") if p.name != ".verified.json"] if downloads.exists() else []
    if not keep_sources and not leftovers:
        shutil.rmtree(downloads, ignore_errors=True)


def fetch_release(release: Release, dest: Path, groups=GROUPS, *, endpoint: str | None = None, token=None,
                  confirm: Callable[[], bool] | None = None, keep_sources: bool = False,
                  check_space: bool = True, dry_run: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> list[RemoteFile]:
    """Download what is missing and assemble `dest`; returns the planned downloads."""
    dest, endpoint = Path(dest), endpoint or default_endpoint()
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise FetchError(f"unknown part(s) {sorted(unknown)}; choose among {', '.join(GROUPS)}")
    pending = pending_parts(release, dest, groups)
    if not pending and (dest / CONFIG_FILE).is_file():
        log(f"{dest} already holds every requested part")
        return []
    log(licences(release, groups))
    if confirm is not None and not confirm():
        raise FetchError("nothing was downloaded: the licences were not accepted")
    done = {p.name for p in release.parts(groups)} - set(pending)
    files = plan(release, groups, dest / DOWNLOADS, endpoint, token, skip=done)
    needed = bytes_missing(files) + output_bytes(files)
    log(f"{len(files)} files, {human(sum(f.size or 0 for f in files))} in all, {human(bytes_missing(files))} "
        f"still to download; about {human(needed)} of disk needed")
    if check_space:
        check_disk(dest, needed)
    if dry_run:
        return files
    download(files, dest / DOWNLOADS, endpoint, token, progress=progress, log=log)
    with assembly_errors(dest):
        assemble(release, dest, groups, keep_sources=keep_sources, progress=progress, log=log)
    return files


@contextlib.contextmanager
def assembly_errors(dest: Path):
    """Conversion failures in plain words; the downloads stay, so a re-run only redoes the conversion."""
    from .convert import ConvertError
    from .delta import DeltaError

    try:
        yield
    except (ConvertError, DeltaError) as err:
        raise FetchError(f"the downloaded files could not be assembled: {err}") from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise FetchError(f"the disk filled up while converting in {dest}: free some space and run the same "
                         "command again (downloads and finished components are kept).") from None

