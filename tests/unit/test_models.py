"""`nim_agent.models`: what a ``/v1/models`` answer lists, and what a deployment still lacks."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nim_agent.models import Missing, ModelList, missing, parse_models

BASE = "meta/llama3-8b-instruct"


def card(model_id: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    """A model card as vLLM-based NIMs list them."""
    return {
        "id": model_id,
        "object": "model",
        "created": 1764489600,
        "owned_by": "system",
        "root": f"/opt/nim/loras/{model_id}" if parent else BASE,
        "parent": parent,
        **extra,
    }


def answer(*cards: dict[str, Any]) -> bytes:
    return json.dumps({"object": "list", "data": list(cards)}).encode()


@pytest.mark.parametrize(
    ("body", "base", "adapters"),
    [
        pytest.param(answer(card(BASE)), (BASE,), {}, id="the base model alone"),
        pytest.param(
            answer(card(BASE), card("support-lora", BASE), card("math-lora", BASE)),
            (BASE,),
            {"support-lora": BASE, "math-lora": BASE},
            id="adapters are entries whose parent is set",
        ),
        pytest.param(
            answer(card(BASE, parent=BASE)), (BASE,), {}, id="an entry that is its own parent"
        ),
        pytest.param(answer(card(BASE, parent="")), (BASE,), {}, id="an empty parent is no parent"),
        pytest.param(
            answer(card("served-name"), card("lora-a", "served-name", root="/elsewhere/x")),
            ("served-name",),
            {"lora-a": "served-name"},
            id="matched by parent, whatever the root path says",
        ),
        pytest.param(
            answer({"object": "model"}, {"id": 7}, "junk", card(BASE)),
            (BASE,),
            {},
            id="entries without a string id are skipped",
        ),
        pytest.param(answer(), (), {}, id="an empty list"),
    ],
)
def test_parse_models_reads_base_models_and_adapters(
    body: bytes, base: tuple[str, ...], adapters: dict[str, str]
) -> None:
    models = parse_models(body)
    assert models.base == base
    assert dict(models.adapters) == adapters


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not JSON: (empty)"),
        (b"<html>Service Unavailable</html>", "not JSON: <html>Service Unavailable</html>"),
        (b'{"object": "list"}', 'no "data" list'),
        (b'{"error": {"message": "model is loading"}}', 'no "data" list'),
        (b"[1, 2]", 'no "data" list'),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_an_answer_that_is_not_a_model_list_says_why(body: bytes, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_models(body)
    assert fragment in str(caught.value)


LISTED = ModelList(base=(BASE,), adapters={"support-lora": BASE, "stray": "other/model"})


@pytest.mark.parametrize(
    ("models", "adapters", "model", "expected"),
    [
        pytest.param(LISTED, [], None, Missing(), id="nothing asked, a base model listed"),
        pytest.param(LISTED, ["support-lora"], None, Missing(), id="the adapter is listed"),
        pytest.param(
            LISTED,
            ["support-lora", "math-lora"],
            None,
            Missing(adapters=("math-lora",)),
            id="an adapter not listed",
        ),
        pytest.param(
            LISTED,
            ["stray"],
            None,
            Missing(adapters=("stray",)),
            id="an adapter listed under another base model does not count",
        ),
        pytest.param(ModelList(), [], None, Missing(model="*"), id="no base model at all"),
        pytest.param(
            ModelList(adapters={"a": BASE}),
            ["a"],
            None,
            Missing(model="*", adapters=("a",)),
            id="an adapter whose base model is not listed",
        ),
        pytest.param(LISTED, [], BASE, Missing(), id="the expected base model is listed"),
        pytest.param(
            LISTED,
            ["support-lora"],
            "meta/other",
            Missing(model="meta/other", adapters=("support-lora",)),
            id="another base model than NIM_SERVED_MODEL_NAME",
        ),
        pytest.param(
            LISTED,
            [],
            f"alias, {BASE}",
            Missing(),
            id="one of several served names is enough",
        ),
    ],
)
def test_missing_names_the_base_model_and_adapters_not_listed(
    models: ModelList, adapters: list[str], model: str | None, expected: Missing
) -> None:
    assert missing(models, adapters=adapters, model=model) == expected


def test_missing_is_false_when_nothing_is_missing() -> None:
    assert not Missing() and Missing(adapters=("a",)) and Missing(model="*")


def test_describe_lists_what_a_server_serves() -> None:
    assert LISTED.describe() == f"{BASE} + adapters stray, support-lora"
    assert ModelList().describe() == "nothing"
    assert ModelList(adapters={"a": "b"}).describe() == "no base model + adapters a"


@given(st.binary(max_size=300))
def test_parse_models_never_raises_anything_but_value_error(body: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_models(body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=20,
    )
)
def test_parse_models_copes_with_any_json_in_data(data: object) -> None:
    models = parse_models(json.dumps({"data": data if isinstance(data, list) else [data]}))
    assert all(isinstance(m, str) for m in models.base)
