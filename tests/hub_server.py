"""A small local stand-in for the Hugging Face Hub's write API, for upload tests over real HTTP.

It implements exactly what `huggingface_hub` 2.x calls when pushing a folder:

    POST /api/repos/create                          -> {"url"}            (409 if it exists)
    POST /api/models/{repo_id}/branch/{branch}      -> {}                 (409 if it exists)
    POST /api/models/{repo_id}/preupload/{revision} -> every file "regular" (contents inline)
    POST /api/models/{repo_id}/commit/{revision}    -> NDJSON: header + base64 files + deletions
    POST /api/validate-yaml                         -> README metadata checks ({errors, warnings})
    GET  /api/models/{repo_id}[/revision/{rev}]     -> repo info (id, sha, private, siblings)

Received files are kept in memory, byte for byte (`files(repo_id, revision)`), and can be written
out as a git repository in olah's mirror layout (`export_git_mirror`) so that olah serves them
back for download tests. Safety: binds to 127.0.0.1 only, refuses bodies above `max_body_bytes`
and requests beyond `max_requests`, and shuts itself down after `lifetime_s` seconds.

`OlahMirror` runs olah (a read-only Hub mirror) over such git repos in its own process group and
stops the whole group (olah and the `timeout` guard around it) when it exits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

REPO_ID = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
ROUTES = {
    ("POST", re.compile(r"^/api/repos/create$")): "create_repo",
    ("POST", re.compile(rf"^/api/models/{REPO_ID}/branch/(?P<revision>[^/]+)$")): "create_branch",
    ("POST", re.compile(rf"^/api/models/{REPO_ID}/preupload/(?P<revision>[^/]+)$")): "preupload",
    ("POST", re.compile(rf"^/api/models/{REPO_ID}/commit/(?P<revision>[^/]+)$")): "commit",
    ("POST", re.compile(r"^/api/validate-yaml$")): "validate_yaml",
    ("GET", re.compile(rf"^/api/models/{REPO_ID}(/revision/(?P<revision>[^/]+))?$")): "repo_info",
}
ALLOWED_METADATA_TYPES = {
    "library_name": str,
    "license": str,
    "pipeline_tag": str,
    "tags": list,
    "datasets": list,
    "base_model": (str, list),
    "model-index": list,
}


@dataclass
class StoredRepo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=dict)
    commit_messages: list[str] = field(default_factory=list)


def validate_card_metadata(content: str) -> list[str]:
    """Errors the Hub would report for a README's YAML front matter (the checks we rely on)."""
    match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
    if match is None:
        return []
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        return [f"YAML does not parse: {error}"]
    if not isinstance(metadata, dict):
        return ["metadata must be a mapping"]
    errors = []
    for key, expected in ALLOWED_METADATA_TYPES.items():
        if key in metadata and not isinstance(metadata[key], expected):
            errors.append(f'"{key}" must be of type {expected}')
    for key in ("tags", "datasets"):
        if isinstance(metadata.get(key), list) and not all(isinstance(item, str) for item in metadata[key]):
            errors.append(f'"{key}" must be a list of strings')
    for entry in metadata.get("model-index") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in entry.get("results") or []:
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if not isinstance(task.get("type"), str):
                errors.append('"model-index[].results[].task.type" is required')
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append('"model-index[].results[].dataset" needs "type" and "name"')
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append('"model-index[].results[].metrics" must be a non-empty list')
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    errors.append('"model-index[].results[].metrics[]" needs "type" and "value"')
    return errors


