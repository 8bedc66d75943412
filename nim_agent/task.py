"""The user's task types, as flytekit classes: NIMTask ("nim") and NIMTeardownTask ("nim-teardown").

They only describe the work: a NIMTask's `TaskTemplate.custom` is the `NIMTaskConfig` proto in
JSON form (`nim_agent.spec`); the connector (`nim_agent.connector`), server side, reads it back
and does the work. Locally, `pyflyte run` calls the same connector in-process: `execute`
imports it, which registers it with flytekit, and flytekit's connector executor mixins find it
by task type.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flytekit.configuration import SerializationSettings
from flytekit.core.base_task import PythonTask
from flytekit.core.interface import Interface
from flytekit.extend.backend.base_connector import (
    AsyncConnectorExecutorMixin,
    SyncConnectorExecutorMixin,
)

from nim_agent.checks import ConfigError, Problem, closest
from nim_agent.config import NIM
from nim_agent.spec import TASK_TYPE, TEARDOWN_TASK_TYPE, check_ttl, to_custom

__all__ = ["NIMTask", "NIMTeardownTask"]


class NIMTask(AsyncConnectorExecutorMixin, PythonTask):  # type: ignore[misc]
    """A Flyte task that deploys a NIM server and outputs its in-cluster URL as `endpoint`.

    After success the server keeps running for the steps that follow, until `ttl` has passed
    (the connector stops it then; unset: the connector's `default_ttl`, 2h unless the operator
    changed it) or the execution is aborted. Other keyword arguments go to flytekit's task base
    (e.g. `metadata=TaskMetadata(retries=2)`, `docs=...`); an unknown one is refused, naming it.

    Example::

        llama = NIMTask(name="llama3-8b", nim=NIM(secrets=..., gpu=1), ttl=timedelta(hours=2))

        @workflow
        def wf(question: str) -> str:
            endpoint = llama()
            return ask(endpoint=endpoint, question=question)
    """

    def __init__(self, name: str, nim: NIM, ttl: timedelta | None = None, **kwargs: Any) -> None:
        _check_task_kwargs("NIMTask", kwargs, ("name", "nim", "ttl"))
        if not isinstance(nim, NIM):
            raise ConfigError([Problem("nim", f"{type(nim).__name__} given; use NIM(...)")])
        if nim.download_inputs:
            raise ConfigError(
                [
                    Problem(
                        "download_inputs",
                        "applies to the sidecar form (NIM(...).pod_template) only: a NIMTask has "
                        "no inputs to download; leave it False",
                    )
                ]
            )
        self._nim = nim
        self._ttl = check_ttl(ttl)
        super().__init__(
            task_type=TASK_TYPE,
            name=name,
            task_config=nim,
            interface=Interface(inputs={}, outputs={"endpoint": str}),
            **kwargs,
        )

    @property
    def nim(self) -> NIM:
        """The deployment this task describes."""
        return self._nim

    @property
    def ttl(self) -> timedelta | None:
        """How long the deployment may live (None: the connector's default_ttl)."""
        return self._ttl

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        """The NIMTaskConfig proto as JSON, for TaskTemplate.custom."""
        return to_custom(self._nim, self._ttl)

    def execute(self, **kwargs: Any) -> Any:
        """Local run (`pyflyte run`): the mixin calls the NIM connector in-process."""
        import nim_agent.connector  # noqa: F401  registers the connector with flytekit

        return super().execute(**kwargs)


class NIMTeardownTask(SyncConnectorExecutorMixin, PythonTask):  # type: ignore[misc]
    """A Flyte task that removes a NIM deployment as soon as the workflow is done with it.

    Its input is the `endpoint` a NIMTask returned; the connector deletes that deployment's Pod
    and Service: only deployments nim-agent made, of the same Flyte project and domain as this
    task (`force=True` lifts that, logged); one already gone is success. Without it the server
    lives until its ttl.

    Example::

        teardown = NIMTeardownTask(name="llama3-8b-teardown")

        @workflow
        def wf(question: str) -> str:
            endpoint = llama()
            answer = ask(endpoint=endpoint, question=question)
            answer >> teardown(endpoint=endpoint)
            return answer
    """

    def __init__(self, name: str, force: bool = False, **kwargs: Any) -> None:
        _check_task_kwargs("NIMTeardownTask", kwargs, ("name", "force"))
        if not isinstance(force, bool):
            raise ConfigError([Problem("force", f"{force!r} is not True or False")])
        self._force = force
        super().__init__(
            task_type=TEARDOWN_TASK_TYPE,
            name=name,
            interface=Interface(inputs={"endpoint": str}, outputs={}),
            **kwargs,
        )

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        """``{"force": true}`` when forced: the connector then tears down a deployment of
        another Flyte project or domain too (and logs it)."""
        return {"force": True} if self._force else {}

    def execute(self, **kwargs: Any) -> Any:
        """Local run (`pyflyte run`): the mixin calls the teardown connector in-process."""
        import nim_agent.connector  # noqa: F401  registers the connectors with flytekit

        return super().execute(**kwargs)


# What flytekit's task base takes, besides what the task types set themselves: PythonTask's own
# keywords and those it passes on to Task (flytekit 1.16).
_FLYTEKIT_TASK_KWARGS = (
    "environment",
    "disable_deck",
    "enable_deck",
    "deck_fields",
    "metadata",
    "task_type_version",
    "security_ctx",
    "docs",
)


def _check_task_kwargs(cls: str, kwargs: dict[str, Any], own: tuple[str, ...]) -> None:
    """Refuse keywords flytekit's task base would not use (a typo such as `tll=` would
    otherwise be dropped silently), naming each and the closest valid one."""
    valid = (*own, *_FLYTEKIT_TASK_KWARGS)
    problems = [
        Problem(key, f"is not a parameter of {cls}{closest(key, valid)}")
        for key in kwargs
        if key not in _FLYTEKIT_TASK_KWARGS
    ]
    if problems:
        raise ConfigError(problems, f"the {cls} arguments")
