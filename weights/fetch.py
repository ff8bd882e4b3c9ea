"""Downloading the release's parts: hub repositories through huggingface_hub, ImageBind over HTTPS.

Every file is checked once on disk against what its source publishes: the hub lists a sha256 for
each LFS file and a git blob id for each small one; a bad file is deleted so that running the
same command again downloads it afresh. Files already downloaded and checked are skipped
without a network call. Failures surface as `FetchError` with a message meant for a person.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tqdm.auto import tqdm

from .release import HubPart, Release, UrlPart
from .select import find_file, select_diffusers, select_transformers

GB = 1e9
VERIFIED_FILE = ".verified.json"  # in the downloads folder: files whose checksum already passed


class FetchError(RuntimeError):
    """Something a person must act on, said in plain words."""


@dataclass
class RemoteFile:
    part: str
    source: str  # repo id, or the URL
    path: str  # path inside the repository (the file name for a URL)
    dest: Path
    size: int | None
    sha256: str | None = None  # LFS files, or a published checksum
    git_oid: str | None = None  # small hub files: the git blob id (sha1 of "blob <size>\0" + bytes)
    revision: str | None = None  # the commit a hub file is taken at


class QuietTqdm(tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _network_errors() -> tuple[type[BaseException], ...]:
    errors = [httpx.TransportError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):  # huggingface_hub 1.x+ talks through httpx2
        import httpx2
        errors.append(httpx2.TransportError)
    return tuple(errors)


@contextlib.contextmanager
def plain_errors(source: str, endpoint: str, token=None):
    """Turn the client libraries' exceptions into FetchError messages a person can act on."""
    from huggingface_hub import errors as hub, get_token

    page = f"{endpoint}/{source}"
    try:
        yield
    except FetchError:
        raise
    except hub.GatedRepoError as err:
        if err.response is not None and err.response.status_code == 403:
            raise FetchError(f"{source} is gated and your Hugging Face token has no access to it: open {page}, "
                             "accept its licence as the token's user, then run the same command again.") from None
        sent = bool(token) or (token is None and get_token())  # token=None: huggingface_hub's own lookup
        how = "your token was refused" if sent else "no Hugging Face token was found"
        raise FetchError(f"{source} is gated and {how}: accept its licence at {page}, then log in with "
                         "`hf auth login` (or set HF_TOKEN) and run the same command again.") from None
    except hub.RepositoryNotFoundError:
        raise FetchError(f"repository {source} was not found on {endpoint} (or it is private and your token "
                         "cannot see it).") from None
    except hub.RevisionNotFoundError:
        raise FetchError(f"{source} has no such revision.") from None
    except hub.RemoteEntryNotFoundError as err:
        raise FetchError(f"a file the server needs is missing from {source}: {err.response.url}") from None
    except hub.OfflineModeIsEnabled:
        raise FetchError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it and run again.") from None
    except hub.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "an error"
        raise FetchError(f"{endpoint} answered {status} for {source}: {_first_line(err)}. "
                         "Try again later; finished files are kept.") from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise FetchError(f"the disk filled up while downloading {source}: free some space (or pick another "
                             "--dir) and run the same command again; finished files are kept.") from None
        network = isinstance(err, _network_errors() + (hub.LocalEntryNotFoundError,))
        if not network and "Consistency check failed" not in str(err):
            raise
        raise FetchError(_network_message(source, endpoint, err)) from None
    except _network_errors() as err:
        raise FetchError(_network_message(source, endpoint, err)) from None


