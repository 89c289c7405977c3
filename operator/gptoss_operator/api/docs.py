"""API reference tables for the README, generated from the CRDs (which the models generate).

``python -m gptoss_operator.api.docs`` rewrites the part of README.md between the
``<!-- api-reference:begin -->`` and ``<!-- api-reference:end -->`` markers; a test fails
when the README is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gptoss_operator.api.crdgen import REPO_ROOT, all_crds

BEGIN = "<!-- api-reference:begin -->"
END = "<!-- api-reference:end -->"
README = REPO_ROOT / "README.md"


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "object")
    if kind == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(str(v) for v in schema["enum"])
    if schema.get("format") == "date-time":
        return "timestamp"
    return str(kind)


def _rules(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (("minimum", ">="), ("maximum", "<=")):
        if key in schema:
            exclusive = schema.get(f"exclusive{key.capitalize()}") is True
            parts.append(f"{label.rstrip('=') if exclusive else label} {schema[key]}")
    if "minItems" in schema:
        parts.append(f"min {schema['minItems']} items")
    if "maxLength" in schema and schema["maxLength"] < 10000:
        parts.append(f"max {schema['maxLength']} chars")
    return ", ".join(parts)


def _rows(schema: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, prop in schema.get("properties", {}).items():
        if name == "kopf":
            continue
        full = f"{path}.{name}"
        default = json.dumps(prop["default"]) if "default" in prop and prop["default"] != {} else ""
        description = " ".join(str(prop.get("description", "")).split())
        flags = "required" if name in required else ""
        notes = "; ".join(x for x in (flags, _rules(prop)) if x)
        rows.append(
            f"| `{full}` | {_type(prop)} | {f'`{default}`' if default else ''} | "
            f"{description}{f' ({notes})' if notes else ''} |"
        )
        child = prop.get("items", prop) if prop.get("type") == "array" else prop
        if child.get("properties") and not child.get("x-kubernetes-preserve-unknown-fields"):
            suffix = "[]" if prop.get("type") == "array" else ""
            rows += _rows(child, full + suffix, set(child.get("required", [])))
    return rows


def reference() -> str:
    sections = []
    for document in all_crds().values():
        names = document["spec"]["names"]
        version = document["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        rules = [r["message"] for r in schema.get("x-kubernetes-validations", [])]
        for part in ("spec", "status"):
            part_schema = schema["properties"][part]
            rules += [r["message"] for r in part_schema.get("x-kubernetes-validations", [])]
            for prop in part_schema.get("properties", {}).values():
                rules += [r["message"] for r in prop.get("x-kubernetes-validations", [])]
        sections.append(
            f"#### {names['kind']} (`{document['spec']['group']}/{version['name']}`, "
            f"short name `{names['shortNames'][0]}`)\n\n"
            "| field | type | default | description |\n|---|---|---|---|\n"
            + "\n".join(
                _rows(
                    schema["properties"]["spec"],
                    "spec",
                    set(schema["properties"]["spec"].get("required", [])),
                )
            )
            + "\n"
            + "\n".join(_rows(schema["properties"]["status"], "status", set()))
            + "\n\nAdmission rules beyond the types: "
            + "; ".join(dict.fromkeys(rules))
            + ".\n"
        )
    return "\n".join(sections)


def updated_readme(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END)
    return text[: start + len(BEGIN)] + "\n" + reference() + text[end:]


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = README.read_text()
    fresh = updated_readme(text)
    if check:
        if fresh != text:
            print("README.md's API reference is stale: run `make docs`")
            return 1
        return 0
    Path(README).write_text(fresh)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
