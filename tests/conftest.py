"""Shared fixtures: the real datasets from ../shared/fixtures, writable copies of them, and
real services (GCS emulator) started per session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wvm.serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
# This run's own listing cache (pipelines/sources/listing_cache.py): nothing another run or
# checkout on the machine cached can change what a test reads. Subprocesses inherit it.
os.environ["WVM_LISTING_CACHE"] = tempfile.mkdtemp(prefix="wvm-test-listings-")
FIXTURES = ROOT.parent / "shared" / "fixtures"
METAWORLD_MINI = FIXTURES / "metaworld_mini"
METAWORLD_LABELS = FIXTURES / "metaworld_mini.labels.parquet"
G1_V21 = FIXTURES / "g1_bottle_v21"


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):  # fixtures are read-only; copies must be editable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


@pytest.fixture
def metaworld_copy(tmp_path: Path) -> Path:
    return copy_dataset(METAWORLD_MINI, tmp_path / "metaworld_mini")


@pytest.fixture
def g1_small(tmp_path: Path) -> Path:
    """The real G1 v2.1 dataset cut to its first 24 frames per episode (videos untouched), so
    per-episode file damage can be tested quickly."""
    dst = copy_dataset(G1_V21, tmp_path / "g1_small")
    keep = 24
    for data in sorted((dst / "data" / "chunk-000").glob("*.parquet")):
        table = pq.read_table(data)
        pq.write_table(table.slice(0, keep), data)
    episodes = [json.loads(l) for l in (dst / "meta" / "episodes.jsonl").read_text().splitlines() if l.strip()]
    for e in episodes:
        e["length"] = keep
    (dst / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return dst


def rewrite_episode_table(dataset: Path, episode: int, edit) -> None:
    """Apply `edit(table) -> table` to one episode's rows in a v2.1 or v3 dataset."""
    info = json.loads((dataset / "meta" / "info.json").read_text())
    if info["codebase_version"] == "v3.0":
        path = dataset / "data" / "chunk-000" / "file-000.parquet"
        table = pq.read_table(path)
        mask = pa.compute.equal(table["episode_index"], episode)
        mine, rest = table.filter(mask), table.filter(pa.compute.invert(mask))
        edited = edit(mine)
        pq.write_table(pa.concat_tables([rest, edited.cast(rest.schema)]).sort_by("index"), path)
    else:
        path = dataset / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"
        pq.write_table(edit(pq.read_table(path)), path)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real local GCS server (gcp-storage-emulator); sets STORAGE_EMULATOR_HOST for gs:// URLs."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("GCS emulator did not start")
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    yield f"http://127.0.0.1:{port}"
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def shipped_checkpoint() -> Path:
    from wvm.checkpoint import DEFAULT_CHECKPOINT

    assert (DEFAULT_CHECKPOINT / "model.safetensors").exists(), "the shipped checkpoint is missing"
    return DEFAULT_CHECKPOINT


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, shipped_checkpoint):
    """A real tritonserver (the binary bundled in nvidia-pytriton) serving the project's own
    model repository, unchanged, on free ports."""
    from wvm.serving.server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "server.log"
    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=log)
    with server:
        yield server


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory, shipped_checkpoint) -> Path:
    """A second model version: the shipped weights, slightly perturbed, under another version."""
    import torch

    from wvm.checkpoint import load_model, save_model

    loaded = load_model(shipped_checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name.startswith("value."):
                p.add_(0.01 * torch.randn_like(p))
    loaded.config.version = loaded.config.version + "-other"
    path = tmp_path_factory.mktemp("ckpt") / "other"
    save_model(path, loaded.model, loaded.config)
    return path


def object_versions(fs, prefix: str) -> dict:
    """Every object under `prefix` with its generation: an object rewritten, even with the same
    bytes, gets a new generation, one deleted or added changes the keys."""
    versions = {path: (info.get("generation"), info.get("md5Hash")) for path, info in fs.find(prefix, detail=True).items()}
    assert versions and all(generation for generation, _ in versions.values()), "the emulator reports no generations"
    return versions


def kill_midway_then_rerun(cmd: list[str], commits: Path, glob: str, at_least: int = 2) -> dict:
    """Start a CLI run, kill -9 its whole process group once `at_least` commit files match
    `commits/glob`, then rerun it to the end. Returns the rerun's JSON summary."""
    import signal

    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty child never blocks on it
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 300
        while time.time() < deadline and len(list(commits.glob(glob))) < at_least:
            if proc.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"the run ended before the kill (rc {proc.returncode}): {stderr.read().decode()[-3000:]}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and any workers it started, mid-run
        proc.wait()
    assert len(list(commits.glob(glob))) >= at_least
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    return json.loads(rerun.stdout)


@contextlib.contextmanager
def external_dask_cluster(workers: int = 2, cwd: Path | None = None):
    """`dask scheduler` and `dask worker` started as separate processes, as on a real cluster
    (workers in `cwd`: another directory than the client's, as on another host)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}  # workers import the project and test stages
    scheduler = subprocess.Popen([Path(sys.executable).with_name("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    worker = subprocess.Popen([Path(sys.executable).with_name("dask"), "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                               "--no-dashboard"], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