def _network_message(source: str, endpoint: str, err: BaseException) -> str:
    return (f"network failure while downloading {source} from {endpoint}: {_first_line(err)}. "
            "Check your connection (and proxy), then run the same command again to resume.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# --- what to download -----------------------------------------------------------------------------
def plan_hub_part(part: HubPart, downloads: Path, endpoint: str, token) -> list[RemoteFile]:
    """List the repository at one commit and choose the files the server needs."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    with plain_errors(part.repo_id, endpoint, token):
        commit = api.repo_info(part.repo_id, revision=part.revision).sha
        listing = {f.path: f for f in api.list_repo_tree(part.repo_id, recursive=True, revision=commit)
                   if isinstance(f, RepoFile)}
    paths = sorted(listing)
    if part.kind == "files":
        chosen = [find_file(paths, name) for name in part.files]
        missing = [n for n, c in zip(part.files, chosen) if c is None]
        if missing:
            raise FetchError(f"{part.repo_id} no longer holds {', '.join(missing)} (it holds: "
                             f"{', '.join(paths[:12])}{' ...' if len(paths) > 12 else ''}).")
    elif part.kind == "transformers":
        chosen = select_transformers(paths)
    else:
        index_file = RemoteFile(part.name, part.repo_id, "model_index.json", downloads / part.name / "model_index.json",
                                None, revision=commit)
        _download_hub(index_file, endpoint, token, progress=False)
        model_index = json.loads(index_file.dest.read_text())
        chosen = select_diffusers(paths, model_index, part.skip_components)
    if not any(p.endswith((".safetensors", ".bin", ".pt", ".pth")) for p in chosen):
        raise FetchError(f"{part.repo_id} holds no weights the server can load (files: {', '.join(paths[:12])}).")
    out = []
    for path in chosen:
        entry = listing[path]
        out.append(RemoteFile(part.name, part.repo_id, path, downloads / part.name / path, entry.size,
                              sha256=entry.lfs.sha256 if entry.lfs else None,
                              git_oid=None if entry.lfs else entry.blob_id, revision=commit))
    return out


def plan_url_part(part: UrlPart, downloads: Path) -> RemoteFile:
    """The file's size from a HEAD request (for the disk check and the progress bar)."""
    with plain_errors(part.url, urlsplit(part.url).netloc):
        response = httpx.head(part.url, follow_redirects=True, timeout=30)
    if response.status_code >= 400:
        raise FetchError(f"{part.url} answered {response.status_code}: the file is not available there.")
    size = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
    return RemoteFile(part.name, part.url, part.filename, downloads / part.name / part.filename, size, part.sha256)


def plan(release: Release, groups, downloads: Path, endpoint: str, token, skip=()) -> list[RemoteFile]:
    files = []
    for part in release.parts(groups):
        if part.name in skip:
            continue
        if isinstance(part, HubPart):
            files += plan_hub_part(part, downloads, endpoint, token)
        else:
            files.append(plan_url_part(part, downloads))
    return files


# --- disk -----------------------------------------------------------------------------------------
def bytes_missing(files: list[RemoteFile]) -> int:
    """Bytes still to download (a partial ImageBind download counts what it lacks)."""
    total = 0
    for f in files:
        have = f.dest.stat().st_size if f.dest.is_file() else 0
        partial = _part_path(f.dest)
        have = max(have, partial.stat().st_size if partial.is_file() else 0)
        total += max((f.size or 0) - have, 0)
    return total


def check_disk(folder: Path, needed: int) -> None:
    """Refuse to start a download that cannot fit, rather than fail hours into it."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    margin = 1 * GB  # filesystems misbehave when full; keep some room
    if needed + margin > free:
        raise FetchError(f"not enough disk space in {folder}: this needs about {human(needed)} (downloads "
                         f"plus converted files, and {human(margin)} to spare) and {human(free)} is free. "
                         "Free some space or choose another --dir.")


def human(nbytes: int | None) -> str:
    if nbytes is None:
        return "size unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


# --- checksums ------------------------------------------------------------------------------------
def file_digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    h = hashlib.new(algorithm)
    h.update(prefix)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_ok(f: RemoteFile) -> tuple[bool, str]:
    """Compare the file on disk with what its source publishes; (ok, what was compared)."""
    size = f.dest.stat().st_size
    if f.size is not None and size != f.size:
        return False, f"size {size} bytes, expected {f.size}"
    if f.sha256:
        got = file_digest(f.dest, "sha256")
        return got == f.sha256, f"sha256 {got}, expected {f.sha256}"
    if f.git_oid:
        got = file_digest(f.dest, "sha1", b"blob %d\0" % size)
        return got == f.git_oid, f"git blob id {got}, expected {f.git_oid}"
    return True, "size only (the source publishes no checksum)"


class Verified:
    """Files whose checksum passed, keyed by path, size and mtime: a re-run does not rehash 30 GB."""

    def __init__(self, downloads: Path):
        self.path = downloads / VERIFIED_FILE
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}

    @staticmethod
    def _stamp(f: RemoteFile) -> list:
        st = f.dest.stat()
        return [st.st_size, st.st_mtime_ns, f.sha256 or f.git_oid or ""]

    def has(self, f: RemoteFile) -> bool:
        return f.dest.is_file() and self.entries.get(str(f.dest)) == self._stamp(f)

    def add(self, f: RemoteFile) -> None:
        self.entries[str(f.dest)] = self._stamp(f)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1))


def reject(f: RemoteFile, why: str) -> None:
    """Delete a file that failed its checksum (and huggingface_hub's note of it), then stop."""
    f.dest.unlink(missing_ok=True)
    local_dir = f.dest.parents[len(Path(f.path).parts) - 1]
    (local_dir / ".cache" / "huggingface" / "download" / f"{f.path}.metadata").unlink(missing_ok=True)
    raise FetchError(f"{f.path} from {f.source} is corrupted ({why}); it was deleted. Run the same command "
                     "again to download it afresh.")


# --- downloading ----------------------------------------------------------------------------------
def _download_hub(f: RemoteFile, endpoint: str, token, progress: bool) -> None:
    from huggingface_hub import hf_hub_download

    local_dir = f.dest.parents[len(Path(f.path).parts) - 1]
    with plain_errors(f.source, endpoint, token):
        hf_hub_download(f.source, f.path, revision=f.revision, local_dir=local_dir, endpoint=endpoint,
                        token=token, tqdm_class=None if progress else QuietTqdm)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download_url(f: RemoteFile, progress: bool = True, attempts: int = 3) -> None:
    """Fetch `f.source` into `f.dest`, resuming from a `.part` file left by an earlier run."""
    for attempt in range(attempts):
        try:
            _download_url_once(f, progress)
            return
        except _network_errors() as err:
            if attempt < attempts - 1:
                time.sleep(1 + attempt)  # a dropped connection often recovers; the next try resumes
                continue
            if attempt == attempts - 1:
                part = _part_path(f.dest)
                have = part.stat().st_size if part.is_file() else 0
                raise FetchError(f"network failure while downloading {f.source}: {_first_line(err)}. Run the same "
                                 f"command again: it resumes from the {have} bytes already on disk.") from None


def _download_url_once(f: RemoteFile, progress: bool) -> None:
    part = _part_path(f.dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    etag_file = part.with_name(part.name + ".etag")
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if etag_file.is_file():  # resume only if the remote file is still the one we started on
            headers["If-Range"] = etag_file.read_text()
    with httpx.stream("GET", f.source, headers=headers, follow_redirects=True, timeout=60) as response:
        if response.status_code == 416 and f.size == have:  # the earlier run had every byte
            pass
        elif response.status_code >= 400:
            raise FetchError(f"{f.source} answered {response.status_code}; the file is not available there.")
        else:
            if response.status_code != 206:  # the server ignored the range, or the file changed: restart
                have = 0
            if "ETag" in response.headers:
                etag_file.write_text(response.headers["ETag"])
            _stream_to(response, part, have, f, progress)
    if f.size is not None and part.stat().st_size != f.size:
        raise httpx.RemoteProtocolError(f"got {part.stat().st_size} of {f.size} bytes")
    part.replace(f.dest)
    etag_file.unlink(missing_ok=True)


def _stream_to(response: httpx.Response, part: Path, have: int, f: RemoteFile, progress: bool) -> None:
    total = f.size or (have + int(response.headers.get("Content-Length", 0))) or None
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=f.path, disable=not progress)
    try:
        with open(part, "ab" if have else "wb") as out:
            for chunk in response.iter_bytes():  # as it arrives: an interruption keeps every byte received
                out.write(chunk)
                bar.update(len(chunk))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise FetchError(f"the disk filled up while downloading {f.path}: free some space and run the same "
                             "command again; it resumes where it stopped.") from None
        raise
    finally:
        bar.close()


def download(files: list[RemoteFile], downloads: Path, endpoint: str, token, progress: bool = True,
             log=print) -> None:
    """Download every file not yet on disk and checked; check each against its published checksum."""
    verified = Verified(downloads)
    for i, f in enumerate(files, 1):
        if verified.has(f):
            continue
        log(f"[{i}/{len(files)}] {f.source}: {f.path} ({human(f.size)})")
        if f.revision is None:
            download_url(f, progress)
        else:
            _download_hub(f, endpoint, token, progress)
        ok, why = checksum_ok(f)
        if not ok:
            reject(f, why)
        verified.add(f)


def default_endpoint() -> str:
    """huggingface_hub's endpoint: HF_ENDPOINT when set, else huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT

