"""`gptoss ask`: the InferenceJob it submits."""

from __future__ import annotations

from gptoss_operator.cli.user_main import build_parser, job_manifest


def test_a_model_of_another_namespace_is_named_namespace_slash_name() -> None:
    def model_ref(model: str) -> dict[str, str]:
        parsed = build_parser().parse_args(["ask", "--model", model, "hi"])
        return dict(job_manifest(parsed)["spec"]["modelRef"])

    assert model_ref("gpt-oss-120b") == {"name": "gpt-oss-120b"}
    assert model_ref("platform/gpt-oss-120b") == {
        "name": "gpt-oss-120b",
        "namespace": "platform",
    }


def test_a_priority_is_passed_on() -> None:
    parsed = build_parser().parse_args(["ask", "--model", "m", "--priority", "7", "hi"])
    assert job_manifest(parsed)["spec"]["priority"] == 7
    default = build_parser().parse_args(["ask", "--model", "m", "hi"])
    assert job_manifest(default)["spec"]["priority"] == 0
