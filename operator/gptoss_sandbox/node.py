"""A real Kubernetes node on this machine, next to kwok's fake GPU nodes.

The node runs the real components, built from pinned sources (``binaries``): containerd
with Debian's runc, the kubelet, kube-proxy (iptables mode), the CNI bridge, host-local,
loopback and portmap plugins, and CoreDNS. Only the GPUs are not real: ``fakegpu``, a
device plugin of our own, advertises ``nvidia.com/gpu`` devices that hold no hardware.

Everything the node addresses lives in a network namespace of its own (``NETNS``), joined
to the machine by one veth pair:

- the machine's end ``HOST_IP`` is where the node reaches the apiserver (and servers the
  tests run on the machine, through Services without selectors);
- the node's end ``NODE_IP`` is the node's InternalIP (kubelet, CoreDNS);
- pods get addresses from ``POD_CIDR`` on the node's bridge; Services from the cluster's
  Service range are programmed by kube-proxy inside the namespace.

The node namespace has no default route, and the machine does not forward: nothing a pod
sends can leave the machine.

One real node runs on a machine at a time (it owns the namespace, ``RUN_DIR`` and the
kubelet's cgroups); a lock file says so, and a node left behind by a killed run is cleaned
up by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from gptoss_sandbox.binaries import NodeBinaries, cache_root
from gptoss_sandbox.certs import CertificateAuthority, KeyPair
from gptoss_sandbox.images import ImageArchive

NODE_NAME = "gptoss-node"
NETNS = "gptoss-node"
HOST_LINK = "gptoss-h0"
NODE_LINK = "eth0"
HOST_IP = "10.250.0.1"
NODE_IP = "10.250.0.2"
LINK_PREFIX = 30
POD_CIDR = "10.245.0.0/24"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
RUN_DIR = Path("/run/gptoss-node")
# The kubelet's root: a short path, because the kubelet makes unix sockets in it (at most
# 107 bytes long), and it is the node's own (emptied when a node starts or stops).
KUBELET_DIR = Path("/var/lib/gptoss-node/kubelet")
# The kubelet serves device plugins here whatever its --root-dir (the API fixes the path).
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
REAL_NODE_LABEL = "gptoss.ai/real-node"
NODE_STORAGE_CLASS = "node-local"
VOLUME_COUNT = 32  # local volumes never come back (Retain): one per claim the node tier makes
VOLUME_SIZE = "20Gi"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINERD_NAMESPACE = "k8s.io"
# containerd labels an imported image with the hash of what it was built from, so a node
# imports an archive again only when the image changed.
INPUT_HASH_LABEL = "sandbox.gptoss.ai/input-hash"


def in_node_netns(argv: list[str]) -> list[str]:
    """``argv`` run in the node's network namespace (and nothing else: mounts, PIDs and
    cgroups stay the machine's, which the kubelet and containerd share)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def _run(argv: list[str], *, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}"
        )
    return result.stdout


def _sysctl(name: str, value: str) -> None:
    _run(in_node_netns(["sysctl", "-q", "-w", f"{name}={value}"]))


