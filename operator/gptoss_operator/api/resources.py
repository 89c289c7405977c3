"""lightkube resource classes for the kinds, for clients of the API."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_namespaced_resource

from gptoss_operator.api import batch, job, model
from gptoss_operator.api.common import GROUP, VERSION

GptOssModelResource: Any = create_namespaced_resource(GROUP, VERSION, model.KIND, model.PLURAL)
InferenceJobResource: Any = create_namespaced_resource(GROUP, VERSION, job.KIND, job.PLURAL)
InferenceBatchResource: Any = create_namespaced_resource(GROUP, VERSION, batch.KIND, batch.PLURAL)
