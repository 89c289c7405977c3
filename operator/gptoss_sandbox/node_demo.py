"""`make demo` on the real node: the chart installed with helm, the product as pods.

A control plane and one real node (kubelet, containerd, runc; ``gptoss_sandbox.node``)
start; the product and vLLM images are built here and loaded into the node; ``helm
install`` runs the operator as the chart's pod. A GptOssModel then downloads a tiny
checkpoint in its Job's pod from a Hugging Face-compatible endpoint (a stand-in, reached
over a Service), and serves it from a vLLM pod with the sidecar beside it. An InferenceJob
from ``examples/``, ``gptoss ask`` and an InferenceBatch are answered by that pod.

What is not the real thing, the output says: the GPUs are advertised by a fake device
plugin, vLLM is its CPU build, and the weights are a tiny scripted checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client, KubeConfig, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, PersistentVolume, PersistentVolumeClaim, Pod

from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource
from gptoss_sandbox import binaries, images, node
from gptoss_sandbox.cluster import LocalCluster
from gptoss_sandbox.demo_output import EXAMPLES, REPO_ROOT, note, say, wait_until
from gptoss_sandbox.fake_hub import FakeHub
from gptoss_sandbox.real_engine import build_tiny_checkpoint, checkpoint_files
from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER

NAMESPACE = "demo"
OPERATOR_NAMESPACE = "gptoss-system"
MODEL = "gpt-oss-120b"
REPO = "openai/gpt-oss-120b"
GPUS = 4
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
GPTOSS = (sys.executable, "-m", "gptoss_operator.cli.user_main")


class NodeDemo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster: LocalCluster | None = None
        self.hub: FakeHub | None = None
        self.timings: dict[str, float] = {}

    def tool(self, name: str, *args: str) -> str:
        found = binaries.cached_binaries()
        assert found is not None
        assert self.cluster is not None
        result = subprocess.run(
            [str(getattr(found, name)), "--kubeconfig", str(self.cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def kubectl(self, *args: str) -> str:
        return self.tool("kubectl", *args)

    def gptoss(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The ``gptoss`` CLI against the demo's cluster and namespace; prints its output."""
        assert self.cluster is not None
        result = subprocess.run(
            [*GPTOSS, *args, "-n", NAMESPACE],
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            capture_output=True,
            text=True,
            check=False,
        )
        print(result.stderr + result.stdout)
        return result

    def run(self) -> int:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        say("Building (first run only) and starting a control plane and a REAL node")
        note("etcd, kube-apiserver, controller-manager, scheduler; kubelet, containerd, runc,")
        note("kube-proxy, CNI bridge, CoreDNS: real, built from pinned upstream sources")
        note(f"GPUs: a FAKE device plugin advertises {GPUS} nvidia.com/gpu (there is no GPU)")
        self.cluster = LocalCluster(
            self.workdir / "cluster", nodes=[], progress=note, real_node_gpus=GPUS
        ).start(timeout=3600)
        real_node = self.cluster.node
        assert real_node is not None
        kube = Client(KubeConfig.from_file(str(self.cluster.kubeconfig)), field_manager="demo")
        print(self.kubectl("get", "nodes", "-o", "wide"))

        say("Building the images here (buildah, no registry) and loading them into the node")
        product = images.ensure_product_image(note)
        vllm = images.ensure_vllm_image(note)
        for image in (product, vllm):
            real_node.import_image(image)
            note(f"{image.reference}: {image.path.stat().st_size / 2**20:,.0f} MiB")
        self.timings["images"] = time.monotonic() - started

        say(f"helm install gptoss-operator charts/gptoss-operator -n {OPERATOR_NAMESPACE}")
        kube.create(
            Namespace(metadata=ObjectMeta(name=OPERATOR_NAMESPACE, labels=dict(RESTRICTED)))
        )
        installed = time.monotonic()
        self.tool(
            "helm",
            "install",
            "gptoss-operator",
            str(REPO_ROOT / "charts" / "gptoss-operator"),
            "--namespace",
            OPERATOR_NAMESPACE,
        )
        wait_until(lambda: self._operator_ready(kube), 300, "the operator pod Ready")
        self.timings["operator_ready"] = time.monotonic() - installed
        note(f"operator pod Ready {self.timings['operator_ready']:.0f}s after helm install")
        print(self.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"))

        say("A Hugging Face-compatible endpoint, reached by pods over a Service")
        note("STAND-IN for huggingface.co (no network here); the download client is the real")
        note(f"huggingface_hub. It serves a TINY scripted checkpoint as {REPO}.")
        checkpoint = build_tiny_checkpoint(self.workdir / "tiny-gpt-oss", "scripted")
        self.hub = FakeHub(host=node.HOST_IP).start()
        self.hub.add_repo(REPO, checkpoint_files(checkpoint))
        port = int(self.hub.url.rsplit(":", 1)[1])
        for document in node.service_to_machine("hub", "kube-public", port):
            kube.apply(codecs.from_dict(document), force=True)

        say(f"kubectl apply -f gptossmodel.yaml  (namespace {NAMESPACE}, restricted)")
        kube.create(Namespace(metadata=ObjectMeta(name=NAMESPACE, labels=dict(RESTRICTED))))
        manifest = self._model_manifest(vllm.reference)
        path = self.workdir / "gptossmodel.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        print(path.read_text())
        applied = time.monotonic()
        kube.create(GptOssModelResource.from_dict(manifest), namespace=NAMESPACE)
        seen: list[str] = []

        def ready() -> bool:
            found = kube.get(GptOssModelResource, MODEL, namespace=NAMESPACE).to_dict()
            phase = (found.get("status") or {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
                note(f"phase: {phase}")
            return phase == "Ready"

        wait_until(ready, 900, "the model to be Ready")
        self.timings["model_ready"] = time.monotonic() - applied
        note(f"model Ready {self.timings['model_ready']:.0f}s after kubectl apply")
        print(self.kubectl("get", "gptossmodels,jobs,pvc,pods", "-n", NAMESPACE, "-o", "wide"))

        say("kubectl create -f examples/inferencejob-single-turn.yaml")
        self.kubectl(
            "create", "-n", NAMESPACE, "-f", str(EXAMPLES / "inferencejob-single-turn.yaml")
        )
        print(
            self.kubectl(
                "wait",
                "-n",
                NAMESPACE,
                "--for=condition=Complete",
                "inferencejob/what-is-recursion",
                "--timeout=300s",
            )
        )
        job = kube.get(InferenceJobResource, "what-is-recursion", namespace=NAMESPACE).to_dict()
        status = job["status"]
        print(self.kubectl("get", "inferencejobs", "-n", NAMESPACE, "-o", "wide"))
        say("Result (status of inferencejob/what-is-recursion)")
        for key in ("response", "analysis", "reasoningLevel", "finishReason", "usage", "worker"):
            print(f"  {key}: {status.get(key, '')}")
        note("(answered by the sidecar CONTAINER of the model's pod, through real vLLM (CPU")
        note(f"build) on a TINY scripted checkpoint: it always says {SCRIPTED_ANSWER!r})")

        say(f'gptoss ask --model {MODEL} --reasoning high "Prove the Pythagorean theorem"')
        question = "Prove the Pythagorean theorem"
        answer = self.gptoss("ask", "--model", MODEL, "--reasoning", "high", question)

        batch_ok = self._batch(kube)
        self.timings["total"] = time.monotonic() - started
        say(f"Done in {self.timings['total']:.0f}s: " + json.dumps(self._rounded()))
        succeeded = status.get("phase") == "Succeeded" and answer.returncode == 0
        return 0 if succeeded and batch_ok else 1

    def _model_manifest(self, vllm_image: str) -> dict[str, Any]:
        spec = node.model_spec(vllm_image, REPO, "http://hub.kube-public.svc.cluster.local")
        return {
            "apiVersion": "gptoss.ai/v1alpha1",
            "kind": "GptOssModel",
            "metadata": {"name": MODEL},
            "spec": spec,
        }

    def _operator_ready(self, kube: Client) -> bool:
        for pod in kube.list(Pod, namespace=OPERATOR_NAMESPACE):
            conditions = (pod.status.conditions if pod.status else None) or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return True
        return False

    def _batch(self, kube: Client) -> bool:
        from lightkube.models.core_v1 import PersistentVolumeClaimSpec, VolumeResourceRequirements

        say(f"gptoss batch submit requests.jsonl --model {MODEL} --output pvc://results/b1")
        kube.create(
            PersistentVolumeClaim(
                metadata=ObjectMeta(name="results", namespace=NAMESPACE),
                spec=PersistentVolumeClaimSpec(
                    accessModes=["ReadWriteOnce"],
                    storageClassName=node.NODE_STORAGE_CLASS,
                    resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            )
        )
        requests = self.workdir / "requests.jsonl"
        requests.write_text(
            "".join(
                json.dumps(
                    {
                        "custom_id": f"q{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
                    }
                )
                + "\n"
                for i in range(1, 9)
            )
        )
        submitted = self.gptoss(
            "batch", "submit", str(requests), "--model", MODEL, "--name", "b1",
            "--output", "pvc://results/b1", "--shards", "2", "--wait",
        )  # fmt: skip
        print(self.kubectl("get", "inferencebatches,jobs", "-n", NAMESPACE))
        claim = kube.get(PersistentVolumeClaim, "results", namespace=NAMESPACE)
        assert claim.spec is not None
        assert claim.spec.volumeName
        volume = kube.get(PersistentVolume, claim.spec.volumeName)
        assert volume.spec is not None
        assert volume.spec.local is not None
        output = Path(volume.spec.local.path) / "b1" / "output.jsonl"
        say(f"output.jsonl, on the node's local volume {claim.spec.volumeName}")
        lines = output.read_text().splitlines() if output.exists() else []
        for line in lines[:3]:
            answer = json.loads(line)
            content = answer["response"]["body"]["choices"][0]["message"]["content"]
            print(f"  {answer['custom_id']}: {content}")
        note(f"{len(lines)} answers in {output}")
        return submitted.returncode == 0 and len(lines) == 8

    def _rounded(self) -> dict[str, float]:
        return {key: round(value, 1) for key, value in self.timings.items()}

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        if self.cluster is not None:
            self.cluster.stop()
