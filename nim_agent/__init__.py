"""nim-agent's public names: NVIDIA NIM inference servers as steps of Flyte workflows.

    from nim_agent import NIM, NIMSecrets, NIMTask

`NIM` and `NIMSecrets` describe a deployment (and, as in the older sidecar plugin, give a
flytekit PodTemplate through `NIM(...).pod_template`); `NIMTask` makes it a Flyte task of type
"nim" whose output `endpoint` is the server's in-cluster URL (with `typed_endpoint=True`, a
`NIMEndpoint`: base URL, OpenAI /v1 URL, served model id, adapter ids); with `reuse=True` (or
a `Reuse`) executions of the same serving configuration share one warm server.

Importing this package stays light: the configuration classes need only the standard library.
`NIMTask` and `PodTemplate` load flytekit the first time they are used; the Kubernetes client
is loaded only to build `NIM(...).pod_template`. The connector (server side) is never imported
from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nim_agent.config import NIM, ConfigError, NIMSecrets, Problem, Reuse
from nim_agent.contract import NIMEndpoint

if TYPE_CHECKING:
    from flytekit import PodTemplate

    from nim_agent.task import NIMTask, NIMTeardownTask

__all__ = [
    "NIM",
    "ConfigError",
    "NIMEndpoint",
    "NIMSecrets",
    "NIMTask",
    "NIMTeardownTask",
    "PodTemplate",
    "Problem",
    "Reuse",
    "__version__",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: the flytekit-backed names are imported on first use, not with the package.
    if name == "NIMTask":
        from nim_agent.task import NIMTask

        return NIMTask
    if name == "NIMTeardownTask":
        from nim_agent.task import NIMTeardownTask

        return NIMTeardownTask
    if name == "PodTemplate":
        from flytekit import PodTemplate

        return PodTemplate
    raise AttributeError(f"module 'nim_agent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
