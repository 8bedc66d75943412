"""The only module that talks to the Kubernetes API.

It uses the official client's asyncio stack (``kubernetes.aio``) for configuration, auth and the
HTTP connection pool, but sends and receives plain JSON dicts: manifests come from
:mod:`nim_agent.render` as dicts, :mod:`nim_agent.status` reads pods as dicts, and skipping the
client's pydantic models keeps a thousand-pod list or a busy watch cheap.

Errors from the client never leave this module; they are mapped once, in :func:`_raise_for`::

    KubeError                       any failure talking to the API server
    ├── PermanentKubeError          retrying the same request will not help
    │   ├── NotFound                404
    │   ├── AlreadyExists           409, reason AlreadyExists
    │   ├── Conflict                409, any other reason (e.g. a stale resourceVersion)
    │   ├── Gone                    410, a watch's resourceVersion is too old
    │   ├── Invalid                 422 and 400: the object was rejected
    │   ├── Forbidden               403: RBAC, or admission (Pod Security, quota)
    │   └── Unauthorized            401
    └── TemporaryKubeError          429, 5xx, timeouts, refused connections: retry later
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
from kubernetes.aio import client as k8s_client
from kubernetes.aio import config as k8s_config
from kubernetes.aio.client.exceptions import ApiException

from nim_agent import metrics

Json = dict[str, Any]

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "Json",
    "Kube",
    "KubeError",
    "NotFound",
    "PermanentKubeError",
    "PodWatch",
    "TemporaryKubeError",
    "Unauthorized",
    "WatchEvent",
    "current_namespace",
]


class KubeError(Exception):
    """A request to the Kubernetes API server failed."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class PermanentKubeError(KubeError):
    """The API server refused the request; sending it again will not help."""


class NotFound(PermanentKubeError):
    """404: the object does not exist."""


class AlreadyExists(PermanentKubeError):
    """409 AlreadyExists: an object of that name exists."""


class Conflict(PermanentKubeError):
    """409: the object changed under us."""


class Gone(PermanentKubeError):
    """410: the resourceVersion is too old (a watch must relist)."""


class Invalid(PermanentKubeError):
    """422 or 400: the object failed validation."""


class Forbidden(PermanentKubeError):
    """403: RBAC or an admission plugin (Pod Security, ResourceQuota) said no."""


class Unauthorized(PermanentKubeError):
    """401: the credentials were not accepted."""


class TemporaryKubeError(KubeError):
    """The API server is unreachable, overloaded or timed out; retry after ``retry_after``."""

    def __init__(
        self, message: str, *, status: int = 0, reason: str = "", retry_after: float = 1.0
    ):
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[PermanentKubeError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Gone,
    422: Invalid,
}


