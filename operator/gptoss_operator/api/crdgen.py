"""Generate the CustomResourceDefinitions from the pydantic models.

The models in ``gptoss_operator.api`` are the one source of truth; this module turns
their JSON Schema into the structural OpenAPI v3 subset the apiserver accepts:
``$ref`` inlined, ``anyOf``-with-null collapsed, no ``additionalProperties: false``,
OpenAPI 3.0 exclusive bounds, and the CEL rules and list-map markers kept.

``python -m gptoss_operator.api.crdgen`` writes ``crds/`` and the chart's copy;
``--check`` fails when the committed files differ from what the models generate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gptoss_operator.api import batch, job, model
from gptoss_operator.api.common import CATEGORY, GROUP, VERSION

REPO_ROOT = Path(__file__).resolve().parents[3]
OUTPUT_DIRS = [REPO_ROOT / "crds", REPO_ROOT / "charts" / "gptoss-operator" / "crds"]

_DROP_KEYS = {"title", "examples"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one pydantic JSON Schema node into a structural OpenAPI v3 node."""
    node = dict(schema)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {**target, **node}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [opt for opt in any_of if opt.get("type") != "null"]
        if len(options) == 1:
            node = {**structural(options[0], defs), **node}
        elif {opt.get("type") for opt in options} == {"string", "integer"}:
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express anyOf {any_of} structurally")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
            continue
        if key == "items":
            out[key] = structural(value, defs)
            continue
        if key == "additionalProperties":
            if value is False:
                continue
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
            out[key] = structural(value, defs)
            continue
        out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        # No type: any JSON value (the apiserver allows it for such a field).
        out.pop("additionalProperties", None)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and not (out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out)
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def root_schema(
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    *,
    spec_required: bool,
    spec_rules: list[dict[str, Any]] | None,
    root_rules: list[dict[str, Any]],
    spec_default: bool,
) -> dict[str, Any]:
    spec_json = spec_model.model_json_schema(by_alias=True)
    status_json = status_model.model_json_schema(by_alias=True)
    spec = structural(spec_json, spec_json.get("$defs", {}))
    status = structural(status_json, status_json.get("$defs", {}))
    spec["description"] = (spec_model.__doc__ or "").strip() or spec.get("description", "")
    status["description"] = "Observed state, written by the operator and its workers."
    if spec_rules:
        spec["x-kubernetes-validations"] = spec_rules
    if spec_default:
        spec["default"] = {}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": root_rules,
    }
    if spec_required:
        schema["required"] = ["spec"]
    return schema


def _crd(module: Any, schema: dict[str, Any], subresources: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": subresources,
        "additionalPrinterColumns": module.PRINTER_COLUMNS,
        "schema": {"openAPIV3Schema": schema},
    }
    selectable = getattr(module, "SELECTABLE_FIELDS", None)
    if selectable:
        version["selectableFields"] = [{"jsonPath": path} for path in selectable]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{module.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "gptoss-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": module.KIND,
                "listKind": f"{module.KIND}List",
                "plural": module.PLURAL,
                "singular": module.SINGULAR,
                "shortNames": module.SHORT_NAMES,
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def gptossmodel_crd() -> dict[str, Any]:
    schema = root_schema(
        model.GptOssModelSpec,
        model.GptOssModelStatus,
        spec_required=False,
        spec_rules=None,
        root_rules=model.ROOT_RULES,
        spec_default=True,
    )
    schema["description"] = (
        "GptOssModel downloads a gpt-oss model into a volume and serves it with vLLM "
        "behind an OpenAI-compatible Service."
    )
    subresources = {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.serving.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    return _crd(model, schema, subresources)


def inferencejob_crd() -> dict[str, Any]:
    schema = root_schema(
        job.InferenceJobSpec,
        job.InferenceJobStatus,
        spec_required=True,
        spec_rules=job.SPEC_RULES,
        root_rules=job.ROOT_RULES,
        spec_default=False,
    )
    schema["description"] = (
        "InferenceJob is one chat request answered by a GptOssModel; the answer, its "
        "reasoning and usage land in status."
    )
    return _crd(job, schema, {"status": {}})


def inferencebatch_crd() -> dict[str, Any]:
    schema = root_schema(
        batch.InferenceBatchSpec,
        batch.InferenceBatchStatus,
        spec_required=True,
        spec_rules=batch.SPEC_RULES,
        root_rules=batch.ROOT_RULES,
        spec_default=False,
    )
    schema["description"] = (
        "InferenceBatch runs a file of chat requests in OpenAI's batch format against a "
        "GptOssModel and writes the answers to a file in the same format."
    )
    return _crd(batch, schema, {"status": {}})


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD document."""
    return {
        f"{GROUP}_{model.PLURAL}.yaml": gptossmodel_crd(),
        f"{GROUP}_{job.PLURAL}.yaml": inferencejob_crd(),
        f"{GROUP}_{batch.PLURAL}.yaml": inferencebatch_crd(),
    }


HEADER = "# Generated from the pydantic models by `make crds`; do not edit.\n"


def render(document: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)


def drift(output_dirs: list[Path] | None = None) -> list[str]:
    """Files under the output folders that differ from what the models generate."""
    stale = []
    for folder in output_dirs or OUTPUT_DIRS:
        for name, document in all_crds().items():
            path = folder / name
            if not path.exists() or path.read_text() != render(document):
                stale.append(str(path))
    return stale


def write(output_dirs: list[Path] | None = None) -> list[Path]:
    written = []
    for folder in output_dirs or OUTPUT_DIRS:
        folder.mkdir(parents=True, exist_ok=True)
        for name, document in all_crds().items():
            path = folder / name
            path.write_text(render(document))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        for path in stale:
            print(f"stale: {path} (run `make crds`)")
        return 1 if stale else 0
    for written in write():
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
