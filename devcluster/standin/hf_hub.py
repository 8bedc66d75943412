"""A stand-in for the Hugging Face Hub: the HTTP subset that downloaders use, with fixture repos.

It serves what `huggingface_hub` (snapshot_download, hf_hub_download, model_info) and nim-agent's
standard-library downloader (nim_agent/hf_download.py) ask the real Hub, with the real Hub's status
codes and headers, so that both run unchanged against it (HF_ENDPOINT=<this server>). Python 3
standard library only. Run: `python3 hf_hub.py`.

Hub API (port HF_STANDIN_PORT)
  GET  /api/models/{repo}[/revision/{rev}]   model info: id, sha (the commit), private, gated,
       siblings [{rfilename}]; ?blobs=true adds size, blobId, lfs {size, sha256, pointerSize}
  GET  /api/models/{repo}/tree/{rev}[/{path}][?recursive=true]
                                             [{type: file|directory, oid, size, path, lfs}]
  HEAD|GET /{repo}/resolve/{rev}/{path}      a file. Small files: 200 with ETag (the git blob id,
       quoted), X-Repo-Commit, Content-Length, Accept-Ranges (GET honours `Range`). LFS files
       (*.safetensors, *.bin, *.pt, *.nemo, ... or > 10 MiB): 302 to a signed URL on the "CDN"
       port, with X-Linked-Etag (the sha256, quoted), X-Linked-Size and X-Repo-Commit, as the Hub
       answers; clients must not forward the token there, and the CDN logs whether one came.
  Errors as the Hub gives them (X-Error-Code / X-Error-Message headers, JSON {"error": ...}):
    no token, private or unknown repo  401 RepoNotFound (the Hub does not tell them apart)
    token not valid                    401, X-Error-Message "Invalid credentials in Authorization
                                       header" (also for public repos)
    valid token, unknown repo          404 RepoNotFound
    gated repo, file without access    401 GatedRepo (no token) / 403 GatedRepo (token)
    unknown revision / file            404 RevisionNotFound / 404 EntryNotFound
CDN (port HF_STANDIN_CDN_PORT): HEAD|GET /lfs/{sha256}?expires=..&signature=..; 403 when the
signature or expiry does not match (signed with a per-process key, as a CDN's URLs are).

Test controls (not part of the Hub):
  GET  /_standin/requests  the request log as JSON (Hub and CDN requests, not these controls):
                           server, method, path, status, auth (none | valid | invalid), bytes,
                           range
  POST /_standin/fail?count=N&status=503[&match=TEXT]
                           the next N Hub requests (whose path holds TEXT) fail with that status
  POST /_standin/bump?repo=ID  publish a new commit of that repo (new adapter weights, new sha)

Fixture repositories (ids by environment, defaults in brackets); every adapter repo holds
adapter_config.json + adapter_model.safetensors (small, valid safetensors) and files a good
downloader must leave alone: README.md, .gitattributes, training_args.bin, and a training
checkpoint folder checkpoint-100/ (its own adapter files and an optimizer.pt of
HF_STANDIN_CHECKPOINT_MIB [8] MiB):
  HF_STANDIN_PUBLIC_REPO      [standin/llama3-8b-lora-public]  public
  HF_STANDIN_PRIVATE_REPO     [standin/llama3-8b-lora-private] private: needs the token
  HF_STANDIN_GATED_REPO       [standin/llama3-8b-lora-gated]   gated: metadata public, files
                                                               refused (the token has no access)
  HF_STANDIN_NEMO_REPO        [standin/llama3-8b-lora-nemo]    a NeMo adapter (one .nemo file)
  HF_STANDIN_NO_ADAPTER_REPO  [standin/llama3-8b-base-only]    a model repo without adapter files
  HF_STANDIN_SERIES           [standin/llama3-8b-lora-eval-]   + 00, 01, ...: public adapters,
                                                               HF_STANDIN_SERIES_COUNT [12] of
                                                               them, each its own weights (an
                                                               evaluation loop's; 1 MiB
                                                               checkpoints)

Other settings
  HF_STANDIN_HOST [0.0.0.0]   listen address (pods on the real node reach the host at 10.244.0.1)
  HF_STANDIN_PORT [8090]      Hub port; HF_STANDIN_CDN_PORT [8091] CDN port (0: any free port)
  HF_STANDIN_TOKEN [hf_standin_valid_token]  the one valid token (Authorization: Bearer ...)
  HF_STANDIN_CDN_URL          base URL of the CDN as clients see it; default: the host name the
                              client used for the Hub, with the CDN port
  HF_STANDIN_FAIL_FIRST [0]   the first N Hub requests answer 503 (retry tests)
  HF_STANDIN_READY_FILE       once listening, write {"endpoint", "cdn", "pid"} as JSON there
Every request is logged to stdout, one line each; the token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import random
import secrets
import signal
import struct
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".nemo", ".h5", ".msgpack")
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their name
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"
BASE_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
_REQUEST_LOG_MAX = 10_000


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stdout.write(f"{stamp} hf-hub-standin: {message}\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------ fixture content


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer file that git stores in place of an LFS file."""
    digest = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n"
    ).encode()


