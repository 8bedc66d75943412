"""Download LoRA adapters from a Hugging Face Hub with the Python standard library alone.

This module is the program of the adapter download container: nim-agent ships its source into the
pod and runs it with `python3 -c`, so it works in any image with python3 (>= 3.8; NIM images have
it) and needs no `pip install` and no `huggingface_hub`. It is one self-contained file: it imports
nothing from nim_agent. `adapter_name` is the one home of the rule that names an adapter's folder;
the renderer imports it from here.

For each repository it asks the Hub for the repository's files at `main`
(GET {endpoint}/api/models/{repo}/revision/main?blobs=true: the commit sha, names, sizes, hashes),
keeps only the adapter's own files at the top level (adapter_config.json with *.safetensors /
*.bin weights, or NeMo *.nemo files; never README, training_args.bin or checkpoint folders),
downloads each from {endpoint}/{repo}/resolve/{sha}/{file} (following the Hub's redirect to its
CDN without the token), checks size and hash, and moves the finished folder into place
atomically. A folder already holding that commit (recorded in `.nim-agent-hf.json`) is kept
as it is: a cache volume is not downloaded again.

With NIM_AGENT_HF_CACHE (a folder on a volume that outlives the pod, such as a cache PVC), each
revision is kept there once, at $NIM_AGENT_HF_CACHE/hf/<owner>--<name>/<commit sha>, never changed
after it is complete, and $NIM_PEFT_SOURCE/<name> becomes a symbolic link to it: a later server on
the same volume asks the Hub only for the current commit and downloads nothing when it is there,
and servers sharing the volume never see each other's adapters.

Environment
  NIM_PEFT_SOURCE        the folder adapters go into: $NIM_PEFT_SOURCE/<adapter_name(repo)>
  NIM_AGENT_HF_REPO_IDS  a JSON list of repository ids, e.g. ["owner/name"]
  HF_ENDPOINT            the Hub's base URL [https://huggingface.co] (a mirror, an air-gapped hub)
  HF_TOKEN               optional token (read from the environment only, never printed)
  HF_HUB_OFFLINE         1/true: no network; succeed only with adapters already in place
  NIM_AGENT_HF_CACHE     optional folder of revisions kept across pods (see above)
  NIM_AGENT_HF_RETRIES [5], NIM_AGENT_HF_BACKOFF_SECONDS [1], NIM_AGENT_HF_TIMEOUT_SECONDS [60]
                         attempts per request on 429/5xx/network errors, the first back-off
                         (doubled each time, at most 30 s), the timeout of one socket operation

Exit status: 0 all adapters in place; 1 a download failed (one line on stderr naming the repository
and what to do, also written to /dev/termination-log when it exists, where the kubelet reads a
container's termination message; NIM_AGENT_TERMINATION_LOG names another path); 2 invalid
settings.

Example (what the pod runs):
    NIM_PEFT_SOURCE=/opt/nim/loras NIM_AGENT_HF_REPO_IDS='["tloen/alpaca-lora-7b"]' \\
        python3 -c "$(cat hf_download.py)"
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from email.message import Message
from http.client import HTTPException, HTTPMessage, HTTPResponse
from typing import IO, Any, NoReturn

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_IDS_ENV = "NIM_AGENT_HF_REPO_IDS"
CACHE_ENV = "NIM_AGENT_HF_CACHE"
MARKER = ".nim-agent-hf.json"  # in each adapter folder: repository, commit sha, files
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NEMO_SUFFIX = ".nemo"
NOT_WEIGHTS = frozenset({"training_args.bin"})  # Trainer's pickled arguments, not weights
INVALID_TOKEN = "Invalid credentials in Authorization header"  # the Hub's X-Error-Message
TERMINATION_LOG_ENV = "NIM_AGENT_TERMINATION_LOG"  # the container's terminationMessagePath
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
EXIT_FAILED = 1
EXIT_CONFIG = 2
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1024 * 1024
_MAX_BACKOFF = 30.0


class DownloadError(Exception):
    """A failure with a one-line message a person can act on (never containing the token)."""


class ConfigError(Exception):
    """Invalid settings (environment)."""


def adapter_name(repo_id: str) -> str:
    """The folder name an adapter is served under: the last part of its repository id.

    >>> adapter_name("tloen/alpaca-lora-7b")
    'alpaca-lora-7b'

    Raises ValueError for an id that is not `name` or `owner/name` (letters, digits, `-`, `_`, `.`,
    not starting with `.` or `-`): the name becomes a folder, so nothing else may pass.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(
            f"{repo_id!r} is not a Hugging Face repository id; use 'owner/name' "
            "(letters, digits, '-', '_', '.')"
        )
    return repo_id.rsplit("/", 1)[-1]


