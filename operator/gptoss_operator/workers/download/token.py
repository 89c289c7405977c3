"""The hub token, read by the downloader itself, only where the Secret's owner agreed.

The download Job carries the Secret's name and key, never its value, and the operator
never reads Secrets. The downloader reads the Secret with its own ServiceAccount
(``<model>-download``), which holds no Secret access of its own: whoever may grant access
to the Secret grants it ``get`` on that one Secret (a Role with ``resourceNames``). A
Secret nobody shared with the model is refused by the apiserver.

The token then goes only to endpoints the Secret names in its annotation
``gptoss.ai/token-endpoints`` (comma-separated URLs); without it, only to Hugging Face.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Secret

from gptoss_operator.api.download_exits import EXIT_UNAUTHORIZED, EXIT_UNREACHABLE
from gptoss_operator.core import naming
from gptoss_operator.workers.download.downloader import DownloadError

TOKEN_ENDPOINTS_ANNOTATION = "gptoss.ai/token-endpoints"
DEFAULT_ENDPOINT = "https://huggingface.co"
FIELD = "spec.source.tokenSecretRef"


@dataclass(frozen=True)
class TokenRef:
    namespace: str
    model: str
    secret: str
    key: str


def _normalized(url: str) -> str:
    return url.strip().rstrip("/").lower()


def allowed_endpoints(annotations: Mapping[str, str] | None) -> list[str]:
    """The endpoints a Secret's token may be sent to."""
    listed = (annotations or {}).get(TOKEN_ENDPOINTS_ANNOTATION)
    if listed is None:
        return [DEFAULT_ENDPOINT]
    return [url.strip().rstrip("/") for url in listed.split(",") if url.strip()]


def check_endpoint(ref: TokenRef, annotations: Mapping[str, str] | None, endpoint: str) -> None:
    """Refuse to send the token anywhere its Secret does not name."""
    allowed = allowed_endpoints(annotations)
    if _normalized(endpoint) not in {_normalized(url) for url in allowed}:
        raise DownloadError(
            "TokenEndpointNotAllowed",
            f"spec.source.endpoint: the Secret {ref.secret} allows its token only for "
            f"{', '.join(allowed) or 'no endpoint'}, not {endpoint} (the Secret's owner "
            f"lists endpoints in its annotation {TOKEN_ENDPOINTS_ANNOTATION})",
            EXIT_UNAUTHORIZED,
        )


def read_token(client: Client, ref: TokenRef, endpoint: str | None) -> str:
    """The token, after the apiserver and the Secret's annotation agreed; DownloadError
    with a reason that names the field otherwise."""
    account = naming.download_account_name(ref.model)
    try:
        secret = client.get(Secret, ref.secret, namespace=ref.namespace)
    except ApiError as error:
        code = error.status.code
        if code == 403:
            raise DownloadError(
                "TokenNotShared",
                f"{FIELD}: the Secret {ref.secret} is not shared with this model; its "
                f"owner grants the ServiceAccount {ref.namespace}/{account} get on it "
                f"(a Role with resourceNames: [{ref.secret}])",
                EXIT_UNAUTHORIZED,
            ) from error
        if code == 404:
            raise DownloadError(
                "TokenSecretNotFound",
                f"{FIELD}: no Secret {ref.secret} in namespace {ref.namespace}",
                EXIT_UNAUTHORIZED,
            ) from error
        raise DownloadError(
            "TokenUnreadable",
            f"{FIELD}: reading the Secret {ref.secret} failed (HTTP {code}); retrying",
            EXIT_UNREACHABLE,
        ) from error
    annotations = secret.metadata.annotations if secret.metadata else None
    check_endpoint(ref, annotations, endpoint or DEFAULT_ENDPOINT)
    data = secret.data or {}
    if ref.key not in data:
        raise DownloadError(
            "TokenKeyNotFound",
            f"{FIELD}: the Secret {ref.secret} has no key {ref.key}",
            EXIT_UNAUTHORIZED,
        )
    return base64.b64decode(data[ref.key]).decode().strip()
