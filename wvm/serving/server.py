"""Run a real `tritonserver` locally: the binary bundled in the nvidia-pytriton wheel, on the
project's model repository (REFERENCE §6). Production runs NVIDIA's container instead (infra/).

Two things the bundled binary needs that the wheel does not set up:
- a backend directory holding the Python backend plus the stub built for this Python;
- the stub is compiled against numpy 1: under numpy 2 it drops BYTES tensors and empties
  numpy outputs. We give it a small environment with numpy 1.26 layered over this one (a .pth
  file adds our site-packages after it), so torch, safetensors and wvm come from here.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import WvmError
from pipelines.processes import die_with_parent
from schemas import inference as contract

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
STUB_NUMPY = "numpy==1.26.4"
_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class ServerError(WvmError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_dir() -> Path:
    return Path(os.environ.get("WVM_CACHE", Path.home() / ".cache" / "wvm"))


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _triton_root() -> Path:
    root = _site_packages() / "pytriton" / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise ServerError(f"{root}/bin/tritonserver not found: install the nvidia-pytriton wheel (see README)")
    return root


def prepare_backends() -> Path:
    """A backend directory with the Python backend and this interpreter's stub."""
    target = cache_dir() / "triton" / f"backends-py{_PY}"
    stub = target / "python" / "triton_python_backend_stub"
    if not stub.exists():
        root = _triton_root()
        tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
        shutil.copytree(root / "backends" / "python", tmp / "python")
        shutil.copy2(root / "python_backend_stubs" / _PY / "triton_python_backend_stub", tmp / "python")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def stub_env_path() -> Path:
    """One stub environment per installation (keyed by its site-packages): two checkouts on one
    machine never rebuild each other's."""
    return cache_dir() / "triton" / f"stub-env-py{_PY}-{hashlib.sha1(str(_site_packages()).encode()).hexdigest()[:10]}"


def prepare_stub_env() -> Path:
    """The stub's Python environment: numpy 1.26 first, then everything installed here. Built
    aside and moved in place, so two servers starting at once never see a half-built one."""
    site, env = _site_packages(), stub_env_path()
    if (env / ".wvm-ready").exists():
        return env
    log.info("preparing the Triton stub environment in %s (numpy 1 for the stub, once)", env)
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=env.name + ".tmp-", dir=env.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(tmp)], check=True)
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", STUB_NUMPY]
        result = subprocess.run(pip, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(f"could not install {STUB_NUMPY} for the Triton stub: {result.stderr.strip()[-500:]}")
        env_site = next((tmp / "lib").glob("python*/site-packages"))
        (env_site / "zz_wvm_main_env.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
        (tmp / ".wvm-ready").write_text(str(site))
        try:
            os.replace(tmp, env)  # a venv runs from wherever it lies: its python finds its own lib/
        except OSError:  # another process got there first (target exists and is not empty): use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return env


def write_repository(checkpoint: str, base: Path = DEFAULT_REPOSITORY) -> Path:
    """A copy of the model repository that serves `checkpoint`, with the request geometry
    of config.pbtxt taken from the checkpoint's config."""
    from wvm.checkpoint import load_model

    config = load_model(checkpoint).config
    target = Path(tempfile.mkdtemp(prefix="wvm-model-repo-"))
    shutil.copytree(base, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    params = {
        contract.PARAM_CHECKPOINT: str(Path(checkpoint).resolve()),
        contract.PARAM_SAMPLES_PER_EPISODE: str(config.samples_per_episode),
    }
    for path in [target / "wvm" / "config.pbtxt", *(target / "wvm" / "configs").glob("*.pbtxt")]:
        text = path.read_text()
        for key, value in params.items():
            text = re.sub(rf'(key: "{key}" value: {{ string_value: )"[^"]*"', rf'\1"{value}"', text)
        text = re.sub(r"dims: \[ \d+, -1, -1, 3 \]", f"dims: [ {config.window_frames}, -1, -1, 3 ]", text)
        text = re.sub(r'(name: "VALUES" data_type: TYPE_FP32 dims: \[ )\d+', rf"\g<1>{config.window_frames}", text)
        path.write_text(text)
    return target


SHM_GLOB = "/dev/shm/triton_python_backend_shm_region_*"


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _mapped_shm(pid: int) -> set[str]:
    """Triton shared-memory regions a process has mapped (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return {line.split()[-1] for line in maps if "triton_python_backend_shm_region_" in line}
    except OSError:
        return set()


@dataclass
class TritonServer:
    model_repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"  # the address every endpoint listens on (0.0.0.0: all interfaces)
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    config_name: str | None = None  # e.g. "gpu" selects configs/gpu.pbtxt
    log_file: Path | None = None
    startup_timeout_s: float = 180.0
    # the server goes when the process that started it goes, even by kill -9 (`wvm serve`);
    # off by default: the kernel ties it to the starting *thread*
    die_with_parent: bool = False

    def __post_init__(self):
        self.process: subprocess.Popen | None = None
        self._shm: set[str] = set()  # this server's shared-memory regions, known once ready

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def endpoints(self) -> dict:
        return {
            "http": f"http://{self._client_host}:{self.http_port}",
            "grpc": self.grpc_url,
            "metrics": f"http://{self._client_host}:{self.metrics_port}/metrics",
        }

    def command(self) -> list[str]:
        cmd = [
            str(_triton_root() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={prepare_backends()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            # the config is complete; auto-complete would start an extra stub and double startup
            "--disable-auto-complete-config",
            "--exit-timeout-secs=30",
            "--log-verbose=0",
        ]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        return cmd

    def environment(self) -> dict:
        env = dict(os.environ)
        libs = [str(_site_packages() / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
        # The stub's embedded Python finds its environment through PATH (PYTHONPATH is ignored).
        env["PATH"] = f"{prepare_stub_env() / 'bin'}:{env.get('PATH', '')}"
        return env

    def start(self) -> TritonServer:
        if self.process is not None:
            return self
        # another server on one of our ports would answer our readiness checks: refuse first
        busy = [f"{name} port {port}" for name, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)) if _port_in_use(self.host, port)]
        if busy:
            raise ServerError(f"{', '.join(busy)} on {self.host} already in use (another server?); choose free ports")
        command, env = self.command(), self.environment()
        log_target = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=log_target,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        self.wait_ready()
        self._shm = _mapped_shm(self.process.pid)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints['http']}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting{self._log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {self.startup_timeout_s:.0f}s{self._log_tail()}")

    def _log_tail(self) -> str:
        if not self.log_file or not Path(self.log_file).exists():
            return " (start it with a log file to see why)"
        lines = Path(self.log_file).read_text(errors="replace").splitlines()
        useful = [l for l in lines if " E" in l[:3] or "error" in l.lower() or "failed" in l.lower()]
        return ":\n" + "\n".join((useful or lines)[-15:])

    def stop(self, timeout: float = 40.0) -> None:
        """Graceful stop: in-flight requests finish, then the model unloads."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.returncode and self.process.returncode < 0:
            # A crashed server leaves its Python-backend shared memory behind: remove its own
            # regions (mapped by it once ready), never another server's
            for region in self._shm & set(glob.glob(SHM_GLOB)):
                os.unlink(region)
        self.process, self._shm = None, set()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