def select_adapter_files(filenames: Iterable[str]) -> list[str]:
    """The files of a repository that make up its adapter, or [] when it holds no adapter.

    Only top-level files count (folders such as checkpoint-100/ are training leftovers). A Hugging
    Face PEFT adapter is adapter_config.json plus its weights (*.safetensors, *.bin except
    training_args.bin); a NeMo adapter is a *.nemo file (with adapter_config.json if present).

    >>> select_adapter_files(["README.md", "adapter_config.json", "adapter_model.safetensors",
    ...                       "checkpoint-100/adapter_model.safetensors"])
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    top = sorted({name for name in filenames if "/" not in name})
    weights = [n for n in top if n.endswith(WEIGHT_SUFFIXES) and n not in NOT_WEIGHTS]
    nemo = [n for n in top if n.endswith(NEMO_SUFFIX)]
    has_config = ADAPTER_CONFIG in top
    if not nemo and not (has_config and weights):
        return []
    return ([ADAPTER_CONFIG] if has_config else []) + weights + nemo


def log(message: str) -> None:
    print(f"hf-download: {message}", flush=True)


# ------------------------------------------------------------------------------ HTTP


class _KeepAuthOnSameOrigin(urllib.request.HTTPRedirectHandler):
    """Follow redirects; carry the token only to the origin it was meant for.

    The Hub redirects LFS files to a CDN with a signed URL: the token must not go there (as
    huggingface_hub does, it is dropped when the redirect leaves the origin). urllib never
    forwards "unredirected" headers, so the token is added back for same-origin redirects only.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(req.full_url) == _origin(new.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class HttpFailure(Exception):
    """An HTTP error status from the Hub (after retries, if it was a retryable one)."""

    def __init__(self, url: str, status: int, headers: Message | None, body: bytes) -> None:
        super().__init__(f"{status} for {url}")
        self.url = url
        self.status = status
        self.error_code = headers.get("X-Error-Code", "") if headers is not None else ""
        self.error_message = headers.get("X-Error-Message", "") if headers is not None else ""
        self.body = body[:300].decode("utf-8", "replace")


class NetworkFailure(Exception):
    """No HTTP answer (connection refused, DNS, timeout, reset), after retries."""


class Hub:
    """GET requests to one Hub endpoint, with retries and back-off; the token stays in here."""

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.retries = max(1, retries)
        self.backoff = backoff
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_KeepAuthOnSameOrigin())
        self._python = "{}.{}".format(*sys.version_info[:2])

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def _request(self, url: str) -> urllib.request.Request:
        req = urllib.request.Request(url, method="GET")
        req.add_header("User-Agent", f"nim-agent-hf-download/1; python/{self._python}")
        if self._token:
            req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        return req

    def _pause(self, attempt: int, retry_after: str | None, why: str, url: str) -> None:
        delay = min(_MAX_BACKOFF, self.backoff * (2**attempt)) * (0.5 + random.random() / 2)
        if retry_after and retry_after.isdigit():
            delay = min(_MAX_BACKOFF, max(delay, float(retry_after)))
        log(f"{why} for {url}; retrying in {delay:.1f} s ({attempt + 2}/{self.retries})")
        time.sleep(delay)

    def open(self, url: str) -> HTTPResponse:
        """The response to GET url: 2xx, with redirects followed. Raises HttpFailure on a
        non-retryable status or when retries are spent, NetworkFailure when nothing answered."""
        last = ""
        for attempt in range(self.retries):
            final = attempt == self.retries - 1
            try:
                response: HTTPResponse = self._opener.open(self._request(url), timeout=self.timeout)
                return response
            except urllib.error.HTTPError as e:
                body = e.read() if e.fp is not None else b""
                retryable = e.code == 429 or e.code >= 500
                if not retryable or final:
                    raise HttpFailure(url, e.code, e.headers, body) from None
                self._pause(
                    attempt, e.headers.get("Retry-After"), f"the Hub answered {e.code}", url
                )
            except (urllib.error.URLError, OSError, HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                last = str(reason) or type(e).__name__
                if final:
                    raise NetworkFailure(last) from None
                self._pause(attempt, None, f"network error ({last})", url)
        raise NetworkFailure(last)  # not reached: the loop returns or raises

    def get_json(self, url: str) -> Any:
        """GET url and parse its JSON body (a broken transfer is retried)."""
        problem = ""
        for attempt in range(self.retries):
            with self.open(url) as response:
                try:
                    raw = response.read()
                except (OSError, HTTPException) as e:
                    problem = f"reading the answer failed ({e or type(e).__name__})"
                    if attempt < self.retries - 1:
                        self._pause(attempt, None, problem, url)
                    continue
            try:
                return json.loads(raw)
            except ValueError:
                raise DownloadError(f"{url} answered with something that is not JSON") from None
        raise NetworkFailure(problem)


# ------------------------------------------------------------------------------ one repository


def _describe_http(repo_id: str, hub: Hub, failure: HttpFailure) -> str:
    """The one-line message for an HTTP error status about `repo_id`."""
    code, status = failure.error_code, failure.status
    if status == 401 and failure.error_message == INVALID_TOKEN:
        return (
            f"{repo_id}: the Hub at {hub.endpoint} refused the token in HF_TOKEN (invalid "
            "credentials); check the Secret that holds it"
        )
    if code == "GatedRepo":
        return (
            f"{repo_id}: the repository is gated; accept its conditions on the Hub with the "
            "account of the token"
            + ("" if hub.has_token else " and give a token (NIMSecrets.hf_token_key)")
        )
    if code == "RepoNotFound" or (status in (401, 404) and not code):
        if hub.has_token:
            return (
                f"{repo_id}: repository not found at {hub.endpoint}, or the token has no "
                "access to it; check the id and the token's permissions"
            )
        return (
            f"{repo_id}: repository not found at {hub.endpoint}, or it is private or gated and "
            "no token was given (NIMSecrets.hf_token_key); check the id"
        )
    if code == "RevisionNotFound":
        return f"{repo_id}: revision not found at {hub.endpoint}: {failure.error_message}"
    if code == "EntryNotFound":
        return f"{repo_id}: the file {failure.url} is gone from the repository (changed meanwhile?)"
    detail = failure.error_message or failure.body.strip().replace("\n", " ")
    return f"{repo_id}: the Hub at {hub.endpoint} answered {status} for {failure.url}: {detail}"


def _read_marker(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
        return marker if isinstance(marker, dict) else None
    except (OSError, ValueError):
        return None


def _cached(folder: str, repo_id: str, sha: str | None) -> dict[str, Any] | None:
    """The marker of `folder` when it holds a complete download of repo_id (at sha, if given)."""
    marker = _read_marker(folder)
    if marker is None or marker.get("repo_id") != repo_id:
        return None
    if sha is not None and marker.get("sha") != sha:
        return None
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    return marker


class _Checker:
    """Incremental size + hash check of one file against what the Hub listed for it."""

    def __init__(self, sibling: dict[str, Any]) -> None:
        self.size = sibling.get("size") if isinstance(sibling.get("size"), int) else None
        lfs = sibling.get("lfs") if isinstance(sibling.get("lfs"), dict) else None
        self.sha256 = lfs.get("sha256") if lfs else None
        self.blob_id = None if lfs else sibling.get("blobId")
        self._h256 = hashlib.sha256()
        self._hgit = hashlib.sha1()
        if self.blob_id and self.size is not None:
            self._hgit.update(b"blob %d\0" % self.size)  # git's object id of a blob
        self.seen = 0

    def update(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self._h256.update(chunk)
        self._hgit.update(chunk)

    def problem(self) -> str | None:
        if self.size is not None and self.seen != self.size:
            return f"got {self.seen} bytes, the Hub lists {self.size}"
        if self.sha256 and self._h256.hexdigest() != self.sha256:
            return "sha256 differs from the Hub's"
        if self.blob_id and self.size is not None and self._hgit.hexdigest() != self.blob_id:
            return "git blob id differs from the Hub's"
        return None


class _BrokenTransfer(Exception):
    """The connection failed while reading a body (not a local write error)."""


def _fetch_file(hub: Hub, url: str, sibling: dict[str, Any], dest: str) -> int:
    """Download url into dest, checked; a broken transfer or a failed check is retried."""
    problem = ""
    for attempt in range(hub.retries):
        checker = _Checker(sibling)
        try:
            with hub.open(url) as response, open(dest, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, HTTPException) as e:
                        raise _BrokenTransfer(str(e) or type(e).__name__) from None
                    if not chunk:
                        break
                    checker.update(chunk)
                    out.write(chunk)  # an OSError here (disk full) is not retried
        except _BrokenTransfer as e:
            problem = f"the transfer broke off ({e})"
        else:
            bad = checker.problem()
            if bad is None:
                return checker.seen
            problem = bad
        if attempt < hub.retries - 1:
            hub._pause(attempt, None, problem, url)
    raise DownloadError(f"{url}: {problem} (after {hub.retries} attempts)")


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _link(link: str, target: str) -> None:
    """Make `link` a symbolic link to the folder `target` (replacing whatever is at `link`)."""
    if os.path.islink(link) and os.readlink(link) == target:
        return
    staging = f"{link}.link-{os.getpid()}-{random.randrange(16**6):06x}"
    os.symlink(target, staging)
    if os.path.isdir(link) and not os.path.islink(link):
        _remove(link)
    os.replace(staging, link)


def _newest_revision(store: str, repo_id: str) -> str | None:
    """The most recently completed revision folder of repo_id in a cache store, if any."""
    try:
        entries = [os.path.join(store, e) for e in os.listdir(store) if not e.startswith(".")]
    except OSError:
        return None
    complete = [p for p in entries if _cached(p, repo_id, os.path.basename(p)) is not None]
    return max(complete, key=os.path.getmtime) if complete else None


_STALE_SECONDS = 6 * 3600  # a shared cache's partial download older than this was abandoned


def _clean_leftovers(folder: str, prefixes: tuple[str, ...], shared: bool) -> None:
    """Remove what an interrupted earlier run left (in a shared cache: only old leftovers,
    another pod may be downloading right now)."""
    now = time.time()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.startswith(prefixes):
            try:
                stale = now - os.path.getmtime(path) > _STALE_SECONDS
            except OSError:
                continue
            if not shared or stale:
                _remove(path)


def download_adapter(
    hub: Hub, repo_id: str, root: str, offline: bool = False, cache: str | None = None
) -> str:
    """Put repo_id's adapter into root/<adapter_name> (with `cache`: a link to its revision in
    the cache); returns "downloaded" or "cached"."""
    name = adapter_name(repo_id)
    link = os.path.join(root, name)
    store = os.path.join(cache, "hf", repo_id.replace("/", "--")) if cache else None
    if offline:
        found = _newest_revision(store, repo_id) if store else link
        marker = _cached(found, repo_id, None) if found else None
        if found is None or marker is None:
            raise DownloadError(
                f"{repo_id}: HF_HUB_OFFLINE is set and {store or link} holds no complete "
                "download of it"
            )
        if store:
            os.makedirs(root, exist_ok=True)
            _link(link, found)
        log(f"{repo_id}: offline; using {found} (revision {str(marker.get('sha'))[:12]})")
        return "cached"

    quoted = urllib.parse.quote(repo_id, safe="/")
    info_url = f"{hub.endpoint}/api/models/{quoted}/revision/main?blobs=true"
    try:
        info = hub.get_json(info_url)
    except HttpFailure as e:
        raise DownloadError(_describe_http(repo_id, hub, e)) from None
    except NetworkFailure as e:
        raise DownloadError(
            f"{repo_id}: cannot reach the Hub at {hub.endpoint} ({e}) after {hub.retries} "
            "attempts; check HF_ENDPOINT and the pod's network"
        ) from None
    sha = info.get("sha") if isinstance(info, dict) else None
    siblings_raw = info.get("siblings") if isinstance(info, dict) else None
    if not isinstance(sha, str) or not isinstance(siblings_raw, list):
        raise DownloadError(f"{repo_id}: the Hub at {hub.endpoint} sent no commit sha or file list")
    siblings = {s["rfilename"]: s for s in siblings_raw if isinstance(s, dict) and "rfilename" in s}
    chosen = select_adapter_files(siblings)
    if not chosen:
        listed = ", ".join(sorted(siblings)[:12]) or "no files"
        raise DownloadError(
            f"{repo_id}: no adapter files at the top of the repository (need adapter_config.json "
            f"with *.safetensors or *.bin weights, or a *.nemo file); it has: {listed}"
        )
    target = os.path.join(store, sha) if store else link
    os.makedirs(root, exist_ok=True)
    if _cached(target, repo_id, sha) is not None:
        log(f"{repo_id}: {target} already holds revision {sha[:12]}; not downloading")
        if store:
            _link(link, target)
        return "cached"

    home = store or root  # staging beside the target: the final rename stays on one volume
    os.makedirs(home, exist_ok=True)
    key = sha if store else name
    _clean_leftovers(home, (f".partial-{key}-", f".old-{key}-"), shared=bool(store))
    suffix = f"{os.getpid()}-{random.randrange(16**6):06x}"
    staging = os.path.join(home, f".partial-{key}-{suffix}")
    os.mkdir(staging)
    try:
        skipped = len(siblings) - len(chosen)
        log(
            f"{repo_id} -> {target}: revision {sha[:12]}, {len(chosen)} adapter file(s) "
            f"(leaving {skipped} other file(s))"
        )
        sizes: dict[str, int] = {}
        for filename in chosen:
            url = f"{hub.endpoint}/{quoted}/resolve/{sha}/{urllib.parse.quote(filename)}"
            try:
                sizes[filename] = _fetch_file(
                    hub, url, siblings[filename], os.path.join(staging, filename)
                )
            except HttpFailure as e:
                raise DownloadError(_describe_http(repo_id, hub, e)) from None
            except NetworkFailure as e:
                raise DownloadError(
                    f"{repo_id}: downloading {filename} from {hub.endpoint} failed ({e}) after "
                    f"{hub.retries} attempts"
                ) from None
            log(f"  {filename}: {sizes[filename]} bytes")
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump({"repo_id": repo_id, "sha": sha, "endpoint": hub.endpoint, "files": sizes}, f)
        if store and _cached(target, repo_id, sha) is not None:
            pass  # another pod on the same volume finished the same revision first
        elif os.path.lexists(target):
            old = os.path.join(home, f".old-{key}-{suffix}")
            os.rename(target, old)
            os.rename(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    finally:
        if os.path.lexists(staging):
            _remove(staging)
    if store:
        _link(link, target)
    return "downloaded"


# ------------------------------------------------------------------------------ main


def _settings(env: dict[str, str]) -> tuple[str, list[str], Hub, bool, str | None]:
    problems = []
    root = env.get("NIM_PEFT_SOURCE", "").strip()
    if not root or not os.path.isabs(root):
        problems.append(f"NIM_PEFT_SOURCE: {root!r} is not an absolute path")
    repo_ids: list[str] = []
    raw = env.get(REPO_IDS_ENV, "")
    try:
        parsed = json.loads(raw)
        if not isinstance(parsed, list) or not all(isinstance(r, str) for r in parsed):
            raise ValueError
        repo_ids = parsed
    except ValueError:
        problems.append(
            f'{REPO_IDS_ENV}: {raw!r} is not a JSON list of repository ids, e.g. ["o/n"]'
        )
    names: dict[str, str] = {}
    for repo_id in repo_ids:
        try:
            name = adapter_name(repo_id)
        except ValueError as e:
            problems.append(f"{REPO_IDS_ENV}: {e}")
            continue
        if name in names:
            problems.append(
                f"{REPO_IDS_ENV}: {names[name]!r} and {repo_id!r} would share the folder {name!r}"
            )
        names[name] = repo_id
    cache = env.get(CACHE_ENV, "").strip() or None
    if cache is not None and not os.path.isabs(cache):
        problems.append(f"{CACHE_ENV}: {cache!r} is not an absolute path")
    endpoint = env.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        problems.append(f"HF_ENDPOINT: {endpoint!r} is not an http(s) URL")
    numbers = {}
    for var, default in (
        ("NIM_AGENT_HF_RETRIES", "5"),
        ("NIM_AGENT_HF_BACKOFF_SECONDS", "1"),
        ("NIM_AGENT_HF_TIMEOUT_SECONDS", "60"),
    ):
        value = env.get(var, "").strip() or default
        try:
            numbers[var] = float(value)
        except ValueError:
            problems.append(f"{var}: {value!r} is not a number")
    if problems:
        raise ConfigError("; ".join(problems))
    hub = Hub(
        endpoint,
        env.get("HF_TOKEN", "").strip() or None,
        retries=int(numbers["NIM_AGENT_HF_RETRIES"]),
        backoff=numbers["NIM_AGENT_HF_BACKOFF_SECONDS"],
        timeout=numbers["NIM_AGENT_HF_TIMEOUT_SECONDS"],
    )
    offline = env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return root, repo_ids, hub, offline, cache


def _fail(message: str, status: int, env: dict[str, str]) -> NoReturn:
    print(f"hf-download: ERROR: {message}", file=sys.stderr, flush=True)
    path = env.get(TERMINATION_LOG_ENV, "").strip() or TERMINATION_LOG
    if os.path.exists(path):  # the kubelet creates it; elsewhere there is nothing to write
        try:
            with open(path, "w") as f:
                f.write(message[:4000])
        except OSError:
            pass
    sys.exit(status)


def main(env: dict[str, str] | None = None) -> None:
    """Download every adapter named in the environment; exit 1 on the first failure."""
    env = dict(os.environ) if env is None else env
    try:
        root, repo_ids, hub, offline, cache = _settings(env)
    except ConfigError as e:
        _fail(str(e), EXIT_CONFIG, env)
    outcome = {"downloaded": 0, "cached": 0}
    for repo_id in repo_ids:
        try:
            outcome[download_adapter(hub, repo_id, root, offline, cache)] += 1
        except DownloadError as e:
            _fail(str(e), EXIT_FAILED, env)
        except OSError as e:
            message = f"{repo_id}: cannot write into {root}: {e.strerror} ({e.filename})"
            _fail(message, EXIT_FAILED, env)
    log(
        f"done: {len(repo_ids)} adapters in {root} "
        f"({outcome['downloaded']} downloaded, {outcome['cached']} already there)"
    )


if __name__ == "__main__":
    main()