def _raise_for(status: int, body: bytes, headers: Mapping[str, str]) -> NoReturn:
    """Raise the KubeError matching an HTTP error response (a k8s Status object)."""
    try:
        doc = json.loads(body)
        message = str(doc.get("message") or "")
        reason = str(doc.get("reason") or "")
    except (ValueError, AttributeError):
        message, reason = body[:500].decode("utf-8", "replace"), ""
    message = message or f"HTTP {status}"
    if status == 409:
        raise (AlreadyExists if reason == "AlreadyExists" else Conflict)(
            message, status=status, reason=reason
        )
    if status == 429 or status >= 500:
        try:
            retry_after = float(headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        raise TemporaryKubeError(message, status=status, reason=reason, retry_after=retry_after)
    raise _BY_STATUS.get(status, PermanentKubeError)(message, status=status, reason=reason)


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch stream: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK."""

    type: str
    object: Json


class PodWatch:
    """An open watch stream: ``async for event in watch`` until the server ends it.

    An ERROR event raises the matching KubeError (410 -> :class:`Gone`).
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> PodWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            line = await self._response.content.readline()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.close()
            raise TemporaryKubeError(f"pod watch interrupted: {type(exc).__name__}: {exc}") from exc
        if not line:
            self.close()
            raise StopAsyncIteration
        try:
            event = json.loads(line)
            kind, obj = str(event.get("type", "")), event.get("object") or {}
        except (ValueError, AttributeError) as exc:  # a line cut short, or not an event
            self.close()
            raise TemporaryKubeError(f"pod watch sent an unreadable event: {exc}") from exc
        if kind == "ERROR":
            self.close()
            _raise_for(int(obj.get("code") or 500), json.dumps(obj).encode(), {})
        return WatchEvent(kind, obj)

    def close(self) -> None:
        self._response.release()


def _path(
    kind: str,
    namespace: str | None,
    name: str | None = None,
    sub: str = "",
    *,
    base: str = "/api/v1",
) -> str:
    path = (
        f"{base}/namespaces/{quote(namespace, safe='')}/{kind}" if namespace else f"{base}/{kind}"
    )
    if name:
        path += f"/{quote(name, safe='')}"
    if sub:
        path += f"/{sub}"
    return path


_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def current_namespace(kubeconfig: str | None = None) -> str:
    """The namespace kubectl would use: in a pod (no kubeconfig named), the pod's own; else the
    current context's in ``kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``; else "default"."""
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            with open(_SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"
    try:
        _, active = k8s_config.list_kube_config_contexts(
            config_file=kubeconfig.split(os.pathsep)[0] if kubeconfig else None
        )
    except (k8s_config.ConfigException, OSError) as exc:
        raise PermanentKubeError(f"cannot read the kubeconfig: {exc}") from exc
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


class Kube:
    """A small, dict-based Kubernetes API client bound to one asyncio event loop.

    aiohttp sessions belong to the loop they were made on: the connector takes the client of
    its loop from `nim_agent.runtime.kube_for_current_loop`.

    Example::

        kube = await Kube.connect()
        pod = await kube.get_pod("flytesnacks-development", "nim-llama3-8b-3f9a1c2e")
        await kube.close()
    """

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        request_timeout: float = 10.0,
        in_cluster: bool = False,
    ) -> None:
        self._api = api_client
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=5)
        self.in_cluster = in_cluster
        """Whether the credentials are the pod's own (the connector runs in the cluster)."""

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, context: str | None = None) -> Kube:
        """Load credentials: in-cluster when running in a pod (and no kubeconfig is named),
        else ``kubeconfig`` or ``$KUBECONFIG`` or ``~/.kube/config``."""
        configuration = k8s_client.Configuration()
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        try:
            if in_cluster:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                await k8s_config.load_kube_config(
                    config_file=kubeconfig.split(os.pathsep)[0] if kubeconfig else None,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (k8s_config.ConfigException, OSError) as exc:
            raise PermanentKubeError(
                f"cannot load Kubernetes credentials: {exc} "
                "(set KUBECONFIG, or run inside a pod with a ServiceAccount)"
            ) from exc
        # Connection pool: GetTask of many deployments and the watch share it.
        configuration.connection_pool_maxsize = 32
        return cls(k8s_client.ApiClient(configuration), in_cluster=in_cluster)

    async def close(self) -> None:
        await self._api.close()

    # -- the one request path -------------------------------------------------------------

    async def _send(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        http_timeout: aiohttp.ClientTimeout | None = None,
        stream: bool = False,
    ) -> Any:
        """Send one request and read its answer; every network await is inside the one error
        mapping, the body's too (a connection dropped mid-body is a TemporaryKubeError).

        Returns the body (bytes) of a successful answer, or with ``stream`` the open response
        (status < 400) whose body the caller reads (a watch; `PodWatch` maps its own errors).
        """
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            _, url, headers, _, _ = await self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=params or None,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = await self._api.call_api(
                method,
                url,
                header_params=headers,
                body=body,
                _request_timeout=http_timeout or self._timeout,
            )
            status = response.status
            if status >= 400:
                metrics.KUBE_REQUESTS.labels(verb, str(status)).inc()
                _raise_for(status, await response.read(), response.headers)
            if stream:
                metrics.KUBE_REQUESTS.labels(verb, str(status)).inc()
                return response
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.KUBE_REQUESTS.labels(verb, "error").inc()
            raise TemporaryKubeError(
                f"cannot reach the Kubernetes API server: {type(exc).__name__}: {exc}",
                retry_after=1.0,
            ) from exc
        except ApiException as exc:  # raised by the client's own retry layer, when enabled
            metrics.KUBE_REQUESTS.labels(verb, str(exc.status)).inc()
            raw = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            _raise_for(exc.status or 500, raw, exc.headers or {})
        metrics.KUBE_REQUESTS.labels(verb, str(status)).inc()
        return data

    async def _json(self, verb: str, method: str, path: str, **kw: Any) -> Json:
        data = await self._send(verb, method, path, **kw)
        try:
            doc = json.loads(data)
        except ValueError as exc:  # a body cut short without the transport noticing
            raise TemporaryKubeError(
                f"the Kubernetes API server sent an unreadable answer to {verb}: {exc}"
            ) from exc
        if not isinstance(doc, dict):
            raise TemporaryKubeError(f"the Kubernetes API server answered {verb} with no object")
        return doc

    # -- pods -----------------------------------------------------------------------------

    async def create_pod(self, namespace: str, pod: Json) -> Json:
        return await self._json("create", "POST", _path("pods", namespace), body=pod)

    async def get_pod(self, namespace: str, name: str) -> Json | None:
        """The pod, or None when it does not exist."""
        try:
            return await self._json("get", "GET", _path("pods", namespace, name))
        except NotFound:
            return None

    async def delete_pod(
        self, namespace: str, name: str, *, grace_seconds: int | None = None
    ) -> bool:
        """Delete a pod; True if it existed. Dependents (our Service) are garbage-collected."""
        body: Json = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self._send("delete", "DELETE", _path("pods", namespace, name), body=body)
        except NotFound:
            return False
        return True

    async def patch_pod(self, namespace: str, name: str, patch: Json) -> Json:
        """Merge-patch a pod (metadata and the few spec fields a pod may change, such as
        ``activeDeadlineSeconds``)."""
        return await self._json(
            "patch",
            "PATCH",
            _path("pods", namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> Json:
        """Merge-patch annotations (a None value removes the key)."""
        return await self._json(
            "patch",
            "PATCH",
            _path("pods", namespace, name),
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )

    async def list_pods(
        self, namespace: str | None, *, label_selector: str, limit: int = 500
    ) -> tuple[list[Json], str]:
        """All pods matching the selector (every page), and the list's resourceVersion."""
        items: list[Json] = []
        cont: str | None = None
        while True:
            doc = await self._json(
                "list",
                "GET",
                _path("pods", namespace),
                query={"labelSelector": label_selector, "limit": limit, "continue": cont},
                http_timeout=aiohttp.ClientTimeout(total=60, sock_connect=5),
            )
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    async def open_pod_watch(
        self,
        namespace: str | None,
        *,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> PodWatch:
        """Open a pod watch from ``resource_version``; iterate the result for events.

        The server ends the stream after ``timeout_seconds``; a stream silent for 30 s longer
        than that (bookmarks count as activity) raises TemporaryKubeError.
        """
        response = await self._send(
            "watch",
            "GET",
            _path("pods", namespace),
            query={
                "watch": "true",
                "labelSelector": label_selector,
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_seconds,
            },
            http_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=5, sock_read=timeout_seconds + 30
            ),
            stream=True,
        )
        return PodWatch(response.response)

    async def pod_log_tail(
        self, namespace: str, name: str, *, container: str, lines: int = 20, previous: bool = False
    ) -> str | None:
        """The last ``lines`` lines of a container's log, or None when there is none to read."""
        try:
            data: bytes = await self._send(
                "get",
                "GET",
                _path("pods", namespace, name, "log"),
                query={
                    "container": container,
                    "tailLines": lines,
                    "previous": "true" if previous else None,
                },
            )
        except (NotFound, Invalid):
            return None
        return log_text(data)

    async def pod_proxy_get(
        self, namespace: str, name: str, port: int, path: str, *, seconds: float
    ) -> bytes:
        """GET `path` on a pod's `port` through the API server's pod proxy (RBAC: get on
        pods/proxy), giving up after `seconds`; the body of a 2xx answer. An error status, of
        the API server or of the pod (passed through), raises the matching KubeError."""
        # The body is read inside _send's error mapping, as every answer's is.
        body: bytes = await self._send(
            "get",
            "GET",
            _path("pods", namespace, f"{name}:{port}", "proxy") + path,
            http_timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 5)),
        )
        return body

    # -- services -------------------------------------------------------------------------

    async def create_service(self, namespace: str, service: Json) -> Json:
        return await self._json("create", "POST", _path("services", namespace), body=service)

    async def get_service(self, namespace: str, name: str) -> Json | None:
        try:
            return await self._json("get", "GET", _path("services", namespace, name))
        except NotFound:
            return None

    async def delete_service(self, namespace: str, name: str) -> bool:
        try:
            await self._send("delete", "DELETE", _path("services", namespace, name))
        except NotFound:
            return False
        return True

    # -- events ---------------------------------------------------------------------------

    async def pod_events(self, namespace: str, pod_name: str, *, limit: int = 50) -> list[Json]:
        """Core events about one pod (scheduler, kubelet), oldest first."""
        doc = await self._json(
            "list",
            "GET",
            _path("events", namespace),
            query={
                "fieldSelector": f"involvedObject.kind=Pod,involvedObject.name={pod_name}",
                "limit": limit,
            },
        )
        return list(doc.get("items") or [])

    # -- leases (coordination.k8s.io/v1) ----------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> Json | None:
        """The Lease, or None when it does not exist."""
        try:
            return await self._json("get", "GET", _lease_path(namespace, name))
        except NotFound:
            return None

    async def create_lease(self, namespace: str, lease: Json) -> Json:
        """Create a Lease; AlreadyExists when another process made it first."""
        return await self._json("create", "POST", _lease_path(namespace), body=lease)

    async def replace_lease(self, namespace: str, name: str, lease: Json) -> Json:
        """Replace a Lease; Conflict when it changed since ``lease``'s resourceVersion was read
        (optimistic concurrency: another holder got there first)."""
        return await self._json("update", "PUT", _lease_path(namespace, name), body=lease)


def _lease_path(namespace: str, name: str | None = None) -> str:
    return _path("leases", namespace, name, base="/apis/coordination.k8s.io/v1")


# What the kubelet answers, with 200, for the log of a container the runtime no longer has (a
# previous instance already removed): not the container's words.
_NO_LOG = "unable to retrieve container logs for "


def log_text(data: bytes) -> str | None:
    """A pod log answer as text; None when the kubelet says it has no log to give."""
    text = data.decode("utf-8", "replace")
    return None if text.startswith(_NO_LOG) else text