@dataclass(frozen=True)
class NodeNetwork:
    """The node's network namespace and its veth link to the machine."""

    service_cidr: str

    def up(self) -> None:
        self.down()
        _run(["ip", "netns", "add", NETNS])
        # The node's end is made inside its namespace (the machine has an eth0 of its own).
        _run(
            [
                "ip",
                "link",
                "add",
                HOST_LINK,
                "type",
                "veth",
                "peer",
                "name",
                NODE_LINK,
                "netns",
                NETNS,
            ]
        )
        _run(["ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_LINK])
        _run(["ip", "link", "set", HOST_LINK, "up"])
        node_ip = in_node_netns(["ip"])
        _run([*node_ip, "link", "set", "lo", "up"])
        _run([*node_ip, "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_LINK])
        _run([*node_ip, "link", "set", NODE_LINK, "up"])
        # The machine reaches pods and Services through the node (the apiserver proxies to
        # pods; tests reach Services); the node's own processes reach Services the same way
        # pods do. No default route anywhere: an address outside these goes nowhere.
        for cidr in (POD_CIDR, self.service_cidr):
            _run(["ip", "route", "replace", cidr, "via", NODE_IP, "dev", HOST_LINK])
        _run([*node_ip, "route", "replace", self.service_cidr, "dev", NODE_LINK])
        _sysctl("net.ipv4.ip_forward", "1")
        _sysctl("net.bridge.bridge-nf-call-iptables", "1")
        _sysctl("net.ipv4.conf.all.route_localnet", "1")

    def down(self) -> None:
        """Remove the namespace (its bridge, veth end and rules go with it)."""
        _run(["ip", "link", "del", HOST_LINK], check=False)
        _run(["ip", "netns", "del", NETNS], check=False)


@dataclass(frozen=True)
class NodeProcess:
    """One of the node's processes: how to run it, when it is ready, what to do once it is
    (``started``) and before it is stopped (``stopping``)."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    started: Callable[[], None] | None = None
    stopping: Callable[[], None] | None = None


class NodeLock:
    """One real node per machine: an exclusive lock held while it runs."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        path = cache_root() / ".real-node.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(f"a real node already runs on this machine ({holder})") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class RealNode:
    """The configuration, credentials and processes of the real node.

    The caller (``LocalCluster``) starts the processes in order, in the node's network
    namespace, and waits for each to be ready; this class writes what they read and
    cleans up what they leave (pods, mounts, the namespace).
    """

    def __init__(
        self,
        workdir: Path,
        binaries: NodeBinaries,
        ca: CertificateAuthority,
        write_kubeconfig: Callable[[Path, KeyPair, str], None],
        service_cidr: str,
        gpus: int,
        pause_image: ImageArchive,
    ) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.ca = ca
        self.write_kubeconfig = write_kubeconfig
        self.network = NodeNetwork(service_cidr)
        self.gpus = gpus
        self.pause_image = pause_image
        self.kubelet_dir = KUBELET_DIR
        self.volumes = [workdir / "volumes" / f"pv-{i:02d}" for i in range(VOLUME_COUNT)]
        self.lock = NodeLock()

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        """Take the machine's node slot, clean what a killed run left, make the network."""
        self.lock.acquire()
        try:
            self.clean_leftovers()
            self.network.up()
            for folder in (RUN_DIR, self.workdir, self.kubelet_dir, *self.volumes):
                folder.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.lock.release()
            raise

    def processes(self, node_ready: Callable[[], bool]) -> list[NodeProcess]:
        """The node's processes in start order; ``node_ready`` asks the apiserver whether
        the Node is Ready with its GPUs."""
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        containerd_config = self._write_containerd_config()
        kubelet_config = self._write_kubelet_config()
        kubelet_kubeconfig = self._kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        proxy_config = self._write_proxy_config()
        corefile = self._write_corefile()
        path = f"{self.binaries.containerd.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return [
            NodeProcess(
                "containerd",
                in_node_netns([str(self.binaries.containerd), f"--config={containerd_config}"]),
                self._containerd_ready,
                env={"PATH": path},
                started=self._runtime_started,
                # Pods go before their runtime does.
                stopping=self.remove_pods,
            ),
            NodeProcess(
                "kubelet",
                in_node_netns(
                    [
                        str(self.binaries.kubelet),
                        f"--config={kubelet_config}",
                        f"--kubeconfig={kubelet_kubeconfig}",
                        f"--root-dir={self.kubelet_dir}",
                        f"--cert-dir={self.workdir / 'kubelet-pki'}",
                        f"--hostname-override={NODE_NAME}",
                        f"--node-ip={NODE_IP}",
                        f"--node-labels={REAL_NODE_LABEL}=true,nvidia.com/gpu.present=true,"
                        "nvidia.com/gpu.product=fake",
                        "--v=1",
                    ]
                ),
                lambda: _http_ok("http://127.0.0.1:10248/healthz", in_node=True),
                env={"PATH": path},
            ),
            NodeProcess(
                "fakegpu",
                [
                    str(self.binaries.fakegpu),
                    f"--resource={GPU_RESOURCE}",
                    f"--count={self.gpus}",
                    f"--plugin-dir={DEVICE_PLUGIN_DIR}",
                ],
                node_ready,
            ),
            NodeProcess(
                "kube-proxy",
                in_node_netns([str(self.binaries.kube_proxy), f"--config={proxy_config}", "--v=1"]),
                lambda: _http_ok("http://127.0.0.1:10256/healthz", in_node=True),
                env={"PATH": path},
            ),
            NodeProcess(
                "coredns",
                in_node_netns([str(self.binaries.coredns), "-conf", str(corefile)]),
                lambda: _http_ok(f"http://{NODE_IP}:8181/ready", in_node=False),
            ),
        ]

    def _kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        creds = self.ca.issue(f"node-{name}", user, organization=group)
        path = self.workdir / "pki" / f"{name}.kubeconfig"
        self.write_kubeconfig(path, creds, user)
        return path

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path

    def _write_containerd_config(self) -> Path:
        cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
        cri_images = "plugins.'io.containerd.cri.v1.images'"
        runc = f"{cri_runtime}.containerd.runtimes.runc"
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-gptoss-node.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        # Images are kept between runs (root under the cache); the state (sockets, shims'
        # bundles) is per boot.
        root = cache_root() / "node" / "containerd"
        return self._write(
            "containerd.toml",
            "\n".join(
                [
                    "version = 4",
                    f'root = "{root}"',
                    f'state = "{RUN_DIR / "containerd"}"',
                    "[plugins.'io.containerd.server.v1.grpc']",
                    f'  address = "{CONTAINERD_SOCKET}"',
                    "[plugins.'io.containerd.server.v1.ttrpc']",
                    f'  address = "{CONTAINERD_SOCKET}.ttrpc"',
                    f"[{cri_images}]",
                    '  snapshotter = "overlayfs"',
                    f"[{cri_images}.pinned_images]",
                    f'  sandbox = "{self.pause_image.reference}"',
                    f"[{cri_runtime}]",
                    # This machine gives root no CAP_SYS_RESOURCE, so no process may lower
                    # its OOM score below its parent's: containers get at least ours.
                    "  restrict_oom_score_adj = true",
                    f"[{cri_runtime}.containerd]",
                    '  default_runtime_name = "runc"',
                    f"[{runc}]",
                    '  runtime_type = "io.containerd.runc.v2"',
                    f"[{runc}.options]",
                    f'  BinaryName = "{self.binaries.runc}"',
                    f'  Root = "{RUN_DIR / "runc"}"',
                    "  SystemdCgroup = false",
                    f"[{cri_runtime}.cni]",
                    f'  bin_dirs = ["{self.binaries.cni_dir}"]',
                    f'  conf_dir = "{cni_conf}"',
                    "",
                ]
            ),
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "gptoss-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Pods reach the machine (the apiserver) from the node's address.
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(RUN_DIR / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _write_kubelet_config(self) -> Path:
        serving = self.ca.issue(
            "node-kubelet-serving", f"system:node:{NODE_NAME}", server_hosts=[NODE_IP, NODE_NAME]
        )
        resolv = self._write("resolv.conf", "")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine runs cgroup v1, which the kubelet refuses unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.ca.pair.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [CLUSTER_DNS_IP],
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "serializeImagePulls": False,
            # The cached images (vLLM's is several GB) are never garbage collected.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
            },
            "nodeStatusReportFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "maxPods": 110,
        }
        return self._write("kubelet.yaml", yaml.safe_dump(config))

    def _write_proxy_config(self) -> Path:
        kubeconfig = self._kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            # The conntrack table is the machine's: leave its size alone.
            "conntrack": {"maxPerCore": 0, "min": 0},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        }
        return self._write("kube-proxy.yaml", yaml.safe_dump(config))

    def _write_corefile(self) -> Path:
        kubeconfig = self._kubeconfig("coredns", "system:coredns")
        return self._write(
            "Corefile",
            "\n".join(
                [
                    ".:53 {",
                    f"    bind {NODE_IP}",
                    "    errors",
                    f"    ready {NODE_IP}:8181",
                    f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
                    f"        kubeconfig {kubeconfig}",
                    "        pods insecure",
                    "        fallthrough in-addr.arpa ip6.arpa",
                    "    }",
                    # No upstream: names outside the cluster do not resolve (no network).
                    "    cache 30",
                    "}",
                    "",
                ]
            ),
        )

    # ------------------------------------------------------------------ runtime
    def _containerd_ready(self) -> bool:
        return CONTAINERD_SOCKET.exists() and self.crictl(["info"])

    def ctr(self, args: list[str], *, check: bool = True, timeout: float = 600) -> str:
        return _run(
            [
                str(self.binaries.ctr),
                f"--address={CONTAINERD_SOCKET}",
                f"--namespace={CONTAINERD_NAMESPACE}",
                *args,
            ],
            check=check,
            timeout=timeout,
        )

    def crictl(self, args: list[str], *, timeout: float = 120) -> bool:
        """Run crictl against the node's runtime: did it succeed?"""
        crictl = [str(self.binaries.crictl), f"--runtime-endpoint=unix://{CONTAINERD_SOCKET}"]
        try:
            _run([*crictl, *args], timeout=timeout)
        except RuntimeError:
            return False
        return True

    def _runtime_started(self) -> None:
        """Pods a killed run left are removed; the sandbox image is there for new ones."""
        self.remove_pods()
        self.import_image(self.pause_image)

    def import_image(self, image: ImageArchive) -> bool:
        """Import an image archive under its reference unless the node already holds the
        image built from the same inputs. True when it imported."""
        label = f"{INPUT_HASH_LABEL}={image.input_hash}"
        if label in self.ctr(["images", "ls", f"name=={image.reference}"], check=False):
            return False
        # The unpacked snapshot is what pods run; the layers' copy in the content store
        # would double the vLLM image's 6 GB on disk.
        self.ctr(["images", "import", "--local", "--discard-unpacked-layers", str(image.path)])
        self.ctr(["images", "label", image.reference, label])
        return True

    def remove_pods(self) -> None:
        """Stop and remove every pod sandbox the runtime holds (their networks too)."""
        if not self.crictl(["rmp", "--all", "--force"], timeout=180):
            # A sandbox that failed half way may refuse; one more pass after the rest.
            self.crictl(["rmp", "--all", "--force"], timeout=180)

    # ------------------------------------------------------------------ teardown
    def clean_leftovers(self) -> None:
        """Undo what a killed run left: its shims (and so its containers), mounts, network."""
        shim = str(self.binaries.containerd_shim)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(proc / "exe") == shim:
                    os.kill(int(proc.name), 9)
        self.unmount()
        self.network.down()
        # Addresses handed to pods that are gone (CNI could not release them), and the
        # pods' folders.
        shutil.rmtree(RUN_DIR / "ipam", ignore_errors=True)
        self._remove_unmounted(self.kubelet_dir)

    def unmount(self) -> None:
        """Unmount what the kubelet and containerd mounted under their folders."""
        for _ in range(3):
            mounts = _mounts_under(self.kubelet_dir, RUN_DIR)
            if not mounts:
                return
            for target in sorted(mounts, key=len, reverse=True):
                _run(["umount", "-l", target], check=False)

    @staticmethod
    def _remove_unmounted(folder: Path) -> None:
        """Remove ``folder``, but never through a mount (a volume bound into a pod's
        folder would be emptied with it)."""
        left = _mounts_under(folder)
        if left:
            raise RuntimeError(f"{folder} still has mounts, not removed: {left[:5]}")
        shutil.rmtree(folder, ignore_errors=True)

    def teardown(self) -> None:
        """After the processes stopped: mounts and network go, the machine's slot is free."""
        try:
            self.clean_leftovers()
        finally:
            self.lock.release()


def _mounts_under(*folders: Path) -> list[str]:
    prefixes = tuple(str(folder) for folder in folders)
    return [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefixes)
    ]


def _http_ok(url: str, *, in_node: bool) -> bool:
    """GET ``url`` (from inside the node's namespace when ``in_node``): is it 200?"""
    curl = ["curl", "-sf", "-o", "/dev/null", "--max-time", "2", url]
    result = subprocess.run(
        in_node_netns(curl) if in_node else curl,
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode == 0


def node_objects(volumes: list[Path]) -> list[dict[str, Any]]:
    """What the node's components need from the API: CoreDNS's rights, the kube-dns
    Service in front of it, and the node's storage (``local_volumes``)."""
    return [
        *local_volumes(volumes),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {"kubernetes.io/service-name": "kube-dns"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    ]


def local_volumes(folders: list[Path]) -> list[dict[str, Any]]:
    """The node's storage as an on-premises cluster has it: local PersistentVolumes made
    ahead (one folder each, on the node) in a StorageClass without a provisioner. The
    PV controller binds a claim to one of them; the kubelet gives a pod's fsGroup
    ownership of the folder when it mounts it writable."""
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": NODE_STORAGE_CLASS},
        "provisioner": "kubernetes.io/no-provisioner",
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    }
    on_this_node = {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                    ]
                }
            ]
        }
    }
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NODE_NAME}-{folder.name}"},
            "spec": {
                "capacity": {"storage": VOLUME_SIZE},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": NODE_STORAGE_CLASS,
                "local": {"path": str(folder)},
                "nodeAffinity": on_this_node,
            },
        }
        for folder in folders
    ]
    return [storage_class, *volumes]


