"""The engine version the product ships and is tested against.

One constant: the default vLLM image, the chart's ``defaults.vllmImage``, the README and the
real-engine test tier (vLLM's CPU build of the same release) all follow it; a test checks
that the chart and README agree with it.
"""

VLLM_VERSION = "0.32.0"

DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
"""vLLM's CUDA 13 image (drivers 580 and newer)."""

VLLM_IMAGE_CUDA12 = f"vllm/vllm-openai:v{VLLM_VERSION}-cu129"
"""The same release built for CUDA 12.9, for nodes whose driver predates CUDA 13."""
