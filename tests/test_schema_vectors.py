"""The shared schema vectors (tests/vectors/schema.json), also run by the Lua suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from zedctl.kvmap import flatten, read_config
from zedctl.schema import Schema

VECTORS = json.loads((Path(__file__).parent / "vectors" / "schema.json").read_text("utf-8"))
CASES = VECTORS["cases"]


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema.load()


def test_vectors_are_well_formed() -> None:
    assert len(CASES) >= 40
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        assert case["kind"] in ("instance", "global")
        assert isinstance(case["valid"], bool)
        if case["valid"]:
            assert "errors" not in case
        else:
            assert case["errors"], case["name"]
            assert "effective" not in case and "kv" not in case


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(schema: Schema, case: dict[str, Any]) -> None:
    normalised, problems = schema.validate(case["kind"], case["config"])
    reported = [{"path": list(p.path), "value": p.value} for p in problems]
    # Compared as JSON text so that True and 1 (equal in Python) stay apart.
    reported_text = {json.dumps(r, sort_keys=True) for r in reported}
    if case["valid"]:
        assert reported == []
        if "effective" in case:
            assert schema.effective(case["kind"], normalised) == case["effective"]
        if "kv" in case:
            kv = flatten(schema, case["kind"], normalised)
            assert kv == case["kv"]
            # What is stored reads back as what was written.
            assert read_config(schema, case["kind"], kv) == (normalised, [])
    else:
        for error in case["errors"]:
            assert json.dumps(error, sort_keys=True) in reported_text, (
                f"{error} not among {reported}"
            )
