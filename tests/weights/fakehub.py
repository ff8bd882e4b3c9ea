"""A stand-in Hugging Face hub on loopback, for the real huggingface_hub client.

It answers the calls `HfApi.repo_info`, `HfApi.list_repo_tree` and `hf_hub_download` make
(huggingface_hub 2.x): `GET /api/models/{repo}/revision/{rev}`, `GET /api/models/{repo}/tree/{rev}`,
`HEAD|GET /{repo}/resolve/{rev}/{path}`. Small files answer directly with their git blob id as
ETag; LFS files answer with a 302 to a "CDN" on another host name (localhost vs 127.0.0.1) with
X-Linked-Etag (the sha256) and X-Linked-Size, as the hub does. Plain URLs live under /files/.
Every response carries X-Repo-Commit; Range requests get 206. Faults are injected per file.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".model", ".msgpack", ".ckpt")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated_tokens: set[str] | None = None  # None: public; else the tokens granted access

    @property
    def commit(self) -> str:
        h = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            h.update(path.encode() + hashlib.sha256(self.files[path]).digest())
        return h.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    urls: dict[str, bytes] = field(default_factory=dict)  # /files/{name}
    # Faults, keyed "{repo_id}/{path}" for hub files and "url:{name}" for plain URLs:
    truncate: dict[str, list[int]] = field(default_factory=dict)  # bytes sent by each of the next GETs
    corrupt: set[str] = field(default_factory=set)  # served with flipped bytes (right length)
    absent: set[str] = field(default_factory=set)  # listed, but 404 on resolve
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    statuses: list[int] = field(default_factory=list)  # of every response, in order

    def add(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = Repo(repo_id, dict(files))

    # --- serving ---------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"  # another host name: the client treats it as a CDN
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(req.path)
        path = unquote(url.path)
        self.requests.append(("HEAD" if head else "GET", path, req.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo = self.repos.get(f"{parts[2]}/{parts[3]}")
            if repo is None:
                return self.send(req, 401, {"X-Error-Code": "RepoNotFound"}, b"{}", head)
            if parts[4] == "revision":
                return self.send_json(req, self.info(repo), head)
            if parts[4] == "tree":
                return self.send_json(req, self.tree(repo), head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve(req, f"{parts[0]}/{parts[1]}", "/".join(parts[4:]), head)
        if parts[0] == "cdn" and len(parts) == 2:
            key, data = next(((f"{r.repo_id}/{p}", d) for r in self.repos.values() for p, d in r.files.items()
                              if hashlib.sha256(d).hexdigest() == parts[1]), ("", None))
            return self.serve_bytes(req, key, data, head, {"ETag": f'"{parts[1]}"'})
        if parts[0] == "files" and len(parts) == 2:
            data = self.urls.get(parts[1])
            etag = f'"{hashlib.md5(data).hexdigest()}"' if data is not None else ""
            return self.serve_bytes(req, f"url:{parts[1]}", data, head, {"ETag": etag})
        self.send(req, 404, {}, b"not found", head)

    def info(self, repo: Repo) -> dict:
        return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                "gated": "manual" if repo.gated_tokens is not None else False, "disabled": False,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)]}

    def tree(self, repo: Repo) -> list[dict]:
        entries, folders = [], set()
        for path, data in sorted(repo.files.items()):
            folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
            entry = {"type": "file", "oid": git_oid(data), "size": len(data), "path": path}
            if repo.is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries

    def resolve(self, req, repo_id: str, path: str, head: bool) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.send(req, 401, {"X-Error-Code": "RepoNotFound"}, b"", head)
        commit = {"X-Repo-Commit": repo.commit}
        if repo.gated_tokens is not None:
            auth = req.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip()
            if not token:
                return self.send(req, 401, {**commit, "X-Error-Code": "GatedRepo",
                                            "X-Error-Message": f"Access to model {repo_id} is restricted."}, b"", head)
            if token not in repo.gated_tokens:
                return self.send(req, 403, {**commit, "X-Error-Code": "GatedRepo",
                                            "X-Error-Message": "you are not in the authorized list"}, b"", head)
        data = repo.files.get(path)
        if data is None or f"{repo_id}/{path}" in self.absent:
            return self.send(req, 404, {**commit, "X-Error-Code": "EntryNotFound"}, b"", head)
        if repo.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            return self.send(req, 302, {**commit, "Location": f"{self.cdn}/cdn/{sha}", "X-Linked-Etag": f'"{sha}"',
                                        "X-Linked-Size": str(len(data)), "ETag": f'"{git_oid(data)}"'}, b"", head)
        self.serve_bytes(req, f"{repo_id}/{path}", data, head, {**commit, "ETag": f'"{git_oid(data)}"'})

    def serve_bytes(self, req, key: str, data: bytes | None, head: bool, headers: dict) -> None:
        if data is None:
            return self.send(req, 404, {}, b"", head)
        if key in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        ranged = req.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0])
            if start >= len(data):
                return self.send(req, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        cut = self.truncate.get(key)
        if cut and not head:
            limit = cut.pop(0)
            return self.send(req, 206 if start else 200, {**headers, "Accept-Ranges": "bytes"}, body, head,
                             declared=len(body), limit=limit)
        self.send(req, 206 if start else 200, {**headers, "Accept-Ranges": "bytes"}, body, head)

    def send(self, req, status: int, headers: dict, body: bytes, head: bool, declared: int | None = None,
             limit: int | None = None) -> None:
        self.statuses.append(status)
        req.send_response(status)
        for name, value in headers.items():
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(body) if declared is None else declared))
        req.end_headers()
        if head:
            return
        if limit is not None:  # an interrupted transfer: fewer bytes than announced, then hang up
            req.wfile.write(body[:limit])
            req.wfile.flush()
            req.close_connection = True
            req.connection.shutdown(1)
            return
        req.wfile.write(body)

    def send_json(self, req, obj, head: bool) -> None:
        self.send(req, 200, {"Content-Type": "application/json"}, json.dumps(obj).encode(), head)
