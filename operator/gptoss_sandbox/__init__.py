"""The local sandbox: a real Kubernetes control plane built from upstream Go modules,
fake GPU nodes played by kwok, and the stand-in engine used by tests and the demo.

Nothing in the product (``gptoss_operator``) imports this package."""