def gpus_ready(node: dict[str, Any], gpus: int) -> bool:
    """The Node is Ready and advertises its GPUs (the device plugin registered)."""
    status = node.get("status", {})
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
    )
    return ready and str(status.get("allocatable", {}).get(GPU_RESOURCE, "0")) == str(gpus)


def service_to_machine(name: str, namespace: str, port: int) -> list[dict[str, Any]]:
    """A Service (port 80) without selector whose one endpoint is ``HOST_IP:port``: pods
    reach a server running on this machine (a hub, an S3 server) by the Service's name."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-machine",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [HOST_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        },
    ]


def model_spec(
    vllm_image: str, repo: str, endpoint: str, max_model_len: int = 4096
) -> dict[str, Any]:
    """A GptOssModel spec for the real node: ``repo`` from ``endpoint`` onto one of the
    node's volumes, served by the vLLM CPU image with what a CPU needs (eager mode, the
    checkpoint's dtype, a KV cache in host memory, one core). Only user fields: the
    operator renders its Deployment as for any GPU node."""
    return {
        "source": {"repo": repo, "endpoint": endpoint},
        "storage": {"size": "1Gi", "storageClassName": NODE_STORAGE_CLASS},
        "serving": {
            "image": vllm_image,
            "gpuProfile": "Generic",
            "maxModelLen": max_model_len,
            "startupTimeoutSeconds": 900,
            "extraArgs": ["--enforce-eager", "--dtype", "bfloat16"],
            "env": [
                {"name": "VLLM_TARGET_DEVICE", "value": "cpu"},
                {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
                {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "0"},
            ],
            # One core: vLLM's engine busy-waits on its worker, and this machine has two.
            "resources": {
                "requests": {"cpu": "500m", "memory": "2Gi"},
                "limits": {"cpu": "1", "memory": "8Gi"},
            },
        },
        "sidecar": {"concurrency": 4},
    }
