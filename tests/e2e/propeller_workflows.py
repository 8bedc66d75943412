"""Workflows the flytepropeller tests run (devcluster/propeller/flyte_run.py create MODULE:NAME).

Only connector tasks: kwok simulates pods but runs no containers, so a Python task could not
run here. The step that consumes the endpoint is the teardown task (a sync connector task).
"""

from __future__ import annotations

from datetime import timedelta

from flytekit import workflow

from nim_agent import NIM, NIMSecrets, NIMTask, NIMTeardownTask, Reuse


def nim_task(simulate: str, ready_after: str | None = None, reuse: Reuse | None = None) -> NIMTask:
    return NIMTask(
        name=f"llama-{simulate}"
        + (f"-after-{ready_after}" if ready_after else "")
        + ("-shared" if reuse else ""),
        nim=NIM(
            secrets=NIMSecrets(
                ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="_FSEC_"
            ),
            gpu=1,
            labels={"nim-agent.dev/simulate": simulate},
            # kwok's time from container start to Ready (devcluster/kwok/pod-stages.yaml)
            annotations=(
                {"nim-agent.dev/simulate-ready-after": ready_after} if ready_after else None
            ),
        ),
        ttl=timedelta(minutes=30),
        reuse=reuse,
    )


ready = nim_task("ready")
# Long enough to span a rolling restart of the connector (two replicas, one after the other).
slow_ready = nim_task("ready", ready_after="60s")
crashloop = nim_task("crashloop")
never_ready = nim_task("never-ready")
shared = nim_task("ready", reuse=Reuse(idle_ttl=timedelta(minutes=1)))
teardown = NIMTeardownTask(name="llama-teardown")


@workflow
def endpoint_wf() -> str:
    """The NIM's endpoint is the workflow's output."""
    return ready()


@workflow
def endpoint_then_teardown_wf() -> str:
    """The next step consumes the endpoint: the teardown task removes the deployment."""
    endpoint = ready()
    teardown(endpoint=endpoint)
    return endpoint


@workflow
def slow_endpoint_then_teardown_wf() -> str:
    """As endpoint_then_teardown_wf, with a server that takes 60 s to get ready."""
    endpoint = slow_ready()
    teardown(endpoint=endpoint)
    return endpoint


@workflow
def crashloop_wf() -> str:
    return crashloop()


@workflow
def never_ready_wf() -> str:
    return never_ready()


@workflow
def shared_wf() -> str:
    """A warm server: executions of the same configuration share one (NIMTask(reuse=...))."""
    return shared()


@workflow
def shared_then_teardown_wf() -> str:
    """Holds the shared server, then releases it (the teardown releases this holder only)."""
    endpoint = shared()
    teardown(endpoint=endpoint)
    return endpoint
