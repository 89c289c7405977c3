"""`make demo`: gptoss-operator end to end on a laptop, with no cluster and no GPU.

By default (``gptoss_sandbox.node_demo``) a real node joins the local control plane and
the chart is installed for real: the operator, the download Job and the vLLM pod with its
sidecar all run as pods of our own images, and an InferenceJob, ``gptoss ask`` and an
InferenceBatch are answered.

The fast paths (this module) use kwok's fake nodes instead, with the product's processes
run on this machine: ``--kwok`` with real vLLM (its CPU build) on the Deployment's
arguments, ``--engine standin`` with the test stand-in of vLLM's API (canned answers;
starts in a second). There kwok completes the download Job's pod instead of downloading,
and the weights are a tiny scripted gpt-oss checkpoint built on the spot (2 layers; it
answers every question with one fixed harmony reply).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import yaml
from lightkube import Client, KubeConfig, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod

from gptoss_operator.api.crdgen import all_crds
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource
from gptoss_sandbox import binaries
from gptoss_sandbox.chart import worker_cluster_roles
from gptoss_sandbox.cluster import LocalCluster, free_port
from gptoss_sandbox.demo_output import EXAMPLES, REPO_ROOT, note, say, wait_until
from gptoss_sandbox.node_demo import NodeDemo
from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint
from gptoss_sandbox.standin_engine import StandinEngine
from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER

NAMESPACE = "demo"


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _established(kube: Client, name: str) -> bool:
    status = kube.get(CustomResourceDefinition, name).status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


class Demo:
    def __init__(self, workdir: Path, engine: str = "vllm") -> None:
        self.workdir = workdir
        self.engine_kind = engine
        self.processes: list[subprocess.Popen[bytes]] = []
        self.cluster: LocalCluster | None = None
        self.engine: StandinEngine | None = None
        self.vllm: VllmServer | None = None

    def kubectl(self, *args: str) -> str:
        found = binaries.cached_binaries()
        assert found is not None
        assert self.cluster is not None
        result = subprocess.run(
            [
                str(found.kubectl),
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                "-n",
                NAMESPACE,
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout + result.stderr

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.processes.append(
            subprocess.Popen(
                args,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        log.close()

    def run(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        say("Building (first run only) and starting the local control plane")
        note(
            "etcd, kube-apiserver, kube-controller-manager, kube-scheduler: real, built from "
            "upstream Go modules"
        )
        note("kwok plays the kubelet of 2 fake nodes with nvidia.com/gpu: 8 each")
        self.cluster = LocalCluster(self.workdir / "cluster", progress=note).start(timeout=3600)
        note(
            f"control plane ready in {self.cluster.timings['total']:.1f}s at {self.cluster.server}"
        )
        kube = Client(
            KubeConfig.from_file(str(self.cluster.kubeconfig)), field_manager="gptoss-demo"
        )
        env = {"KUBECONFIG": str(self.cluster.kubeconfig)}

        say("Installing the CRDs and starting the operator")
        for document in [*all_crds().values(), *worker_cluster_roles()]:
            kube.apply(codecs.from_dict(document), force=True)
        names = [d["metadata"]["name"] for d in all_crds().values()]
        wait_until(lambda: all(_established(kube, name) for name in names), 30, "CRDs")
        self.spawn(
            "operator",
            [sys.executable, "-m", "gptoss_operator.cli.operator_main", "--liveness", ""],
            {**env, "GPTOSS_RESYNC_SECONDS": "5", "GPTOSS_METRICS_PORT": str(free_port())},
        )
        kube.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))

        say(f"kubectl apply -f examples/gptossmodel-120b.yaml  (namespace {NAMESPACE})")
        for document in _load(EXAMPLES / "gptossmodel-120b.yaml"):
            kube.create(cast(Any, codecs.from_dict(document)), namespace=NAMESPACE)
        note(
            "kwok completes the download Job's pod at once: no weights are fetched here "
            "(a real cluster downloads ~65 GB)"
        )
        seen: list[str] = []

        def ready() -> bool:
            status = (
                kube.get(GptOssModelResource, "gpt-oss-120b", namespace=NAMESPACE)
                .to_dict()
                .get("status")
                or {}
            )
            phase = status.get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
                note(f"phase: {phase}")
            return phase == "Ready"

        wait_until(ready, 120, "the model to be Ready")
        print(self.kubectl("get", "gptossmodels,deployments,services,jobs,pvc,pods"))

        pods = [
            p
            for p in kube.list(
                Pod,
                namespace=NAMESPACE,
                labels={"gptoss.ai/model": "gpt-oss-120b", "app.kubernetes.io/component": "server"},
            )
        ]
        worker = "gpt-oss-120b-vllm-demo"
        if pods and pods[0].metadata and pods[0].metadata.name:
            worker = pods[0].metadata.name
        if self.engine_kind == "vllm":
            engine_url = self.start_vllm(kube)
        else:
            say("Starting the sidecar next to a STAND-IN engine")
            note(
                "STAND-IN: the engine below is the test stand-in for vLLM's OpenAI server; "
                "it answers with canned text in valid harmony tokens. It is NOT gpt-oss."
            )
            self.engine = StandinEngine(model="gpt-oss-120b", token_delay=0.01)
            engine_url = self.engine.start_in_thread()
        self.spawn(
            "sidecar",
            [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
            {
                **env,
                "GPTOSS_MODEL": "gpt-oss-120b",
                "GPTOSS_NAMESPACE": NAMESPACE,
                "GPTOSS_POD_NAME": worker,
                "GPTOSS_ENGINE_URL": engine_url,
            },
        )

        say("kubectl create -f examples/inferencejob-single-turn.yaml")
        for document in _load(EXAMPLES / "inferencejob-single-turn.yaml"):
            kube.create(cast(Any, codecs.from_dict(document)), namespace=NAMESPACE)
        print(
            self.kubectl(
                "wait",
                "--for=condition=Complete",
                "inferencejob/what-is-recursion",
                "--timeout=120s",
            )
        )
        job = kube.get(InferenceJobResource, "what-is-recursion", namespace=NAMESPACE).to_dict()
        status = job["status"]
        print(self.kubectl("get", "inferencejobs", "-o", "wide"))
        say("Result (status of inferencejob/what-is-recursion)")
        for key in (
            "response",
            "analysis",
            "commentary",
            "reasoningLevel",
            "finishReason",
            "usage",
            "timeToFirstTokenSeconds",
            "tokensPerSecond",
            "worker",
        ):
            print(f"  {key}: {status.get(key, '')}")
        note(self.answered_by())

        say('gptoss ask --model gpt-oss-120b --reasoning high "Prove the Pythagorean theorem"')
        answer = subprocess.run(
            [
                sys.executable,
                "-m",
                "gptoss_operator.cli.user_main",
                "ask",
                "--model",
                "gpt-oss-120b",
                "-n",
                NAMESPACE,
                "--reasoning",
                "high",
                "--show-reasoning",
                "Prove the Pythagorean theorem",
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        print(answer.stderr + answer.stdout)
        say(
            "Done. On a GPU cluster: helm install the chart, then kubectl apply the same "
            "examples (see README)."
        )
        return 0 if status.get("phase") == "Succeeded" and answer.returncode == 0 else 1

    def start_vllm(self, kube: Client) -> str:
        """Real vLLM (CPU build) with the operator's Deployment arguments, on tiny weights."""
        say("Starting REAL vLLM with the arguments of the Deployment the operator created")
        note(
            "vLLM's CPU build of the release the operator deploys; the weights are a TINY "
            "scripted gpt-oss checkpoint (2 layers, built now): it answers every question "
            f"with the same reply, {SCRIPTED_ANSWER!r}. It is NOT gpt-oss-120b."
        )
        deployment = kube.get(Deployment, "gpt-oss-120b-vllm", namespace=NAMESPACE).to_dict()
        engine = deployment["spec"]["template"]["spec"]["containers"][0]
        args = list(engine["args"])
        note("vllm " + " ".join(args))
        checkpoint = build_tiny_checkpoint(self.workdir / "tiny-gpt-oss", "scripted")
        volume = self.workdir / "volume"
        served = volume / args[1].removeprefix("/data/")
        served.parent.mkdir(parents=True, exist_ok=True)
        served.symlink_to(checkpoint)
        env = {e["name"]: e["value"] for e in engine.get("env") or [] if "value" in e}
        env.pop("TIKTOKEN_ENCODINGS_BASE", None)  # the volume has no vocab: kwok downloaded
        self.vllm = VllmServer.from_deployment(
            args, volume, env=env, log_path=self.workdir / "vllm.log"
        )
        self.vllm.start()
        seconds = self.vllm.wait_healthy(timeout=900)
        note(f"vLLM healthy in {seconds:.0f}s at {self.vllm.url} (log: {self.vllm.log_path})")
        say("Starting the sidecar next to it")
        return self.vllm.url

    def answered_by(self) -> str:
        if self.engine_kind == "vllm":
            return (
                "(answered by real vLLM running a TINY scripted checkpoint: a fixed reply, "
                "not gpt-oss)"
            )
        return "(answered by the STAND-IN engine: canned text, not gpt-oss)"

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.engine is not None:
            self.engine.stop_in_thread()
        if self.vllm is not None:
            self.vllm.stop()
        if self.cluster is not None:
            self.cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gptoss-sandbox demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO_ROOT / ".cluster" / "demo",
        help="working folder (logs, certificates, etcd data)",
    )
    parser.add_argument(
        "--engine",
        choices=("vllm", "standin"),
        default="vllm",
        help="vllm (default): real vLLM, CPU build, on a tiny scripted checkpoint; standin: "
        "the test stand-in of vLLM's API on kwok's nodes, for speed",
    )
    parser.add_argument(
        "--kwok",
        action="store_true",
        help="kwok's fake nodes and the product as processes here, instead of the real node",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep everything running until Ctrl-C to explore with kubectl",
    )
    args = parser.parse_args(argv)
    import shutil

    shutil.rmtree(args.dir, ignore_errors=True)
    demo: Demo | NodeDemo
    if args.kwok or args.engine == "standin":
        demo = Demo(args.dir, args.engine)
    else:
        demo = NodeDemo(args.dir)
    try:
        code = demo.run()
        if args.keep and demo.cluster is not None:
            say(f"Still running. export KUBECONFIG={demo.cluster.kubeconfig}; Ctrl-C stops it")
            while True:
                time.sleep(1)
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()
        note(f"logs: {args.dir}")


if __name__ == "__main__":
    sys.exit(main())