def safetensors_bytes(tensors: dict[str, list[int]], seed: str) -> bytes:
    """A valid safetensors file of F16 tensors with these shapes, filled deterministically."""
    rng = random.Random(seed)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, shape in sorted(tensors.items()):
        count = 1
        for dim in shape:
            count *= dim
        data = rng.randbytes(count * 2)
        header[name] = {
            "dtype": "F16",
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the header is padded to 8 bytes, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def lora_tensors(rank: int, layers: int = 2, hidden: int = 64) -> dict[str, list[int]]:
    tensors = {}
    for layer in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = [rank, hidden]
            tensors[f"{prefix}.lora_B.weight"] = [hidden, rank]
    return tensors


def adapter_config(rank: int) -> bytes:
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": BASE_MODEL,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
    }
    return (json.dumps(config, indent=2) + "\n").encode()


GITATTRIBUTES = b"".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in LFS_SUFFIXES
)


def model_card(repo_id: str, what: str) -> bytes:
    return (
        f"---\nlibrary_name: peft\nbase_model: {BASE_MODEL}\nlicense: apache-2.0\n---\n\n"
        f"# {repo_id}\n\n{what} (a fixture of the nim-agent Hub stand-in).\n"
    ).encode()


def adapter_files(repo_id: str, generation: int, checkpoint_mib: int) -> dict[str, bytes]:
    seed = f"{repo_id}@{generation}"
    rng = random.Random(seed + "/extra")
    return {
        ".gitattributes": GITATTRIBUTES,
        "README.md": model_card(repo_id, f"A LoRA adapter for {BASE_MODEL}, revision {generation}"),
        "adapter_config.json": adapter_config(8),
        "adapter_model.safetensors": safetensors_bytes(lora_tensors(8), seed),
        "training_args.bin": rng.randbytes(4096),
        "checkpoint-100/adapter_config.json": adapter_config(8),
        "checkpoint-100/adapter_model.safetensors": safetensors_bytes(lora_tensors(8), seed + "/c"),
        "checkpoint-100/optimizer.pt": rng.randbytes(checkpoint_mib * 1024 * 1024),
    }


def nemo_files(repo_id: str, generation: int) -> dict[str, bytes]:
    """A NeMo adapter: a .nemo file (a tar archive of a config and weights)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        members = {
            "model_config.yaml": b"peft:\n  peft_scheme: lora\n  lora_tuning:\n    dim: 8\n",
            "model_weights.ckpt": random.Random(f"{repo_id}@{generation}").randbytes(16384),
        }
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return {
        ".gitattributes": GITATTRIBUTES,
        "README.md": model_card(repo_id, "A NeMo LoRA adapter"),
        "llama3-8b-lora.nemo": buffer.getvalue(),
    }


def base_model_files(repo_id: str) -> dict[str, bytes]:
    """A model repository without adapter files (a full model's layout, tiny)."""
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "model_type": "llama"}
    return {
        ".gitattributes": GITATTRIBUTES,
        "README.md": model_card(repo_id, "A base model, no adapter"),
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes({"lm_head.weight": [64, 64]}, repo_id),
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
    }


@dataclass
class Entry:
    path: str
    data: bytes
    blob_id: str  # git oid of what git stores: the file, or its LFS pointer
    sha256: str
    lfs: bool
    pointer_size: int


