"""Whether a value a user gave as a JSON schema is one (draft 2020-12).

The apiserver holds a schema to be a JSON object; whether it is a JSON schema it cannot
tell. ``spec_problem`` says, for an InferenceJob's spec as stored (a plain dict), so the
operator can fail a queued job and a sidecar a claimed one, naming the field.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


def schema_problem(schema: object) -> str | None:
    """Why ``schema`` is not a JSON schema, or None."""
    if not isinstance(schema, Mapping):
        return "must be a JSON object"
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        return f"is not a JSON schema: {error.message}" + (f" (at {where})" if where else "")
    return None


def spec_problem(spec: Mapping[str, Any]) -> str | None:
    """The first schema in an InferenceJob's spec that is not a JSON schema, as
    "FIELD PROBLEM", or None."""
    schemas: list[tuple[str, Any]] = [
        (f"spec.tools[{index}].parameters", tool.get("parameters"))
        for index, tool in enumerate(spec.get("tools") or [])
        if isinstance(tool, Mapping) and tool.get("parameters") is not None
    ]
    format_ = spec.get("responseFormat") or {}
    if isinstance(format_, Mapping) and isinstance(format_.get("jsonSchema"), Mapping):
        schemas.append(
            ("spec.responseFormat.jsonSchema.schema", format_["jsonSchema"].get("schema"))
        )
    for field, schema in schemas:
        if problem := _problem_of(json.dumps(schema, sort_keys=True)):
            return f"{field} {problem}"
    return None


@functools.lru_cache(maxsize=1024)
def _problem_of(schema_json: str) -> str | None:
    """schema_problem, once per schema: a spec is read again on every event of its job."""
    return schema_problem(json.loads(schema_json))
