"""The shared kernel every controller and worker uses: the apiserver client helpers, names
and labels, conditions, Events, metrics, retries, quantities and the operator's settings."""