@dataclass
class Repo:
    repo_id: str
    kind: str  # adapter | nemo | base
    private: bool = False
    gated: bool = False
    generation: int = 1
    checkpoint_mib: int = 8
    created: str = "2026-01-05T10:00:00.000Z"
    files: dict[str, Entry] = field(default_factory=dict)
    sha: str = ""
    last_modified: str = ""

    def publish(self) -> None:
        """Build the files of the current generation and the commit sha that names them."""
        if self.kind == "adapter":
            raw = adapter_files(self.repo_id, self.generation, self.checkpoint_mib)
        elif self.kind == "nemo":
            raw = nemo_files(self.repo_id, self.generation)
        else:
            raw = base_model_files(self.repo_id)
        files = {}
        for path, data in sorted(raw.items()):
            is_lfs = path.endswith(LFS_SUFFIXES) or len(data) > LFS_THRESHOLD
            pointer = lfs_pointer(data) if is_lfs else b""
            files[path] = Entry(
                path=path,
                data=data,
                blob_id=git_blob_id(pointer if is_lfs else data),
                sha256=hashlib.sha256(data).hexdigest(),
                lfs=is_lfs,
                pointer_size=len(pointer),
            )
        self.files = files
        tree = "".join(f"{p} {e.blob_id}\n" for p, e in files.items())
        self.sha = hashlib.sha1(f"{self.repo_id}\n{self.generation}\n{tree}".encode()).hexdigest()
        day = 5 + self.generation
        self.last_modified = f"2026-01-{day:02d}T10:00:00.000Z"

    def revision_ok(self, rev: str) -> bool:
        return rev in ("main", self.sha)


class Hub:
    """Fixture repositories, the request log, the fault switch and the CDN signing key."""

    def __init__(self, env: dict[str, str]) -> None:
        self.token = env.get("HF_STANDIN_TOKEN", "hf_standin_valid_token")
        mib = int(env.get("HF_STANDIN_CHECKPOINT_MIB", "8") or 8)
        specs = [
            ("HF_STANDIN_PUBLIC_REPO", "standin/llama3-8b-lora-public", "adapter", False, False),
            ("HF_STANDIN_PRIVATE_REPO", "standin/llama3-8b-lora-private", "adapter", True, False),
            ("HF_STANDIN_GATED_REPO", "standin/llama3-8b-lora-gated", "adapter", False, True),
            ("HF_STANDIN_NEMO_REPO", "standin/llama3-8b-lora-nemo", "nemo", False, False),
            ("HF_STANDIN_NO_ADAPTER_REPO", "standin/llama3-8b-base-only", "base", False, False),
        ]
        self.repos: dict[str, Repo] = {}
        for var, default, kind, private, gated in specs:
            repo_id = env.get(var, "").strip() or default
            repo = Repo(repo_id, kind, private=private, gated=gated, checkpoint_mib=mib)
            repo.publish()
            self.repos[repo_id] = repo
        series = env.get("HF_STANDIN_SERIES", "").strip() or "standin/llama3-8b-lora-eval-"
        for n in range(int(env.get("HF_STANDIN_SERIES_COUNT", "12") or 0)):
            repo = Repo(f"{series}{n:02d}", "adapter", checkpoint_mib=1)
            repo.publish()
            self.repos[repo.repo_id] = repo
        self.key = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.fail_count = int(env.get("HF_STANDIN_FAIL_FIRST", "0") or 0)
        self.fail_status = 503
        self.fail_match = ""
        self.cdn_url = env.get("HF_STANDIN_CDN_URL", "").rstrip("/")
        self.cdn_port = 0

    def sign(self, sha256: str, expires: int) -> str:
        return hmac.new(self.key, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def blob(self, sha256: str) -> bytes | None:
        for repo in self.repos.values():
            for entry in repo.files.values():
                if entry.sha256 == sha256:
                    return entry.data
        return None

    def take_failure(self, path: str) -> int | None:
        with self.lock:
            if self.fail_count > 0 and self.fail_match in path:
                self.fail_count -= 1
                return self.fail_status
        return None

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)
            del self.requests[:-_REQUEST_LOG_MAX]


