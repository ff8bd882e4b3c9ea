"""Generated media kept on disk for a time to live, then deleted.

Each file gets an unguessable id (`file-<32 hex>`); the index lives in memory and the sweeper
also removes files it does not know (left by an earlier run) once they are older than the TTL.
"""
from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .codecs import EncodedMedia

log = logging.getLogger("nextgpt.server")
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredFile:
    id: str
    path: Path
    mime: str
    created: float
    expires_at: float

    @property
    def size(self) -> int:
        return self.path.stat().st_size


class FileStore:
    def __init__(self, directory: Path | None, ttl_s: float):
        self.owned = directory is None  # a temp dir we made is removed at close
        self.dir = Path(tempfile.mkdtemp(prefix="nextgpt-files-")) if directory is None else Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()

    def save(self, media: EncodedMedia, ttl_s: float | None = None) -> StoredFile:
        """Write the bytes (call from a worker thread: it touches the disk)."""
        file_id = f"file-{uuid.uuid4().hex}"
        path = self.dir / f"{file_id}.{media.extension}"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(media.data)
        tmp.replace(path)
        now = time.time()
        stored = StoredFile(file_id, path, media.mime, now, now + (ttl_s or self.ttl_s))
        with self._lock:
            self._files[file_id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        if not FILE_ID.match(file_id):
            return None
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None or stored.expires_at <= time.time() or not stored.path.is_file():
            return None
        return stored

    def sweep(self) -> int:
        """Delete expired files (and unknown ones older than the TTL); returns how many."""
        now = time.time()
        with self._lock:
            expired = [f for f in self._files.values() if f.expires_at <= now]
            for f in expired:
                del self._files[f.id]
            known = {f.path for f in self._files.values()}
        removed = 0
        for f in expired:
            f.path.unlink(missing_ok=True)
            removed += 1
        for path in self.dir.glob("file-*"):
            try:
                if path not in known and path.stat().st_mtime + self.ttl_s <= now:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    async def sweep_forever(self) -> None:
        interval = max(0.5, min(60.0, self.ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a sweep must never kill the loop
                log.exception("file sweep failed")

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)
