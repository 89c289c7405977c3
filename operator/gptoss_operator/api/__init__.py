"""The gptoss.ai/v1alpha1 API: typed models that the CRDs are generated from."""
