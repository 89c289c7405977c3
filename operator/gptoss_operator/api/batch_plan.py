"""What a batch's workers are told: the operator writes it into the pods' environment
(``GPTOSS_BATCH_PLAN``) and ``gptoss-batch`` reads it; the contract between the two."""

from __future__ import annotations

from pydantic import Field

from gptoss_operator.api.batch import RequestDefaults, S3Location
from gptoss_operator.api.common import ApiModel

PLAN_ENV = "GPTOSS_BATCH_PLAN"
# Exit codes of gptoss-batch (the Jobs' pod failure policies read them).
EXIT_CANNOT_RUN = 2  # input unreadable or output not writable: no retry can help
EXIT_STORAGE = 3  # storage failed for a while: retried
EXIT_SIGNAL = 143


class Place(ApiModel):
    """A file or folder: a path in the pod (a mounted volume) or an S3 location."""

    path: str | None = None
    url: str | None = Field(default=None, description="How to name it to a user.")
    s3: S3Location | None = None
    credentialsEnv: str | None = Field(
        default=None,
        description="Prefix of the env vars holding this location's S3 keys "
        "(<prefix>AWS_ACCESS_KEY_ID, ...); unset: the default credential chain.",
    )


class BatchPlan(ApiModel):
    batch: str
    namespace: str
    uid: str
    shards: int = Field(ge=1)
    requestsPerShard: int = Field(ge=1)
    maxLineAttempts: int = Field(ge=1)
    defaults: RequestDefaults
    priority: int = Field(default=0, description="Of every line (spec.priority).")
    priorityScheduling: bool = Field(
        default=False, description="Whether the engine runs requests by priority."
    )
    engineUrl: str
    servedModelName: str
    modelNames: list[str] = Field(description="What a line's body.model may say.")
    input: Place
    output: Place
    overwrite: bool = Field(default=False, description="Take an output folder another batch wrote.")
    progressSeconds: float = 5.0
    flushLines: int = 500
    flushSeconds: float = 10.0
