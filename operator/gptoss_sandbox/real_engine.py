"""The real engine on a CPU: vLLM's CPU build serving a tiny gpt-oss checkpoint.

``build_tiny_checkpoint`` writes the checkpoint with ``tiny_gptoss.py``, run by the engine
venv's python (it needs torch and transformers, which this venv lacks). ``VllmServer`` runs
vLLM's OpenAI-compatible server on a checkpoint, on loopback.

vLLM's server starts an engine-core process, which starts a worker; they outlive a
killed server, and a server stopped during startup can hang forever. So the server runs
under a small supervisor (``python -m gptoss_sandbox.real_engine supervise ...``, in a
session of its own) that gets SIGTERM from ``stop()`` or when the thread that started it
dies. It then sends SIGTERM to the server's process group, and SIGKILL to what is left of
it once the server has exited (or after a grace period).

On a machine with more than one core the whole engine is confined to its first core
(``engine_cpus``): vLLM's engine-core process busy-waits on its worker's results while
the worker computes, so an unconfined engine holds two cores for as long as it generates,
and on a 2-core machine the control plane and the sidecar next to it got no CPU for
seconds at a time (lease renewals went out 4-8 s late). A GPU node has the cores to spare.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from gptoss_operator.core import naming
from gptoss_operator.engine.vocab import VOCAB_FILE, write_vocab
from gptoss_sandbox.binaries import cache_root
from gptoss_sandbox.cluster import free_port, parent_death_signal
from gptoss_sandbox.engine_venv import EngineVenv, ensure_engine

HOST = "127.0.0.1"
TINY_GPTOSS = Path(__file__).with_name("tiny_gptoss.py")
ENGINE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
# What running on a CPU adds to a Deployment's arguments: no CUDA graphs or compilation
# (it only slows start-up here), and the checkpoint's own dtype.
CPU_ARGS = ("--enforce-eager", "--dtype", "bfloat16")
SERVER_STOP_GRACE = 10.0  # seconds from SIGTERM to SIGKILL (a healthy server takes ~2 s)
GROUP_EXIT_GRACE = 5.0  # seconds its helpers (resource tracker) get to finish after it


class EngineError(RuntimeError):
    pass


def engine_cpus() -> frozenset[int] | None:
    """The cores the engine may use: the first one this process may use, when it may use
    more than one (the rest are left to everything else); None on a single core."""
    allowed = sorted(os.sched_getaffinity(0))
    return frozenset(allowed[:1]) if len(allowed) > 1 else None


def _start_confined(signum: signal.Signals, cpus: frozenset[int] | None) -> Callable[[], None]:
    """A ``preexec_fn``: arm the parent-death signal, then confine the child (and all it
    starts) to ``cpus``."""
    arm = parent_death_signal(signum)

    def start() -> None:
        arm()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return start


def vocab_folder() -> Path:
    """A folder holding ``o200k_base.tiktoken`` (for ``TIKTOKEN_ENCODINGS_BASE``)."""
    folder = cache_root() / "tiktoken"
    write_vocab(folder)
    return folder


def build_tiny_checkpoint(out: Path, variant: str) -> Path:
    """Write a tiny gpt-oss checkpoint (``scripted`` or ``random``) into ``out``."""
    engine = ensure_engine()
    args = [
        str(engine.python),
        str(TINY_GPTOSS),
        *("--out", str(out), "--variant", variant),
        *("--vocab", str(vocab_folder() / VOCAB_FILE)),
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EngineError(f"building the {variant} checkpoint failed:\n{result.stderr[-4000:]}")
    return out


def checkpoint_files(folder: Path) -> dict[str, bytes]:
    """A checkpoint folder's files by their path in it (a repo for the fake hub)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class VllmServer:
    """vLLM's OpenAI-compatible server on a checkpoint folder, on 127.0.0.1.

    Call ``start()`` from a thread that outlives the server: the server is stopped when
    that thread ends (``PR_SET_PDEATHSIG`` follows the thread, not the process).
    """

    def __init__(
        self,
        model: Path,
        *,
        served_model_name: str = "gpt-oss-20b",
        port: int | None = None,
        max_model_len: int = 4096,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        engine: EngineVenv | None = None,
    ) -> None:
        self.model = model
        self.port = port or free_port()
        self.args = [
            *("--model", str(model)),
            *("--served-model-name", served_model_name),
            *("--host", HOST, "--port", str(self.port)),
            *("--max-model-len", str(max_model_len)),
            *CPU_ARGS,
            *extra_args,
        ]
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"gptoss-vllm-{self.port}.log"
        self.env = {**ENGINE_ENV, "TIKTOKEN_ENCODINGS_BASE": str(vocab_folder())}
        self.cpus = engine_cpus()
        if self.cpus is not None:
            # vLLM binds its compute threads itself; the same cores, or it reserves one.
            self.env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(self.cpus)))
        self._engine = engine
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started = 0.0

    @classmethod
    def from_deployment(
        cls,
        serve_args: Sequence[str],
        volume: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        engine: EngineVenv | None = None,
    ) -> VllmServer:
        """The server a Deployment's vLLM container describes, run here: the same flags
        and environment, paths on the volume's mount point moved to ``volume``, loopback
        and a free port instead of 0.0.0.0:8000, plus the CPU's ``CPU_ARGS``."""
        served = _served_path(serve_args).relative_to(naming.VOLUME_MOUNT)
        flags = _without_options(serve_args[2:], ("--host", "--port"))
        server = cls(volume / served, log_path=log_path, engine=engine)
        server.args = [
            *("--model", str(volume / served)),
            *("--host", HOST, "--port", str(server.port)),
            *flags,
            *CPU_ARGS,
        ]
        for name, value in (env or {}).items():
            if value.startswith(naming.VOLUME_MOUNT + "/"):
                value = str(volume / PurePosixPath(value).relative_to(naming.VOLUME_MOUNT))
            server.env[name] = value
        return server

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``); the same across restarts."""
        return f"http://{HOST}:{self.port}"

    def command(self, python: Path) -> list[str]:
        """The server's command line, run by the engine venv's ``python``."""
        return [str(python), "-m", "vllm.entrypoints.openai.api_server", *self.args]

    def start(self) -> VllmServer:
        """Start the server (without waiting for it to load the model)."""
        if self._process is not None:
            raise EngineError("the vLLM server is already started")
        engine = self._engine or ensure_engine()
        command = self.command(engine.python)
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"$ {shlex.join(command)}\n".encode())
        self._log.flush()
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gptoss_sandbox.real_engine", "supervise", *command],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_start_confined(signal.SIGTERM, self.cpus),
        )
        return self

    def wait_healthy(self, timeout: float = 300.0) -> float:
        """Wait until ``GET /health`` answers 200; return the seconds since ``start()``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                raise EngineError(f"the vLLM server is not running:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, http.client.HTTPException),  # not up yet
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    return time.monotonic() - self._started
            if time.monotonic() > deadline:
                raise EngineError(f"the vLLM server is not healthy after {timeout}s")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and every process it started (~2 s; at most ~15 s)."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(SERVER_STOP_GRACE + GROUP_EXIT_GRACE + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 300.0) -> float:
        """Stop, start again on the same port, and wait until healthy (seconds taken)."""
        self.stop()
        return self.start().wait_healthy(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def supervise(command: Sequence[str]) -> int:
    """Run ``command`` in a process group of its own until it exits or this process gets
    SIGTERM; then stop it and SIGKILL what is left of its group. Returns its exit code."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = subprocess.Popen(command, process_group=0)
    while server.poll() is None and not stopping.wait(0.2):
        pass
    group = server.pid  # the group outlives its leader while members remain
    if server.poll() is None:
        _signal_group(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(SERVER_STOP_GRACE)
    deadline = time.monotonic() + GROUP_EXIT_GRACE
    while server.poll() is not None and _signal_group(group, 0):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)
    return server.wait()


def _served_path(serve_args: Sequence[str]) -> PurePosixPath:
    if list(serve_args[:1]) != ["serve"] or len(serve_args) < 2:
        raise EngineError(f"not `vllm serve` arguments: {list(serve_args)}")
    return PurePosixPath(serve_args[1])


def _without_options(args: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """``args`` without the options ``names`` and their values."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept


def _signal_group(group: int, signum: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "supervise":
        print("usage: python -m gptoss_sandbox.real_engine supervise COMMAND...", file=sys.stderr)
        return 2
    return supervise(args[1:])


if __name__ == "__main__":
    sys.exit(main())