class _Handler(BaseHTTPRequestHandler):
    server_version = "hf-hub-standin/1"
    protocol_version = "HTTP/1.1"
    hub: Hub
    role = "hub"

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _finish instead, with the auth class

    def _auth(self) -> str:
        header = self.headers.get("Authorization", "")
        if not header:
            return "none"
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.hub.token):
            return "valid"
        return "invalid"

    def _finish(self, status: int, size: int) -> None:
        path = urlsplit(self.path).path
        auth = self._auth()
        if not path.startswith("/_standin/"):  # the log shows Hub traffic only
            self.hub.record(
                {
                    "server": self.role,
                    "method": self.command,
                    "path": unquote(path),
                    "status": status,
                    "auth": auth,
                    "bytes": size,
                    "range": self.headers.get("Range"),
                }
            )
        host = self.client_address[0]
        log(f'{self.role} {host} "{self.command} {self.path}" {status} auth={auth} {size}B')

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        sent = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            sent = len(body)
        self._finish(status, sent)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(payload).encode(), headers=headers)

    def _hub_error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _serve_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        """200 with the whole body, or 206 for a `Range: bytes=N-[M]` request."""
        rng = self.headers.get("Range", "")
        headers = {**headers, "Accept-Ranges": "bytes"}
        if rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].partition("-")
            try:
                start = int(first) if first else len(data) - int(last)
                end = int(last) if first and last else len(data) - 1
            except ValueError:
                start, end = 0, len(data) - 1
            if start >= len(data):
                return self._reply(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._reply(206, data[start : end + 1], "application/octet-stream", headers)
        self._reply(200, data, "application/octet-stream", headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        if self.role != "hub":
            return self._json(404, {"error": "Not Found"})
        if split.path == "/_standin/fail":
            with self.hub.lock:
                self.hub.fail_count = int(query.get("count", "1"))
                self.hub.fail_status = int(query.get("status", "503"))
                self.hub.fail_match = query.get("match", "")
            return self._json(200, {"fail_count": self.hub.fail_count})
        if split.path == "/_standin/bump":
            repo = self.hub.repos.get(query.get("repo", ""))
            if repo is None:
                return self._json(404, {"error": "no such fixture repo"})
            with self.hub.lock:
                repo.generation += 1
                repo.publish()
            log(f"published {repo.repo_id} revision {repo.generation}: {repo.sha}")
            return self._json(200, {"repo": repo.repo_id, "sha": repo.sha})
        self._json(404, {"error": "Not Found"})

    # ------------------------------------------------------------------ GET routes

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        if self.role == "cdn":
            return self._cdn(path, query)
        if path == "/_standin/requests":
            with self.hub.lock:
                entries = list(self.hub.requests)
            return self._json(200, entries)
        failure = self.hub.take_failure(path)
        if failure is not None:
            return self._json(failure, {"error": "Service unavailable (injected fault)"})
        if path.startswith("/api/models/"):
            return self._api(path[len("/api/models/") :], query)
        if "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            rev, _, file_path = rest.partition("/")
            return self._resolve(unquote(repo_id), unquote(rev), unquote(file_path))
        self._json(404, {"error": "Not Found"})

    def _access(self, repo_id: str, files: bool) -> Repo | None:
        """The repo if this request may see it (metadata, or files when `files`); else reply."""
        auth = self._auth()
        repo = self.hub.repos.get(repo_id)
        if auth == "invalid":
            self._hub_error(401, None, INVALID_TOKEN_MESSAGE)
            return None
        if repo is None or (repo.private and auth != "valid"):
            if auth == "valid":
                self._hub_error(404, "RepoNotFound", "Repository not found")
            else:
                self._hub_error(401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and files:
            if auth == "valid":
                message = (
                    f"Access to model {repo_id} is restricted and you are not in the authorized "
                    f"list. Visit {self._base()}/{repo_id} to ask for access."
                )
                self._hub_error(403, "GatedRepo", message)
            else:
                message = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                self._hub_error(401, "GatedRepo", message)
            return None
        return repo

    def _base(self) -> str:
        return f"http://{self.headers.get('Host', 'localhost')}"

    def _api(self, rest: str, query: dict[str, str]) -> None:
        rest = unquote(rest)
        tree_path: str | None = None
        rev = "main"
        if "/tree/" in rest:
            repo_id, _, tail = rest.partition("/tree/")
            rev, _, tree_path = tail.partition("/")
        elif "/revision/" in rest:
            repo_id, _, rev = rest.partition("/revision/")
        else:
            repo_id = rest
        repo = self._access(repo_id, files=False)
        if repo is None:
            return
        if not repo.revision_ok(rev):
            return self._hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if tree_path is not None:
            return self._tree(repo, tree_path.strip("/"), query.get("recursive") in ("true", "1"))
        blobs = query.get("blobs") in ("true", "1")
        siblings = []
        for entry in repo.files.values():
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sibling["size"] = len(entry.data)
                sibling["blobId"] = entry.blob_id
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": len(entry.data),
                        "sha256": entry.sha256,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        owner = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        self._json(
            200,
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": owner,
                "sha": repo.sha,
                "lastModified": repo.last_modified,
                "createdAt": repo.created,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "peft" if repo.kind == "adapter" else None,
                "tags": ["peft", "safetensors", "lora"] if repo.kind == "adapter" else [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo: Repo, under: str, recursive: bool) -> None:
        prefix = f"{under}/" if under else ""
        if under and not any(p.startswith(prefix) for p in repo.files):
            return self._hub_error(404, "EntryNotFound", f"{under} does not exist on main")
        items: dict[str, dict[str, Any]] = {}
        for path, entry in repo.files.items():
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            if "/" in rel and not recursive:
                folder = prefix + rel.split("/", 1)[0]
                items.setdefault(folder, self._folder(folder))
                continue
            if recursive:  # the folders on the way are listed too
                parts = rel.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = prefix + "/".join(parts[:depth])
                    items.setdefault(folder, self._folder(folder))
            item: dict[str, Any] = {
                "type": "file",
                "oid": entry.blob_id,
                "size": len(entry.data),
                "path": path,
            }
            if entry.lfs:
                item["lfs"] = {
                    "oid": entry.sha256,
                    "size": len(entry.data),
                    "pointerSize": entry.pointer_size,
                }
            items[path] = item
        self._json(200, [items[k] for k in sorted(items)])

    @staticmethod
    def _folder(path: str) -> dict[str, Any]:
        oid = hashlib.sha1(path.encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _resolve(self, repo_id: str, rev: str, file_path: str) -> None:
        repo = self._access(repo_id, files=True)
        if repo is None:
            return
        if not repo.revision_ok(rev):
            return self._hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entry = repo.files.get(file_path)
        if entry is None:
            return self._hub_error(404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": repo.sha}
        if not entry.lfs:
            headers["ETag"] = f'"{entry.blob_id}"'
            headers["Content-Disposition"] = f'inline; filename="{file_path.rsplit("/", 1)[-1]}"'
            if self.command == "HEAD":
                return self._head_file(entry.data, headers)
            return self._serve_bytes(entry.data, headers)
        expires = int(time.time()) + 3600
        signature = self.hub.sign(entry.sha256, expires)
        location = f"{self._cdn_base()}/lfs/{entry.sha256}?expires={expires}&signature={signature}"
        headers.update(
            {
                "Location": location,
                "ETag": f'"{entry.sha256}"',
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(len(entry.data)),
            }
        )
        self._reply(302, b"", "text/plain; charset=utf-8", headers)

    def _head_file(self, data: bytes, headers: dict[str, str]) -> None:
        """HEAD: the headers of a GET (Content-Length is the file's size), no body."""
        self.send_response_only(200)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self._finish(200, 0)

    def _cdn_base(self) -> str:
        if self.hub.cdn_url:
            return self.hub.cdn_url
        host = self.headers.get("Host", "localhost").rsplit(":", 1)[0]
        return f"http://{host}:{self.hub.cdn_port}"

    def _cdn(self, path: str, query: dict[str, str]) -> None:
        if not path.startswith("/lfs/"):
            return self._reply(404, b"Not Found", "text/plain")
        sha256 = path[len("/lfs/") :]
        try:
            expires = int(query.get("expires", "0"))
        except ValueError:
            expires = 0
        expected = self.hub.sign(sha256, expires)
        if expires < time.time() or not hmac.compare_digest(expected, query.get("signature", "")):
            return self._reply(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
        data = self.hub.blob(sha256)
        if data is None:
            return self._reply(404, b"Not Found", "text/plain")
        if self.command == "HEAD":
            return self._head_file(data, {"ETag": f'"{sha256}"'})
        self._serve_bytes(data, {"ETag": f'"{sha256}"'})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log(f"{client_address[0]} closed the connection early")
        else:
            super().handle_error(request, client_address)


def serve(hub: Hub, host: str, port: int, role: str) -> _Server:
    handler = type(f"{role.title()}Handler", (_Handler,), {"hub": hub, "role": role})
    server = _Server((host, port), handler)
    threading.Thread(target=server.serve_forever, name=role, daemon=True).start()
    return server


def main() -> None:
    env = dict(os.environ)
    hub = Hub(env)
    host = env.get("HF_STANDIN_HOST", "0.0.0.0")
    hub_server = serve(hub, host, int(env.get("HF_STANDIN_PORT", "8090") or 0), "hub")
    cdn_server = serve(hub, host, int(env.get("HF_STANDIN_CDN_PORT", "8091") or 0), "cdn")
    hub.cdn_port = cdn_server.server_address[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    endpoint = f"http://{shown}:{hub_server.server_address[1]}"
    cdn = hub.cdn_url or f"http://{shown}:{hub.cdn_port}"
    for repo in hub.repos.values():
        kind = "private" if repo.private else "gated" if repo.gated else "public"
        log(f"fixture {repo.repo_id} ({kind}, {repo.kind}) at {repo.sha}: {len(repo.files)} files")
    log(f"listening: hub {endpoint}, cdn {cdn} (host {host})")
    ready_file = env.get("HF_STANDIN_READY_FILE", "").strip()
    if ready_file:
        tmp = f"{ready_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"endpoint": endpoint, "cdn": cdn, "pid": os.getpid()}, f)
        os.replace(tmp, ready_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    log("shutting down")
    hub_server.shutdown()
    cdn_server.shutdown()


if __name__ == "__main__":
    main()
