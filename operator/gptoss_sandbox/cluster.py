"""Start and stop a real local Kubernetes control plane with fake GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as real processes
built from upstream Go modules; kwok plays the kubelet for fake nodes that advertise
``nvidia.com/gpu``. Optionally a real node joins them (``gptoss_sandbox.node``): a kubelet
with containerd and runc that runs our images as pods. Without the real node everything
listens on free loopback ports; with it, the apiserver also listens on the node's link.
Every child process dies with its launcher (``PR_SET_PDEATHSIG``), and the real node's
pods are removed when it stops (or when the next one starts, after a kill).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from gptoss_sandbox import binaries, images
from gptoss_sandbox.certs import CertificateAuthority, KeyPair, service_account_keys
from gptoss_sandbox.node import HOST_IP, NODE_NAME, RealNode, gpus_ready, node_objects

STAGES_FILE = Path(__file__).parent / "kwok" / "stages.yaml"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
SANDBOX_STORAGE_CLASS = "standard"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(
    process: subprocess.Popen[bytes], *, kill: bool = False, grace: float = 15.0
) -> None:
    """SIGTERM (or SIGKILL) a process and wait for it; SIGKILL it after ``grace`` s."""
    if process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def parent_death_signal(signum: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``signum`` when the thread that started it dies."""

    def arm() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signum)

    return arm


_die_with_parent = parent_death_signal(signal.SIGKILL)


@dataclass(frozen=True)
class FakeNodeSpec:
    """One fake GPU node: kwok reports it Ready with this capacity."""

    name: str
    gpus: int = 8
    gpu_product: str = DEFAULT_GPU_PRODUCT
    gpu_memory_mib: int = 81559
    cpu: str = "96"
    memory: str = "1000Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


def fake_node_manifest(spec: FakeNodeSpec) -> dict[str, Any]:
    capacity = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": spec.pods,
        "ephemeral-storage": "2Ti",
        GPU_RESOURCE: str(spec.gpus),
    }
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": spec.gpu_product,
        "nvidia.com/gpu.count": str(spec.gpus),
        "nvidia.com/gpu.memory": str(spec.gpu_memory_mib),
        **spec.labels,
    }
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": spec.taints} if spec.taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
    return manifest


def default_nodes(count: int = 2, gpus: int = 8) -> list[FakeNodeSpec]:
    return [FakeNodeSpec(name=f"gpu-node-{i}", gpus=gpus) for i in range(count)]


