"""The apiserver and the API models agree on what is valid, for generated input.

Hypothesis generates InferenceJob and GptOssModel specs, valid and invalid, and each is
created (dry run) on the real apiserver with the generated CRDs. The property: the
apiserver accepts a spec exactly when the pydantic model (the single source of truth)
accepts it; an accepted spec, as stored with its defaults, parses; a refused one is
refused with a 422 that names a field under ``spec``.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lightkube import ApiError, Client
from pydantic import ValidationError

from gptoss_operator.api.job import InferenceJobSpec
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource

pytestmark = pytest.mark.cluster

EXAMPLES = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MISSING = object()


def _fields(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict whose keys may each be left out."""
    optional = {key: st.one_of(st.just(MISSING), value) for key, value in strategies.items()}
    return st.fixed_dictionaries(optional).map(
        lambda d: {key: value for key, value in d.items() if value is not MISSING}
    )


NAMES = st.one_of(
    st.just("m"),
    st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12),
    st.sampled_from(["", "a" * 254]),
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": st.text(max_size=12)})
USER_LAST = st.tuples(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.just("x")}
        ),
        max_size=2,
    ),
    st.text(min_size=1, max_size=12),
).map(lambda t: [*t[0], {"role": "user", "content": t[1]}])
# Mostly valid values, with invalid ones mixed in, so both answers are exercised.
JOB_SPECS = st.tuples(
    st.fixed_dictionaries(
        {
            "modelRef": st.fixed_dictionaries({"name": NAMES}),
            "messages": st.one_of(USER_LAST, USER_LAST, st.lists(MESSAGE, max_size=3)),
        }
    ),
    _fields(
        maxTokens=st.one_of(st.integers(1, 4096), st.integers(-3, 140_000)),
        temperature=st.one_of(st.floats(0, 2), st.floats(-0.5, 2.5, allow_nan=False)),
        topP=st.one_of(st.floats(0.01, 1), st.floats(-0.2, 1.2, allow_nan=False)),
        reasoningLevel=st.sampled_from(["low", "medium", "high", "max"]),
        activeDeadlineSeconds=st.one_of(st.integers(1, 3600), st.integers(-1, 700_000)),
        backoffLimit=st.one_of(st.integers(0, 10), st.integers(-1, 120)),
        ttlSecondsAfterFinished=st.integers(-1, 10),
    ),
).map(lambda parts: {**parts[0], **parts[1]})
MODEL_SPECS = _fields(
    source=_fields(
        repo=st.sampled_from(["openai/gpt-oss-20b", "openai/gpt-oss-120b", "no-slash", ""]),
        revision=st.sampled_from(["main", "", "v1.0"]),
    ),
    storage=_fields(
        size=st.sampled_from(["100Gi", "1.5Ti", "lots", "-5Gi", "0"]),
        existingClaim=st.sampled_from(["weights", ""]),
    ),
    serving=_fields(
        replicas=st.integers(-1, 5),
        gpusPerReplica=st.integers(-1, 10),
        tensorParallelSize=st.integers(0, 9),
        gpuProfile=st.sampled_from(["H100-80GB", "H200-141GB", "Generic", "A100"]),
    ),
    sidecar=_fields(concurrency=st.integers(-1, 2000)),
)


def _agree(
    kube: Client, namespace: str, resource: Any, kind: str, parse: Any, spec: dict[str, Any]
) -> None:
    try:
        parse(spec)
        valid = True
    except (ValidationError, ValueError):
        valid = False
    document = {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": kind,
        "metadata": {"name": "generated"},
        "spec": spec,
    }
    event("refused" if not valid else "accepted")
    if not valid:
        with pytest.raises(ApiError) as refused:
            kube.create(resource.from_dict(document), namespace=namespace, dry_run=True)
        message = refused.value.status.message or ""
        assert refused.value.status.code == 422, message
        assert "spec" in message, message
        return
    try:
        stored = kube.create(resource.from_dict(document), namespace=namespace, dry_run=True)
    except ApiError as error:
        pytest.fail(f"the apiserver refused what the model accepts: {error.status.message}")
    parse(stored.to_dict()["spec"])


@EXAMPLES
@given(spec=JOB_SPECS)
def test_inference_job_admission_agrees_with_the_model(
    kube: Client, crds: list[str], namespace: str, spec: dict[str, Any]
) -> None:
    del crds
    _agree(
        kube, namespace, InferenceJobResource, "InferenceJob", InferenceJobSpec.model_validate, spec
    )


@EXAMPLES
@given(spec=MODEL_SPECS)
def test_model_admission_agrees_with_the_model(
    kube: Client, crds: list[str], namespace: str, spec: dict[str, Any]
) -> None:
    del crds
    _agree(
        kube, namespace, GptOssModelResource, "GptOssModel", GptOssModelSpec.model_validate, spec
    )
