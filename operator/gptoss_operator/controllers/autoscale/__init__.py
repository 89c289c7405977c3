"""The autoscaler: its decision (pure), its loop, and vLLM's own load."""
