"""gptoss-operator: serve OpenAI's gpt-oss models on Kubernetes with vLLM."""

__version__ = "0.1.0"
