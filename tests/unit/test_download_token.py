"""Where a Secret's token may go: only to the endpoints its owner lists."""

from __future__ import annotations

import pytest

from gptoss_operator.workers.download.downloader import DownloadError
from gptoss_operator.workers.download.token import (
    TOKEN_ENDPOINTS_ANNOTATION,
    TokenRef,
    allowed_endpoints,
    check_endpoint,
)

REF = TokenRef("team", "m", "hf", "token")


def test_without_the_annotation_only_hugging_face_gets_the_token() -> None:
    assert allowed_endpoints(None) == ["https://huggingface.co"]
    check_endpoint(REF, {}, "https://huggingface.co/")
    with pytest.raises(DownloadError) as refused:
        check_endpoint(REF, {}, "https://collector.example")
    assert refused.value.reason == "TokenEndpointNotAllowed"
    assert refused.value.message.startswith("spec.source.endpoint: the Secret hf allows")
    assert "https://collector.example" in refused.value.message


def test_the_annotation_lists_the_endpoints_and_replaces_the_default() -> None:
    annotations = {TOKEN_ENDPOINTS_ANNOTATION: "https://hub.internal/, https://Mirror.internal"}
    assert allowed_endpoints(annotations) == ["https://hub.internal", "https://Mirror.internal"]
    check_endpoint(REF, annotations, "https://hub.internal")
    check_endpoint(REF, annotations, "https://mirror.internal/")
    for elsewhere in ("https://huggingface.co", "https://hub.internal.evil", "http://hub.internal"):
        with pytest.raises(DownloadError):
            check_endpoint(REF, annotations, elsewhere)


def test_an_empty_annotation_shares_the_token_with_no_endpoint() -> None:
    annotations = {TOKEN_ENDPOINTS_ANNOTATION: ""}
    assert allowed_endpoints(annotations) == []
    with pytest.raises(DownloadError) as refused:
        check_endpoint(REF, annotations, "https://huggingface.co")
    assert "no endpoint" in refused.value.message
