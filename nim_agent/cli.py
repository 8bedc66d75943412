"""The `nim-agent` command.

    nim-agent render -f nim.yaml [--name NAME] [--namespace NS] [--adapter NAME=URI ...]
    nim-agent serve [--port 8000] [--metrics-port 9090] [--workers 10]
    nim-agent list [-n NS | -A]
    nim-agent teardown NAME|ENDPOINT [-n NS]

Exit status: 0 success, 2 invalid input (one line per problem on stderr, naming the field),
1 anything else. Each subcommand imports what it needs only when it runs, so `nim-agent render`
never loads flytekit or the Kubernetes client.

Adding a subcommand: write `_add_<name>(subparsers)` that declares its arguments and sets
`handler=` to a function `(args) -> int` doing its imports inside, and list it in `_COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nim_agent.settings import ConnectorSettings

__all__ = ["main"]

EXIT_INVALID = 2


class InvalidInput(Exception):
    """Input the user can fix: each line is one problem, already naming its field."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# --------------------------------------------------------------------------- render


def _add_render(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render",
        help="print the Kubernetes objects the connector would create for a config file",
        description=(
            "Print, as multi-document YAML, the objects the connector creates for a NIM config "
            "file (Pod first, then Service). The file is YAML or JSON: top-level keys are NIM "
            "parameters, `secrets:` holds the NIMSecrets parameters. Connector settings are "
            "read from NIM_AGENT_* env vars (and the file named by NIM_AGENT_CONFIG)."
        ),
    )
    p.add_argument("-f", "--file", required=True, help="config file (YAML or JSON); - for stdin")
    p.add_argument(
        "--name",
        help="task name, any form (capitals, dots, any length); object names derive from it "
        "(default: the file's name)",
    )
    p.add_argument(
        "--namespace",
        help="namespace of the execution (default: the connector's default_namespace)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="a LoRA adapter given as a task input: its name and the object-store URI of its "
        "folder (FlyteDirectory), e.g. support=s3://bucket/raw/ab/o0; repeatable",
    )
    p.set_defaults(handler=_render)


RENDER_HEADER = """\
# Objects the nim-agent connector creates for this config, in creation order.
# At creation it also sets the annotation nim-agent.dev/expires-at (creation time + ttl) and
# the Service's ownerReferences (the Pod's uid); a local run's name gets a random suffix.
"""


def _render(args: argparse.Namespace) -> int:
    from nim_agent.checks import ConfigError, check_dns_label
    from nim_agent.config import NIM
    from nim_agent.render import DeploymentIdentity, namespace_for, render, to_yaml
    from nim_agent.settings import ConnectorSettings

    path: str = args.file
    problems: list[str] = []
    if args.namespace is not None and (message := check_dns_label(args.namespace)):
        problems.append(f"--namespace: {message}")
    try:
        settings = ConnectorSettings.load()
    except ConfigError as exc:
        problems.extend(f"connector settings: {p}" for p in exc.problems)
    adapters: dict[str, str] = {}
    for given in args.adapter:
        name, sep, uri = given.partition("=")
        if not sep or not name or not uri:
            problems.append(f"--adapter: {given!r} is not NAME=URI, e.g. support=s3://bucket/o0")
        else:
            adapters[name] = uri
    data = _read_config(path)
    try:
        nim = NIM.from_dict(data)
    except ConfigError as exc:
        problems.extend(f"{path}: {p}" for p in exc.problems)
    if problems:
        raise InvalidInput(problems)
    try:
        namespace = namespace_for(nim, args.namespace, settings)
        name = args.name if args.name is not None else _default_name(path)
        identity = DeploymentIdentity.for_local(name, namespace, nonce="")
        objects = render(nim, identity, settings, adapter_uris=adapters)
    except ConfigError as exc:
        raise InvalidInput([f"{path}: {p}" for p in exc.problems]) from None
    sys.stdout.write(to_yaml(objects, header=RENDER_HEADER))
    return 0


def _default_name(path: str) -> str:
    if path == "-":
        return "nim"
    name = Path(path).name
    for suffix in (".yaml", ".yml", ".json"):
        name = name.removesuffix(suffix)
    return name or "nim"


