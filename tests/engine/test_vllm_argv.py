"""The command line the operator renders is the one the pinned vLLM accepts.

Every argv goes through the installed vLLM's own ``vllm serve`` argument parser (and the
checks ``vllm serve`` runs before it starts), so a flag renamed or removed upstream, or a
value of the wrong type, fails here and not on a GPU node.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import ModelContext, serving
from gptoss_operator.core.settings import Settings
from gptoss_sandbox import vllm_argv_check
from gptoss_sandbox.engine_venv import EngineVenv

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

REPRESENTATIVE = {
    "defaults": {},
    "20b": {"source": {"repo": "openai/gpt-oss-20b"}},
    "120b-h100-tp2": {"serving": {"gpusPerReplica": 2}},
    "120b-h100-tp8": {"serving": {"gpusPerReplica": 8}},
    "120b-h200-tp4": {"serving": {"gpuProfile": "H200-141GB", "gpusPerReplica": 4}},
    "dp4-tp2": {"serving": {"gpusPerReplica": 8, "tensorParallelSize": 2}},
    "generic": {"serving": {"gpuProfile": "Generic", "maxModelLen": 8192}},
    "busy-sidecar": {"sidecar": {"concurrency": 4096}},
    "extra-args": {"serving": {"extraArgs": ["--enforce-eager", "--max-log-len", "100"]}},
}


def _example_models() -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "GptOssModel":
                found[path.name] = (document["metadata"]["name"], document.get("spec") or {})
    return found


def _engine_argv(name: str, spec: dict[str, Any]) -> list[str]:
    ctx = ModelContext(name, "ns", "uid", GptOssModelSpec.model_validate(spec), Settings())
    engine = serving.deployment(ctx, "abcd1234")["spec"]["template"]["spec"]["containers"][0]
    assert engine["command"] == ["vllm"]
    return list(engine["args"])


@pytest.fixture(scope="module")
def parsed(engine_venv: EngineVenv) -> dict[str, dict[str, Any]]:
    cases = {f"example {file}": model for file, model in _example_models().items()}
    cases |= {key: ("m", spec) for key, spec in REPRESENTATIVE.items()}
    argvs = {key: _engine_argv(name, spec) for key, (name, spec) in cases.items()}
    # Controls: the check must be able to fail.
    argvs["control: renamed flag"] = ["serve", "/m", "--max-num-batched-token", "8192"]
    argvs["control: bad value"] = ["serve", "/m", "--max-num-seqs", "many"]
    result = subprocess.run(
        [str(engine_venv.python), vllm_argv_check.__file__],
        input=json.dumps(list(argvs.values())),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    answers = json.loads(result.stdout)
    return dict(zip(argvs, answers, strict=True))


def test_every_example_model_parses(parsed: dict[str, dict[str, Any]]) -> None:
    examples = {key: value for key, value in parsed.items() if key.startswith("example ")}
    assert len(examples) >= 3
    for key, answer in examples.items():
        assert answer["ok"], f"{key}: {answer.get('error')}"
        name = _example_models()[key.removeprefix("example ")][0]
        assert answer["values"]["served_model_name"] == [name]
        assert answer["values"]["model_tag"] == "/data/served/abcd1234"


@pytest.mark.parametrize("key", sorted(REPRESENTATIVE))
def test_representative_specs_parse(parsed: dict[str, dict[str, Any]], key: str) -> None:
    answer = parsed[key]
    assert answer["ok"], answer.get("error")
    values = answer["values"]
    assert values["enable_prefix_caching"] is True
    assert values["async_scheduling"] is True
    assert values["max_num_seqs"] <= values["max_num_batched_tokens"]


def test_parsed_values_are_the_ones_rendered(parsed: dict[str, dict[str, Any]]) -> None:
    values = parsed["dp4-tp2"]["values"]
    assert values["tensor_parallel_size"] == 2
    assert values["data_parallel_size"] == 4
    assert values["max_num_batched_tokens"] == 8192
    assert values["max_model_len"] == 131072
    assert values["stream_interval"] == 20
    assert parsed["busy-sidecar"]["values"]["max_num_seqs"] == 4096
    assert parsed["defaults"]["values"]["gpu_memory_utilization"] == 0.95
    assert parsed["extra-args"]["values"]["enforce_eager"] is True


def test_the_check_refuses_what_vllm_refuses(parsed: dict[str, dict[str, Any]]) -> None:
    renamed = parsed["control: renamed flag"]
    assert not renamed["ok"]
    assert "--max-num-batched-token" in renamed["error"]
    bad = parsed["control: bad value"]
    assert not bad["ok"]
    assert "invalid int value" in bad["error"]
