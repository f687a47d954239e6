"""The vendored OpenAPI spec holds every schema the tests validate against, and every $ref resolves."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.helpers import OPENAPI_SPEC, REPO_ROOT
from tests.simulator_support import translated_spec, validator
from tests.spec.trim import PREFIX, ROOTS, closure, refs

SPEC_DIR = REPO_ROOT / "tests" / "spec"


def _raw() -> dict[str, Any]:
    with OPENAPI_SPEC.open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return data


def test_spec_lives_in_the_repository() -> None:
    assert OPENAPI_SPEC.resolve().is_relative_to(REPO_ROOT)
    assert OPENAPI_SPEC.is_file()


def test_every_root_and_every_reference_resolves() -> None:
    schemas = _raw()["components"]["schemas"]
    assert set(ROOTS) <= set(schemas)
    for name, schema in schemas.items():
        missing = refs(schema) - set(schemas)
        assert not missing, f"{name} references {missing}"


def test_nothing_kept_that_no_root_needs() -> None:
    schemas = _raw()["components"]["schemas"]
    assert closure(schemas, ROOTS) == list(schemas)


def test_closure_follows_references_and_rejects_unknown_ones() -> None:
    schemas = {"A": {"$ref": f"{PREFIX}B"}, "B": {"items": [{"$ref": f"{PREFIX}C"}]}, "C": {}, "D": {}}
    assert closure(schemas, ("A",)) == ["A", "B", "C"]
    with pytest.raises(SystemExit, match="'Z'"):
        closure({"A": {"$ref": f"{PREFIX}Z"}}, ("A",))


@pytest.mark.parametrize("name", ROOTS)
def test_each_root_compiles_into_a_working_validator(name: str) -> None:
    Draft202012Validator.check_schema(translated_spec()["components"]["schemas"][name])
    assert not validator(name).is_valid({})  # every root requires some properties


def test_provenance_matches_the_file() -> None:
    provenance = (SPEC_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    header = OPENAPI_SPEC.read_text(encoding="utf-8").splitlines()[1]
    sha = re.fullmatch(r"# Source sha256: ([0-9a-f]{64})", header)
    assert sha and f"`{sha.group(1)}`" in provenance
    assert "MIT" in provenance and _raw()["info"]["license"]["name"] == "MIT"
    assert f"({len(_raw()['components']['schemas'])} schemas)" in provenance