def _read_config(path: str) -> object:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput([f"{path}: cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise InvalidInput([f"{path}: is not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InvalidInput([f"{path}: not valid YAML or JSON{where}: {problem}"]) from None


# --------------------------------------------------------------------------- serve


def _add_serve(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the connector: flytekit's gRPC connector server, the pod watch and cleanup",
        description=(
            "Serve the nim and nim-teardown task types over Flyte's connector gRPC protocol "
            "(flytekit's server: AsyncAgentService, AgentMetadataService, gRPC health), with "
            "Prometheus metrics (flyte_connector_* and nim_agent_*) on --metrics-port. Settings "
            "come from NIM_AGENT_* env vars and the file named by NIM_AGENT_CONFIG."
        ),
    )
    p.add_argument("--port", type=int, default=8000, help="gRPC port (default 8000)")
    p.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus metrics port (default 9090)"
    )
    p.add_argument("--workers", type=int, default=10, help="gRPC worker threads (default 10)")
    p.set_defaults(handler=_serve)


def _load_settings() -> ConnectorSettings:
    from nim_agent.checks import ConfigError
    from nim_agent.settings import ConnectorSettings

    try:
        return ConnectorSettings.load()
    except ConfigError as exc:
        raise InvalidInput([f"connector settings: {p}" for p in exc.problems]) from None


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    _load_settings()  # fail fast, with exit 2, on bad settings
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # flytekit's servicers, health service and metrics endpoint, as `pyflyte serve connector`
    # assembles them. We assemble them here rather than call its `_start_grpc_server` because
    # that one gives no handle to stop the server: on SIGTERM (every pod termination) we stop
    # taking calls, let the ones in flight finish, then stop the watch and cleanup loop.
    import grpc
    from flyteidl.service.agent_pb2_grpc import (
        add_AgentMetadataServiceServicer_to_server,
        add_AsyncAgentServiceServicer_to_server,
        add_SyncAgentServiceServicer_to_server,
    )
    from flytekit.clis.sdk_in_container.serve import _start_http_server
    from flytekit.extend.backend.base_connector import ConnectorRegistry
    from flytekit.extend.backend.connector_service import (
        AsyncConnectorService,
        ConnectorMetadataService,
        SyncConnectorService,
    )

    from nim_agent.runtime import close_kube_for_current_loop
    from nim_agent.spec import TASK_TYPE

    connector = ConnectorRegistry.get_connector(TASK_TYPE)  # registered by `import flytekit`

    async def run() -> None:
        from concurrent.futures import ThreadPoolExecutor

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _start_http_server(args.metrics_port)
        server = grpc.aio.server(ThreadPoolExecutor(max_workers=args.workers))
        add_AsyncAgentServiceServicer_to_server(AsyncConnectorService(), server)
        add_SyncAgentServiceServicer_to_server(SyncConnectorService(), server)
        add_AgentMetadataServiceServicer_to_server(ConnectorMetadataService(), server)
        health = await _add_health_service(server)
        server.add_insecure_port(f"[::]:{args.port}")
        background = connector.start_background()
        from nim_agent.runtime import supervised

        background.tasks.append(
            supervised(lambda: _report_health(health, background), "health-reporter")
        )
        await server.start()
        logging.getLogger("nim_agent").info(
            "nim-agent serving task types nim, nim-teardown on :%d (metrics :%d)",
            args.port,
            args.metrics_port,
        )
        try:
            await stop.wait()
        finally:
            await server.stop(grace=10)
            await connector.stop_background()
            await close_kube_for_current_loop()

    asyncio.run(run())
    return 0


# The gRPC health service's name for "this process is sound": the chart's liveness probe asks it.
LIVENESS_SERVICE = "nim-agent"


async def _add_health_service(server: Any) -> Any:
    """The standard gRPC health service, as flytekit's server registers it ("" and each
    connector service: SERVING once started, for startup and readiness), plus
    `LIVENESS_SERVICE`, kept up to date by `_report_health`."""
    from flyteidl.admin import agent_pb2
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.aio.HealthServicer()
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in agent_pb2.DESCRIPTOR.services_by_name.values():
        await servicer.set(service.full_name, serving)
    for name in (health.SERVICE_NAME, "", LIVENESS_SERVICE):
        await servicer.set(name, serving)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def _report_health(servicer: Any, background: Any) -> None:
    """Every 5 s, `LIVENESS_SERVICE` says whether the background work is sound (a watch that
    cannot sync for ten minutes, or a loop failing over and over, is not); changes are logged."""
    import asyncio
    import logging

    from grpc_health.v1 import health_pb2

    was: str | None = None
    while True:
        problem = background.health()
        if problem != was:
            log = logging.getLogger("nim_agent")
            if problem:
                log.error("unhealthy (liveness NOT_SERVING): %s", problem)
            elif was:
                log.info("healthy again")
            was = problem
        status = health_pb2.HealthCheckResponse
        await servicer.set(LIVENESS_SERVICE, status.NOT_SERVING if problem else status.SERVING)
        await asyncio.sleep(5)


# --------------------------------------------------------------------------- list


def _add_list(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "list",
        help="list NIM deployments with phase, age, expiry, holders, idle time and adapters",
        description="List the NIM deployments nim-agent made (kubeconfig or in-cluster access). "
        "Shared servers (NIMTask(reuse=...)) show their live holders, how long they have been "
        "idle (and when they stop), and the adapters they serve; --holders lists each holder.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "-n", "--namespace", help="this namespace (default: the kubeconfig's current namespace)"
    )
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument(
        "--holders",
        action="store_true",
        help="also one line per holder of each shared server: since, until, adapters",
    )
    p.set_defaults(handler=_list)


def _list(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from nim_agent.contract import (
        endpoint_of,
        expires_at,
        format_duration,
        format_time,
        holder_records,
        is_shared,
        parse_time,
        requested_adapters,
        stop_record,
        wanted_adapters,
    )
    from nim_agent.kube import KubeError
    from nim_agent.sharing import idle_deadline, idle_since, live_holders
    from nim_agent.status import classify, policy_for

    settings = _load_settings()
    try:
        namespace = None if args.all_namespaces else _namespace(args.namespace)
        pods = asyncio.run(_our_pods(namespace))
    except KubeError as exc:
        print(f"nim-agent list: {exc}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    base = settings.status_policy()
    rows = [
        (
            "NAMESPACE",
            "NAME",
            "PHASE",
            "REASON",
            "AGE",
            "EXPIRES IN",
            "HOLDERS",
            "IDLE",
            "ADAPTERS",
            "ENDPOINT",
        )
    ]
    holder_rows = []
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        meta = pod.get("metadata") or {}
        endpoint = endpoint_of(pod)
        result = classify(pod, now=now, policy=policy_for(pod, base), endpoint=endpoint)
        record = stop_record(pod)
        created = parse_time(meta.get("creationTimestamp"))
        expiry = expires_at(pod)
        left = "-" if expiry is None or record else format_duration(expiry - now, exact=False)
        holders, idle = "-", "-"
        adapters = list(requested_adapters(pod))
        if is_shared(pod):
            live = live_holders(pod, now)
            holders = str(len(live))
            adapters = sorted(wanted_adapters(meta.get("annotations") or {}))
            since, deadline = idle_since(pod, now), idle_deadline(pod, now)
            if since is not None and record is None:
                idle = format_duration(now - since, exact=False)
                if deadline is not None:
                    idle += f" (stops in {format_duration(deadline - now, exact=False)})"
            endpoint = f"{len(holder_records(pod))} holder endpoints (--holders)"
            for name, h in sorted(holder_records(pod).items(), key=lambda x: x[1].since):
                state = "live" if name in live else f"ended ({h.ended_by or 'ttl'})"
                holder_rows.append(
                    f"  {meta.get('namespace')}/{meta.get('name')}: holder {name} {state}, "
                    f"since {format_time(h.since)}, until {format_time(h.until)}, "
                    f"{'served' if h.served else 'not served yet'}, adapters "
                    f"{', '.join(h.adapters) or 'none'}"
                )
        rows.append(
            (
                str(meta.get("namespace")),
                str(meta.get("name")),
                result.phase.value,
                f"{result.reason.value} (stopped: {record.cause})"
                if record
                else result.reason.value,
                "-" if created is None else format_duration(now - created, exact=False),
                left,
                holders,
                idle,
                ",".join(adapters) or "-",
                endpoint,
            )
        )
    if len(rows) == 1:
        where = f"namespace {namespace}" if namespace else "any namespace"
        print(f"No NIM deployments in {where}.")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.holders and holder_rows:
        print("Holders of shared servers:")
        print("\n".join(holder_rows))
    return 0


# --------------------------------------------------------------------------- teardown


def _add_teardown(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "teardown",
        help="delete a NIM deployment now (by name or endpoint)",
        description="Delete a NIM deployment's Pod and Service. Only deployments nim-agent made "
        "are deleted; one already gone is not an error.",
    )
    p.add_argument(
        "target",
        metavar="NAME|ENDPOINT",
        nargs="?",
        help="deployment name, or its endpoint URL",
    )
    p.add_argument(
        "-n",
        "--namespace",
        help="namespace of NAME (default: the kubeconfig's current namespace; an endpoint names "
        "its own)",
    )
    p.add_argument(
        "--expired",
        action="store_true",
        help="instead of one deployment: delete every one whose ttl has passed or that has ended "
        "or been stopped (what a connector would clean up; e.g. after it was uninstalled)",
    )
    p.add_argument(
        "-A", "--all-namespaces", action="store_true", help="with --expired: every namespace"
    )
    p.set_defaults(handler=_teardown)


def _teardown(args: argparse.Namespace) -> int:
    import asyncio

    from nim_agent.checks import check_dns_label
    from nim_agent.contract import deployment_of_endpoint

    if args.expired:
        if args.target:
            raise InvalidInput(["NAME|ENDPOINT: not with --expired (it picks the deployments)"])
        return _teardown_expired(args)
    if args.all_namespaces:
        raise InvalidInput(["--all-namespaces: only with --expired"])
    target: str | None = args.target
    if not target:
        raise InvalidInput(["NAME|ENDPOINT: required (or --expired)"])
    parsed = deployment_of_endpoint(target) if "://" in target else None
    if "://" in target and parsed is None:
        raise InvalidInput(
            [f"ENDPOINT: {target!r} is not http://<name>.<namespace>.svc.cluster.local:<port>"]
        )
    if parsed is None:
        problems = [f"NAME: {m}" for m in [check_dns_label(target)] if m]
        if args.namespace:
            problems += [f"--namespace: {m}" for m in [check_dns_label(args.namespace)] if m]
        if problems:
            raise InvalidInput(problems)
        from nim_agent.kube import KubeError

        try:
            parsed = (target, _namespace(args.namespace))
        except KubeError as exc:
            print(f"nim-agent teardown: {exc}", file=sys.stderr)
            return 1
    name, namespace = parsed
    _load_settings()
    from flytekit.extend.backend.base_connector import ConnectorRegistry

    from nim_agent.kube import KubeError
    from nim_agent.spec import TASK_TYPE

    connector = ConnectorRegistry.get_connector(TASK_TYPE)

    async def run() -> str:
        from nim_agent.runtime import close_kube_for_current_loop

        try:
            message: str = await connector.teardown(namespace, name)
            return message
        finally:
            await close_kube_for_current_loop()

    try:
        print(asyncio.run(run()))
    except (KubeError, PermissionError) as exc:
        print(f"nim-agent teardown: {exc}", file=sys.stderr)
        return 1
    return 0


def _teardown_expired(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from nim_agent.contract import TTL, expires_at, stop_record
    from nim_agent.kube import KubeError
    from nim_agent.reaper import delete_deployment

    _load_settings()

    async def run(namespace: str | None) -> list[str]:
        from nim_agent.kube import Kube

        now = datetime.now(UTC)
        done = []
        kube = await Kube.connect()
        try:
            pods, _ = await kube.list_pods(namespace, label_selector=_owned())
            for pod in pods:
                meta = pod.get("metadata") or {}
                expiry, record = expires_at(pod), stop_record(pod)
                ended = (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")
                if meta.get("deletionTimestamp") or not (
                    record or ended or (expiry is not None and now >= expiry)
                ):
                    continue
                ns, name = str(meta.get("namespace")), str(meta.get("name"))
                why = f"stopped ({record.cause})" if record else "ended" if ended else "ttl passed"
                await delete_deployment(
                    kube,
                    ns,
                    name,
                    cause=TTL,
                    detail=f"nim-agent teardown --expired: {why}",
                    server=not (record or ended),
                )
                done.append(f"deleted NIM deployment {ns}/{name} ({why})")
        finally:
            await kube.close()
        return done

    try:
        namespace = None if args.all_namespaces else _namespace(args.namespace)
        done = asyncio.run(run(namespace))
    except KubeError as exc:
        print(f"nim-agent teardown: {exc}", file=sys.stderr)
        return 1
    where = f"namespace {namespace}" if namespace else "any namespace"
    print("\n".join(done) if done else f"No expired or stopped NIM deployments in {where}.")
    return 0


def _owned() -> str:
    from nim_agent.contract import OWNED_BY_US

    return OWNED_BY_US


def _namespace(given: str | None) -> str:
    """The namespace as kubectl picks it: the one given, else the kubeconfig's current one."""
    if given:
        return given
    from nim_agent.kube import current_namespace

    return current_namespace()


async def _our_pods(namespace: str | None) -> list[Any]:
    from nim_agent.kube import Kube

    kube = await Kube.connect()
    try:
        pods, _ = await kube.list_pods(namespace, label_selector=_owned())
    finally:
        await kube.close()
    return pods


# --------------------------------------------------------------------------- entry point

_COMMANDS: list[Callable[[Any], None]] = [_add_render, _add_serve, _add_list, _add_teardown]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nim-agent",
        description="Run NVIDIA NIM servers as steps of Flyte workflows.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `nim-agent` with `argv` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    try:
        status: int = handler(args)
    except InvalidInput as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    return status


if __name__ == "__main__":
    sys.exit(main())
