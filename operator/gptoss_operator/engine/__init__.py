"""The one engine layer, shared by the InferenceJob sidecar and the InferenceBatch workers:
harmony rendering and parsing, the vLLM client and its stream, one generation, the
decision of what an attempt's result means, and vLLM's load as its ``/metrics`` reports it."""
