"""`nim_agent.kube.log_text`: what a pod log answer says."""

from __future__ import annotations

import pytest

from nim_agent.kube import log_text


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"INFO start\nERROR exit 3\n", "INFO start\nERROR exit 3\n"),
        (b"", ""),
        (b"caf\xc3\xa9 \xff", "caf\u00e9 \ufffd"),
        # kubelet v1.37 on the real node, a previous container already removed
        # (tests/unit/fixtures/kubelet/oom-killed.json)
        (b"unable to retrieve container logs for containerd://0123abcd", None),
    ],
    ids=["a log", "an empty log", "bytes that are not UTF-8", "the kubelet has no log"],
)
def test_a_log_answer_is_the_containers_words_or_none(data: bytes, text: str | None) -> None:
    assert log_text(data) == text
