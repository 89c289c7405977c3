"""The real node's figures: a warm `make demo` run as a user runs it (its own control
plane with the real node; the chart installed with helm; a model downloaded and served by
the vLLM image; a job and a batch), and the sizes of the images it runs.

Timings come from the demo's own last line ("Done in ...: {json}"): seconds until the
control plane, the node and the imported images are up, from `helm install` to the
operator's pod Ready, from `kubectl apply` of the model to Ready, and the whole run.
Run alone: `make bench BENCH_ARGS='--only node'`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gptoss_sandbox import images

DONE = "Done in "


def demo_timings() -> dict[str, float]:
    """One warm demo on the real node: its timings, in seconds."""
    with tempfile.TemporaryDirectory(prefix="gptoss-bench-node-") as work:
        run = subprocess.run(
            [sys.executable, "-m", "gptoss_sandbox.demo", "--dir", work],
            capture_output=True, text=True, timeout=1800, check=False)
    done = next((line for line in run.stdout.splitlines() if DONE in line), None)
    if run.returncode != 0 or done is None:
        raise RuntimeError(f"the demo failed ({run.returncode}):\n{run.stdout[-3000:]}"
                           f"\n{run.stderr[-3000:]}")
    timings: dict[str, float] = json.loads(done.split(": ", 1)[1])
    return timings


def image_sizes() -> dict[str, float]:
    """MiB of each image archive the node imports (built already by the demo)."""
    archives = {
        "product": images.ensure_product_image(lambda _: None),
        "vllm": images.ensure_vllm_image(lambda _: None),
    }
    return {name: round(Path(a.path).stat().st_size / 2**20, 1) for name, a in archives.items()}


def node_demo() -> dict[str, Any]:
    timings = demo_timings()
    return {
        "demo_seconds": timings["total"],
        "plane_node_and_images_seconds": timings["images"],
        "operator_ready_seconds": timings["operator_ready"],
        "model_ready_seconds": timings["model_ready"],
        "image_mib": image_sizes(),
    }