class HubServer:
    """The local Hub write API; use as a context manager (``with HubServer() as hub: hub.url``).

    Args:
        expected_token: when set, every request must carry ``Authorization: Bearer <token>``
            (401 otherwise); the token itself is never stored.
        lifetime_s: the server shuts down by itself after this many seconds.
        max_body_bytes: larger request bodies are refused with 413.
        max_requests: requests beyond this count are refused with 429.
    """

    def __init__(
        self,
        expected_token: str | None = None,
        lifetime_s: float = 120.0,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_requests: int = 500,
    ):
        self.expected_token = expected_token
        self.lifetime_s = lifetime_s
        self.max_body_bytes = max_body_bytes
        self.max_requests = max_requests
        self.repos: dict[str, StoredRepo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.authorized_requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ----- life cycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # seconds a client may stall mid-request

            def log_message(self, *args):  # keep test output (and tokens) out of stderr
                return None

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- stored data --------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of a branch as received, path -> bytes."""
        return dict(self.repos[repo_id].branches[revision])

    def export_git_mirror(self, repo_id: str, mirrors_root: str | Path) -> Path:
        """Write the repo as a git repository at ``<mirrors_root>/models/<org>/<name>`` (olah's layout).

        Every branch becomes a git branch holding exactly the received files.
        """
        stored = self.repos[repo_id]
        path = Path(mirrors_root) / "models" / repo_id
        path.mkdir(parents=True, exist_ok=False)
        git = ["git", "-c", "user.name=hub-server", "-c", "user.email=hub-server@localhost", "-c", "commit.gpgsign=false"]
        subprocess.run([*git, "init", "-q", "-b", "main"], cwd=path, check=True)
        branch_order = ["main"] + sorted(name for name in stored.branches if name != "main")
        for branch in branch_order:
            if branch != "main":
                subprocess.run([*git, "checkout", "-q", "-b", branch, "main"], cwd=path, check=True)
            for existing in path.iterdir():
                if existing.name != ".git":
                    subprocess.run([*git, "rm", "-q", "-r", "--cached", "--ignore-unmatch", existing.name], cwd=path, check=True)
                    _remove(existing)
            for relative, content in stored.branches[branch].items():
                target = path / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            subprocess.run([*git, "add", "-A"], cwd=path, check=True)
            subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", f"{repo_id}@{branch}"], cwd=path, check=True)
        subprocess.run([*git, "checkout", "-q", "main"], cwd=path, check=True)
        return path

    # ----- request handling ---------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        with self._lock:
            over_limit = len(self.requests) >= self.max_requests
        if over_limit:
            return self._reply(request, method, path, 429, {"error": "request limit reached"})
        if self.expected_token is not None:
            if request.headers.get("Authorization") != f"Bearer {self.expected_token}":
                return self._reply(request, method, path, 401, {"error": "Invalid credentials in Authorization header"})
            with self._lock:
                self.authorized_requests += 1
        length = int(request.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes:
            return self._reply(request, method, path, 413, {"error": "request body too large"})
        body = request.rfile.read(length) if length else b""
        for (route_method, pattern), name in ROUTES.items():
            match = pattern.match(path)
            if match and route_method == ("GET" if method == "HEAD" else method):
                parameters = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                try:
                    status, payload = getattr(self, f"_{name}")(body, **parameters)
                except (ValueError, KeyError, json.JSONDecodeError) as error:
                    status, payload = 400, {"error": f"bad request: {error}"}
                return self._reply(request, method, path, status, payload)
        return self._reply(request, method, path, 404, {"error": f"no route for {method} {path}"})

    def _reply(self, request, method: str, path: str, status: int, payload: dict) -> None:
        with self._lock:
            self.requests.append((method, path, status))
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        if status >= 400:
            request.send_header("X-Error-Message", str(payload.get("error", "")))
        request.end_headers()
        if method != "HEAD":
            request.wfile.write(data)

    def _repo_or_404(self, repo_id: str):
        if repo_id not in self.repos:
            return None, (404, {"error": f"Repository {repo_id} not found"})
        return self.repos[repo_id], None

    def _create_repo(self, body: bytes):
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        if repo_type != "model":
            return 400, {"error": f"only model repos are served, got type {repo_type!r}"}
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.repos[repo_id] = StoredRepo(private=private)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _create_branch(self, body: bytes, repo_id: str, revision: str):
        stored, error = self._repo_or_404(repo_id)
        if error:
            return error
        with self._lock:
            if revision in stored.branches:
                return 409, {"error": f"Branch {revision} already exists"}
            start = (json.loads(body) if body else {}).get("startingPoint") or "main"
            stored.branches[revision] = dict(stored.branches[start])
        return 200, {}

    def _preupload(self, body: bytes, repo_id: str, revision: str):
        stored, error = self._repo_or_404(repo_id)
        if error:
            return error
        if revision not in stored.branches:
            return 404, {"error": f"Revision {revision} not found"}
        files = json.loads(body)["files"]
        return 200, {
            "files": [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for item in files]
        }

    def _commit(self, body: bytes, repo_id: str, revision: str):
        stored, error = self._repo_or_404(repo_id)
        if error:
            return error
        if revision not in stored.branches:
            return 404, {"error": f"Revision {revision} not found"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise ValueError("the NDJSON commit must start with a header line")
        with self._lock:
            files = dict(stored.branches[revision])
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    prefix = value["path"].rstrip("/")
                    files = {p: c for p, c in files.items() if p != prefix and not p.startswith(prefix + "/")}
                else:
                    raise ValueError(f"unsupported commit operation {line['key']!r} (only regular uploads are served)")
            digest = hashlib.sha1(lines[0]["value"].get("summary", "").encode())
            for relative in sorted(files):
                digest.update(relative.encode() + hashlib.sha256(files[relative]).digest())
            digest.update(stored.heads.get(revision, "").encode())
            oid = digest.hexdigest()
            stored.branches[revision] = files
            stored.heads[revision] = oid
            stored.commit_messages.append(lines[0]["value"].get("summary", ""))
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _validate_yaml(self, body: bytes):
        payload = json.loads(body)
        errors = validate_card_metadata(payload.get("content", ""))
        if errors:
            return 400, {"errors": [{"message": message} for message in errors], "warnings": [], "error": "; ".join(errors)}
        return 200, {"errors": [], "warnings": []}

    def _repo_info(self, body: bytes, repo_id: str, revision: str = "main"):
        stored, error = self._repo_or_404(repo_id)
        if error:
            return error
        if revision not in stored.branches:
            return 404, {"error": f"Revision {revision} not found"}
        return 200, {
            "id": repo_id,
            "modelId": repo_id,
            "sha": stored.heads.get(revision),
            "private": stored.private,
            "siblings": [{"rfilename": relative} for relative in sorted(stored.branches[revision])],
        }


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the process group `process` leads (started with ``start_new_session=True``), wait,
    then kill what is left; killing only `process` would orphan its children."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children that ignored SIGTERM, or outlived the leader
    except ProcessLookupError:
        pass
    process.wait(timeout=grace_s)


class OlahMirror:
    """olah in offline mode serving the git repos under `mirrors` (``with OlahMirror(...) as url:``).

    Args:
        mirrors: folder with ``models/<org>/<name>`` git repositories (`HubServer.export_git_mirror`).
        workdir: folder for olah's config, repos cache and logs.
        probe_repo: a repo id served, polled until olah answers.
        lifetime_s: `timeout` kills olah after this many seconds even if the test process dies.
    """

    def __init__(self, mirrors: Path, workdir: Path, probe_repo: str, lifetime_s: int = 150):
        self.mirrors, self.workdir, self.probe_repo, self.lifetime_s = Path(mirrors), Path(workdir), probe_repo, lifetime_s
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        port = free_port()
        config = self.workdir / "olah.toml"
        config.write_text(textwrap.dedent(f"""
            [basic]
            host = "127.0.0.1"
            port = {port}
            repos-path = "{self.workdir / 'olah-repos'}"
            mirrors-path = ["{self.mirrors}"]
            [accessibility]
            offline = true
        """))
        olah = Path(sys.executable).parent / "olah-cli"
        self.process = subprocess.Popen(
            ["timeout", str(self.lifetime_s), str(olah), "-c", str(config), "--log-path", str(self.workdir / "olah-logs")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/models/{self.probe_repo}/revision/main", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("olah did not start within 40 s")

    def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            stop_process_group(process)

    def __exit__(self, *exc) -> None:
        self.stop()