def kubeconfig_document(server: str, ca: Path, client: KeyPair, user: str) -> dict[str, Any]:
    """A kubeconfig with the CA and client credentials embedded (self-contained)."""
    import base64

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gptoss-sandbox",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [
            {"name": "gptoss-sandbox", "context": {"cluster": "gptoss-sandbox", "user": user}}
        ],
        "current-context": "gptoss-sandbox",
    }


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    args: list[str]
    stopping: Callable[[], None] | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    """A control plane in ``workdir``: start(), use ``kubeconfig``, stop()."""

    def __init__(
        self,
        workdir: Path,
        nodes: list[FakeNodeSpec] | None = None,
        progress: Progress = _quiet,
        real_node_gpus: int | None = None,
    ) -> None:
        """``real_node_gpus``: start a real node too, advertising that many fake GPUs."""
        self.workdir = workdir.resolve()
        self.nodes = default_nodes() if nodes is None else nodes
        self.progress = progress
        self.real_node_gpus = real_node_gpus
        self.node: RealNode | None = None
        self.node_components: list[Component] = []
        self.components: list[Component] = []
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""
        self._admin: KeyPair | None = None
        self._ca: Path | None = None
        self.timings: dict[str, float] = {}
        self._health_ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 120.0) -> LocalCluster:
        started = time.monotonic()
        bins = binaries.ensure_binaries(self.progress)
        node_parts = None
        if self.real_node_gpus is not None:
            node_bins = binaries.ensure_node_binaries(self.progress)
            node_parts = (node_bins, images.ensure_pause_image(node_bins.pause, self.progress))
        self.timings["binaries"] = time.monotonic() - started
        try:
            self._start(bins, node_parts, started + timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def _start(
        self,
        bins: binaries.Binaries,
        node_parts: tuple[binaries.NodeBinaries, images.ImageArchive] | None,
        deadline: float,
    ) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        ca = CertificateAuthority(pki)
        self._ca = ca.pair.cert
        api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        if node_parts is not None:
            node_bins, pause_image = node_parts
            self.node = RealNode(
                self.workdir / "node",
                node_bins,
                ca,
                lambda path, creds, user: self._write_kubeconfig(
                    path, ca.pair.cert, creds, user, server=f"https://{HOST_IP}:{api_port}"
                ),
                SERVICE_CIDR,
                self.real_node_gpus or 0,
                pause_image,
            )
            self.node.prepare()
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_hosts=[
                HOST_IP,
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        self._admin = ca.issue("admin", "sandbox-admin", organization="system:masters")
        sa = service_account_keys(pki)
        self._write_kubeconfig(self.kubeconfig, ca.pair.cert, self._admin, "sandbox-admin")

        t0 = time.monotonic()
        self._spawn(
            "etcd",
            [
                str(bins.etcd),
                "--name=sandbox",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=sandbox=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), deadline)
        self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={api_port}",
                *self._apiserver_network_args(ca),
                f"--cert-dir={pki}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.pair.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--v=1",
            ],
        )
        self._wait("kube-apiserver", lambda: self._api_ok("/readyz"), deadline)
        self.timings["apiserver_ready"] = time.monotonic() - t0

        for component, binary in (
            ("kube-controller-manager", bins.kube_controller_manager),
            ("kube-scheduler", bins.kube_scheduler),
        ):
            identity = f"system:{component}"
            health_port = free_port()
            creds = ca.issue(component, identity)
            kubeconfig = pki / f"{component}.kubeconfig"
            self._write_kubeconfig(kubeconfig, ca.pair.cert, creds, identity)
            args = [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={health_port}",
                f"--cert-dir={self.workdir / component}",
                "--v=1",
            ]
            if component == "kube-controller-manager":
                args += [
                    f"--service-account-private-key-file={sa.key}",
                    f"--root-ca-file={ca.pair.cert}",
                    "--use-service-account-credentials=true",
                    f"--cluster-cidr={POD_CIDR}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,-nodeipam,-bootstrapsigner,-tokencleaner",
                    "--node-monitor-grace-period=60s",
                ]
            self._spawn(component, args)
            self._health_ports[component] = health_port

        kwok_creds = ca.issue("kwok", "kwok-controller", organization="system:masters")
        kwok_kubeconfig = pki / "kwok.kubeconfig"
        self._write_kubeconfig(kwok_kubeconfig, ca.pair.cert, kwok_creds, "kwok-controller")
        self._spawn(
            "kwok",
            [
                str(bins.kwok),
                f"--kubeconfig={kwok_kubeconfig}",
                f"--config={STAGES_FILE}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-ip=10.0.0.1",
                f"--cidr={POD_CIDR.replace('.0/16', '.1/16')}",
                "--node-lease-duration-seconds=40",
                "--v=1",
            ],
        )
        self._create_sandbox_objects()
        self._wait("fake nodes Ready", self._nodes_ready, deadline)
        for component in ("kube-controller-manager", "kube-scheduler"):
            port = self._health_ports[component]
            self._wait(component, functools.partial(_https_ok, port, "/healthz"), deadline)
        self._wait("service accounts", self._default_service_account_exists, deadline)
        if self.node is not None:
            self._start_node(self.node, deadline)

    def _apiserver_network_args(self, ca: CertificateAuthority) -> list[str]:
        """Loopback only; with a real node, also its link, and it is the address the
        ``kubernetes`` Service leads pods to (and the node is authorized as one)."""
        if self.node is None:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
            ]
        kubelet_client = ca.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            organization="system:masters",
        )
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={HOST_IP}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _start_node(self, node: RealNode, deadline: float) -> None:
        t0 = time.monotonic()
        for document in node_objects(node.volumes):
            self._create_object(document)

        def node_ready() -> bool:
            return gpus_ready(self.request("GET", f"/api/v1/nodes/{NODE_NAME}"), node.gpus)

        for process in node.processes(node_ready):
            self._spawn(
                process.name, process.argv, env=process.env, node=True, stopping=process.stopping
            )
            self._wait(process.name, process.ready, deadline)
            if process.started is not None:
                process.started()
        self.timings["node_ready"] = time.monotonic() - t0

    def stop(self) -> None:
        """Stop every component, newest first (SIGTERM, then SIGKILL); the real node's
        pods go before its runtime does."""
        if self.node is not None:
            self._stop_node(self.node)
        for component in reversed(self.components):
            if component.process.poll() is None:
                component.process.terminate()
        for component in reversed(self.components):
            try:
                component.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait(timeout=10)
            component.log_file.close()
        self.components.clear()

    def _stop_node(self, node: RealNode) -> None:
        try:
            for component in reversed(self.node_components):
                if component.stopping is not None:
                    component.stopping()
                stop_process(component.process)
                component.log_file.close()
        finally:
            self.node_components.clear()
            node.teardown()

    def restart(self, name: str, down_seconds: float, timeout: float = 60.0) -> None:
        """Stop one component (SIGTERM), keep it down, start it again with the same
        arguments; for the apiserver, wait until it is ready. Data (etcd) is kept."""
        component = next(c for c in self.components if c.name == name)
        stop_process(component.process)
        component.log_file.close()
        self.components.remove(component)
        time.sleep(down_seconds)
        self._spawn(name, component.args)
        if name == "kube-apiserver":
            deadline = time.monotonic() + timeout
            self._wait("kube-apiserver", lambda: self._api_ok("/readyz"), deadline)
            # The scheduler's and controllers' watches were refused while RBAC warmed up
            # and back off: return once a pod is scheduled again, so whatever runs next
            # finds a working control plane.
            probe = f"sandbox-scheduling-probe-{int(time.time())}"
            self._wait(
                "scheduling", lambda: self._schedules_a_pod(probe), time.monotonic() + 2 * timeout
            )

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def _spawn(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        node: bool = False,
        stopping: Callable[[], None] | None = None,
    ) -> None:
        """Start a component (``node``: one of the real node's; ``stopping`` runs before it
        is stopped)."""
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.progress(f"starting {name}")
        process = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.workdir,
            env={**os.environ, **(env or {})},
        )
        component = Component(name, process, log_path, log_file, args, stopping)
        (self.node_components if node else self.components).append(component)

    def _wait(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        while True:
            for component in [*self.components, *self.node_components]:
                if component.process.poll() is not None:
                    raise ClusterError(
                        f"{component.name} exited with {component.process.returncode} while "
                        f"waiting for {what}; its log ends:\n{component.log_tail()}"
                    )
            try:
                if check():
                    self.progress(f"{what}: ready")
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {c.name}\n{c.log_tail(10)}"
                    for c in [*self.components, *self.node_components]
                )
                raise ClusterError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.2)

    def _write_kubeconfig(
        self, path: Path, ca: Path, creds: KeyPair, user: str, server: str | None = None
    ) -> None:
        document = kubeconfig_document(server or self.server, ca, creds, user)
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ca is None or self._admin is None:
            raise ClusterError("the cluster has not been started")
        context = ssl.create_default_context(cafile=str(self._ca))
        context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A small authenticated JSON request to the apiserver (admin credentials)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def _api_ok(self, path: str) -> bool:
        return bool(self.request("GET", path) == "ok")

    def _create(self, path: str, body: dict[str, Any]) -> None:
        try:
            self.request("POST", path, body)
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise

    def _create_object(self, document: dict[str, Any]) -> None:
        """Create a built-in object from its manifest (the collection path from its kind)."""
        group_version = document["apiVersion"]
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        namespace = document["metadata"].get("namespace")
        scope = f"/namespaces/{namespace}" if namespace else ""
        kind = document["kind"].lower()
        plural = kind + "es" if kind.endswith("s") else kind + "s"
        self._create(f"{prefix}{scope}/{plural}", document)

    def _create_sandbox_objects(self) -> None:
        self._create(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": SANDBOX_STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "sandbox.gptoss.ai/fake-volume",
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            },
        )
        for spec in self.nodes:
            self.add_node(spec)

    def add_node(self, spec: FakeNodeSpec) -> None:
        self._create("/api/v1/nodes", fake_node_manifest(spec))

    def _nodes_ready(self) -> bool:
        items = self.request("GET", "/api/v1/nodes")["items"]
        ready = {
            item["metadata"]["name"]
            for item in items
            for cond in item.get("status", {}).get("conditions", [])
            if cond["type"] == "Ready" and cond["status"] == "True"
        }
        return {spec.name for spec in self.nodes} <= ready

    def _schedules_a_pod(self, name: str) -> bool:
        """Probe Job ``name`` has a scheduled pod: the Job controller and the scheduler
        work."""
        jobs = "/apis/batch/v1/namespaces/default/jobs"
        try:
            self.request("GET", f"{jobs}/{name}")
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
            self._create(
                jobs,
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": name},
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "probe", "image": "sandbox/probe"}],
                                "tolerations": [{"operator": "Exists"}],
                            }
                        }
                    },
                },
            )
            return False
        pods = self.request(
            "GET", f"/api/v1/namespaces/default/pods?labelSelector=job-name%3D{name}"
        )
        if not any(pod.get("spec", {}).get("nodeName") for pod in pods["items"]):
            return False
        self.request("DELETE", f"{jobs}/{name}?propagationPolicy=Background")
        return True

    def _default_service_account_exists(self) -> bool:
        self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def _https_ok(port: int, path: str) -> bool:
    """Probe a component's self-signed health endpoint on loopback."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, context=context, timeout=2) as response:
        return bool(response.status == 200)


# ---------------------------------------------------------------------- CLI
def _state_file(workdir: Path) -> Path:
    return workdir / "state.json"


def serve(workdir: Path, gpu_nodes: int, gpus: int) -> int:
    """Run a cluster in the foreground until SIGTERM/SIGINT (the detached supervisor)."""
    cluster = LocalCluster(workdir, default_nodes(gpu_nodes, gpus), progress=_log)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start()
    except ClusterError as error:
        _log(f"failed: {error}")
        return 1
    _state_file(workdir).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "server": cluster.server,
                "kubeconfig": str(cluster.kubeconfig),
                "timings": cluster.timings,
            }
        )
    )
    _log(f"ready in {cluster.timings['total']:.1f}s: {cluster.server}")
    try:
        while not stopping:
            time.sleep(0.5)
            for component in cluster.components:
                if component.process.poll() is not None:
                    _log(f"{component.name} exited; stopping")
                    stopping = True
    finally:
        cluster.stop()
        _state_file(workdir).unlink(missing_ok=True)
    return 0


def _log(line: str) -> None:
    print(f"[sandbox] {line}", flush=True)


def up(workdir: Path, gpu_nodes: int = 2, gpus: int = 8, timeout: float = 3600) -> dict[str, Any]:
    """Start a detached cluster supervisor and wait until it is ready."""
    workdir = workdir.resolve()
    state = _state_file(workdir)
    if state.exists():
        current = json.loads(state.read_text())
        if _alive(current["pid"]):
            return dict(current)
        state.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptoss_sandbox.cluster",
            "serve",
            str(workdir),
            str(gpu_nodes),
            str(gpus),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    with open(workdir / "supervisor.log", "rb") as reader:
        reader.seek(0, os.SEEK_END)
        while not state.exists():
            chunk = reader.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            if child.poll() is not None:
                raise ClusterError(f"the cluster failed to start; see {workdir / 'supervisor.log'}")
            if time.monotonic() > deadline:
                child.terminate()
                raise ClusterError("timed out starting the cluster")
            time.sleep(0.3)
        sys.stdout.write(reader.read().decode(errors="replace"))
    return dict(json.loads(state.read_text()))


def down(workdir: Path) -> bool:
    """Stop a cluster started by ``up``. True when one was running."""
    state = _state_file(workdir.resolve())
    if not state.exists():
        return False
    pid = json.loads(state.read_text())["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state to be sure.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="gptoss-sandbox cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the local control plane in the background")
    p_up.add_argument("--dir", type=Path, default=Path(".cluster"))
    p_up.add_argument("--gpu-nodes", type=int, default=2)
    p_up.add_argument("--gpus-per-node", type=int, default=8)
    p_down = sub.add_parser("down", help="stop it")
    p_down.add_argument("--dir", type=Path, default=Path(".cluster"))
    p_serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    p_serve.add_argument("workdir", type=Path)
    p_serve.add_argument("gpu_nodes", type=int)
    p_serve.add_argument("gpus", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.workdir, args.gpu_nodes, args.gpus)
    if args.command == "up":
        state = up(args.dir, args.gpu_nodes, args.gpus_per_node)
        print(f"cluster ready: {state['server']}")
        print(f"export KUBECONFIG={state['kubeconfig']}")
        return 0
    stopped = down(args.dir)
    print("cluster stopped" if stopped else "no cluster was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
