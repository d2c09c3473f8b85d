"""The Prefect layer for real: flows under prefect_test_harness (a real Prefect server), Dask
task runners, a real Triton server, real stores."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import METAWORLD_MINI, ROOT, copy_dataset
from pipelines.store import EpisodeStore
from schemas import labels as spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def run_nightly(sources, out, triton_server, **kwargs):
    from flows.nightly import nightly_flow

    return nightly_flow(sources=[str(s) for s in sources], out=str(out), triton_url=triton_server.grpc_url, **kwargs)


def labelled_frames(out: Path):
    (labels,) = (out / "labels").iterdir()
    (version,) = [p for p in (labels / spec.VERSIONS_DIR).iterdir() if p.is_dir()]
    return pq.read_table(version / spec.FRAMES_DIR)


def files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def latest_table(key: str) -> list[dict]:
    """The newest table artifact under `key`, as the Prefect UI shows it."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1)
    assert artifact.type == "table"
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_nightly_end_to_end_then_nothing_new_then_new_episodes(prefect_server, triton_server, tmp_path):
    source = copy_dataset(METAWORLD_MINI, tmp_path / "source")
    episodes_file = source / "meta/episodes/chunk-000/file-000.parquet"
    full = pq.read_table(episodes_file)
    pq.write_table(full.slice(0, 12), episodes_file)  # the source starts with 12 of its 18 episodes
    out = tmp_path / "out"

    first = run_nightly([source], out, triton_server)
    assert first["new"] is True and first["failures"] == 0
    latest = json.loads((out / "latest.json").read_text())
    assert latest["run_id"] == first["run_id"]
    report = Path(latest["report"])
    assert report.exists() and (report.parent / "plots" / "quality_histogram.png").exists()
    assert "Failures" in report.read_text()
    assert labelled_frames(out).num_rows == sum(full.slice(0, 12)["length"].to_pylist())
    (row,) = latest_table("nightly-sources")  # what an operator reads in the Prefect UI
    assert (row["episodes new"], row["episodes labelled"], row["episodes failed"], row["episodes in labels"]) == (12, 12, 0, 12)
    assert 0.0 <= row["mean quality"] <= 1.0 and row["relabel frames/s"] > 0 and row["untrusted"] == 0

    before = files(out)
    second = run_nightly([source], out, triton_server)
    assert second["new"] is False and second["latest_run"] == first["run_id"]
    assert files(out) == before  # nothing written

    pq.write_table(full, episodes_file)  # six new episodes arrive
    third = run_nightly([source], out, triton_server)
    (result,) = third["sources"].values()
    assert result["ingest"]["episodes_written"] == 6 and result["relabel"]["episodes_labelled"] == 6
    assert result["relabel"]["already_labelled"] == 12
    frames = labelled_frames(out)
    keys = set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))
    assert frames.num_rows == len(keys) == 524
    assert json.loads((out / "latest.json").read_text())["run_id"] == third["run_id"]
    (row,) = latest_table("nightly-sources")
    assert (row["episodes new"], row["episodes labelled"], row["episodes in labels"]) == (6, 6, 18)


def test_a_failing_partition_is_retried_then_recorded_without_losing_the_others(prefect_server, triton_server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.nightly import source_name
    from pipelines.ingest import IngestConfig, plan_ingest
    from schemas.episode_store import MANIFEST_DIR

    out = tmp_path / "out"
    store = out / "stores" / source_name(str(METAWORLD_MINI))
    plan = plan_ingest(IngestConfig(str(METAWORLD_MINI), str(store), partition_frames=200))
    doomed = plan.tasks[1]
    # A directory where the partition's commit file must go: every attempt crashes (OSError).
    (store / MANIFEST_DIR / f"{doomed.partition_id}.parquet").mkdir(parents=True)

    summary = run_nightly([METAWORLD_MINI], out, triton_server, partition_frames=200)
    doomed_episodes = {e.index for e in doomed.episodes}
    assert summary["failures"] == len(doomed_episodes)
    stored = set(EpisodeStore(str(store)).episodes().column("source_episode_index").to_pylist())
    assert stored == set(range(18)) - doomed_episodes  # the others are all there...
    assert set(labelled_frames(out)["episode_index"].to_pylist()) == stored  # ...and labelled
    failures = EpisodeStore(str(store)).failures().to_pylist()
    assert {f["source_episode_index"] for f in failures} == doomed_episodes
    assert all(f["error"] == "PartitionFailed" and "IsADirectoryError" in f["reason"] for f in failures)
    # task-run states reach the API in batches after the flow returns: poll, do not read once
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=doomed.partition_id)))
            if [r.run_count for r in runs] == [3] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert [r.run_count for r in runs] == [3]  # first attempt + 2 retries


def test_two_concurrent_runs_do_not_corrupt_the_output(prefect_server, triton_server, tmp_path):
    out = tmp_path / "out"
    results, errors = {}, []

    def run(name):
        try:
            results[name] = run_nightly([METAWORLD_MINI], out, triton_server, partition_frames=150)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # one run did the work; the other waited for the output's slot and then found nothing new
    assert sorted(r["new"] for r in results.values()) == [False, True]
    frames = labelled_frames(out)
    assert frames.num_rows == len(set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))) == 524
    (store,) = (out / "stores").iterdir()
    assert EpisodeStore(str(store)).episodes().num_rows == 18


def test_ingest_and_relabel_flows_on_an_open_x_embodiment_dataset(prefect_server, triton_server, tmp_path):
    """flows/ingest.py and flows/relabel.py as a deployment would run them: the real RLDS
    fixture into a store, then labelled through Triton; a rerun of each does nothing new."""
    from conftest import FIXTURES
    from flows.ingest import ingest_flow
    from flows.relabel import relabel_flow

    bridge, store, labels = FIXTURES / "bridge_rlds_debug", tmp_path / "store", tmp_path / "labels"
    ingested = ingest_flow(source=str(bridge), store=str(store))
    assert (ingested["episodes_written"], ingested["frames_written"], ingested["failed"]) == (50, 500, 0)
    labelled = relabel_flow(source=str(store), dst=str(labels), triton_url=triton_server.grpc_url)
    assert (labelled["episodes_labelled"], labelled["frames_labelled"], labelled["failed"]) == (50, 500, 0)
    (version,) = [p for p in (labels / spec.VERSIONS_DIR).iterdir() if p.is_dir()]
    frames = pq.read_table(version / spec.FRAMES_DIR)
    assert frames.num_rows == 500 and len(set(frames.column("episode_id").to_pylist())) == 50
    before = files(labels)
    assert ingest_flow(source=str(bridge), store=str(store))["already_stored"] == 50
    assert relabel_flow(source=str(store), dst=str(labels), triton_url=triton_server.grpc_url)["already_labelled"] == 50
    assert files(labels) == before


def test_the_temporary_prefect_server_dies_with_a_killed_nightly(tmp_path):
    # `wvm nightly` without PREFECT_API_URL starts its own Prefect server (flows.runtime); a
    # kill -9 of the nightly must not leave that server running as an orphan.
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    script = "from flows.runtime import local_prefect_server\nimport time\nwith local_prefect_server() as url:\n    print(url, flush=True)\n    time.sleep(600)\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert urllib.request.urlopen(f"{url}/health", timeout=10).status == 200
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
            except OSError:
                break  # the server is gone
            time.sleep(0.5)
        else:
            pytest.fail(f"the Prefect server at {url} outlived its killed parent")
    finally:
        child.kill()


def served_windows(http: str) -> int | None:
    """Windows (inference_count) the wvm model of a Triton server has answered; None when the
    server does not answer."""
    try:
        with urllib.request.urlopen(f"{http}/v2/models/wvm/stats", timeout=2) as response:
            (model,) = json.load(response)["model_stats"]
    except OSError:
        return None
    return int(model.get("inference_count", 0))


class NightlyServe:
    """`wvm nightly SRC --out OUT --serve` as a subprocess on the test's Prefect server, watched:
    the tritonserver it starts (and that server's Python-backend stubs), the endpoints it
    announces, the most windows that server was seen to have answered. On exit it kills the
    CLI's process group and whatever of the server it started is left: nothing else."""

    def __init__(self, out: Path):
        from prefect.settings import PREFECT_API_URL

        cmd = [sys.executable, "-m", "wvm.cli", "nightly", str(METAWORLD_MINI), "--out", str(out), "--serve", "--workers", "1"]
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stdout, self.stderr = [], []
        self.readers = [threading.Thread(target=lambda s=s, l=l: l.extend(s), daemon=True)
                        for s, l in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]  # fmt: skip
        for reader in self.readers:
            reader.start()
        self.started = {}  # pid -> (psutil.Process, cmdline)
        self.endpoints, self.windows_seen = None, 0

    def __enter__(self) -> NightlyServe:
        return self

    def watch(self) -> None:
        """Look once at the CLI's process tree and at its server."""
        import psutil

        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                # a server's fork, caught before it execs its backend stub, is also named
                # tritonserver: it is the server's child, not a second server
                if child.pid not in self.started and child.name() == "tritonserver" and child.ppid() not in self.started:
                    self.started[child.pid] = (child, child.cmdline())
                if child.pid in self.started:
                    for stub in child.children(recursive=True):
                        self.started.setdefault(stub.pid, (stub, stub.cmdline()))
        except psutil.Error:  # a process that just ended
            pass
        if self.endpoints is None:
            ready = [line for line in list(self.stderr) if line.startswith("Triton ready: ")]
            self.endpoints = json.loads(ready[0].removeprefix("Triton ready: ")) if ready else None
        if self.endpoints is not None:
            self.windows_seen = max(self.windows_seen, served_windows(self.endpoints["http"]) or 0)

    def watch_until(self, done, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not done() and self.proc.poll() is None and time.monotonic() < deadline:
            self.watch()
            time.sleep(0.2)

    def server(self) -> list[str]:
        """The command line of the one tritonserver the CLI started, on the ports it announced."""
        assert self.endpoints is not None, "".join(self.stderr)[-4000:]
        # a process caught as it exits reports an empty command line
        servers = [cmdline for _, cmdline in self.started.values() if cmdline and Path(cmdline[0]).name == "tritonserver"]
        assert len(servers) == 1 and len(self.started) > 1  # the server and its Python-backend stub(s)
        assert f"--grpc-port={self.endpoints['grpc'].rsplit(':', 1)[1]}" in servers[0]
        return servers[0]

    def left(self) -> list[int]:
        """Pids of the server's processes still running."""
        import psutil

        return [p.pid for p, _ in self.started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def assert_server_gone(self) -> None:
        assert not self.left()
        assert served_windows(self.endpoints["http"]) is None
        for url in self.endpoints.values():  # nothing listens on its ports any more
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), timeout=2).close()

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for process, _ in self.started.values():  # only what this CLI run started
            if process.is_running():
                process.kill()


def test_nightly_serve_labels_through_its_own_triton_server_and_stops_it(prefect_server, shipped_checkpoint, tmp_path):
    """`wvm nightly --serve` (README, Nightly runs): the CLI starts a tritonserver of its own,
    labels through it, and leaves no server process behind."""
    out = tmp_path / "out"
    with NightlyServe(out) as run:
        run.watch_until(lambda: False)
        assert run.proc.wait(timeout=5) == 0, "".join(run.stderr)[-4000:]
        for reader in run.readers:
            reader.join(10)
        run.server()  # it started one tritonserver of its own, on the ports it announced...
        # ...and labelled every frame through it: that server answered at least the windows
        # relabel reports (plus one version probe per connection)
        summary = json.loads("".join(run.stdout))
        assert summary["new"] is True and summary["failures"] == 0
        (result,) = summary["sources"].values()
        assert result["relabel"]["episodes_labelled"] == 18 and result["relabel"]["frames_labelled"] == 524
        assert run.windows_seen >= result["relabel"]["windows"] >= 18
        assert labelled_frames(out).num_rows == 524
        shipped = json.loads((shipped_checkpoint / "config.json").read_text())["version"]
        assert result["model_key"].startswith(f"{shipped}-")  # the shipped model, as served
        assert json.loads((out / "latest.json").read_text())["run_id"] == summary["run_id"]
        run.assert_server_gone()  # the server it started is gone: no process left, ports closed


def test_a_killed_nightly_serve_takes_its_triton_server_with_it(prefect_server, tmp_path):
    """kill -9 of `wvm nightly --serve` while it labels: the tritonserver it started must not
    stay up as an orphan (it runs in a session of its own, so only the kernel can tell it)."""
    with NightlyServe(tmp_path / "out") as run:
        run.watch_until(lambda: run.windows_seen > 0)  # labelling through its server
        assert run.proc.poll() is None and run.windows_seen > 0, "".join(run.stderr)[-4000:]
        run.server()
        os.killpg(run.proc.pid, signal.SIGKILL)  # the CLI and its Dask workers; not the server's session
        run.proc.wait()
        deadline = time.monotonic() + 60  # a graceful stop takes at most --exit-timeout-secs=30
        while run.left() and time.monotonic() < deadline:
            time.sleep(0.5)
        run.assert_server_gone()
    out = tmp_path / "out"
    assert not (out / "latest.json").exists()  # killed while labelling: nothing was published
    with NightlyServe(out) as rerun:  # the next night resumes: ingest was done, labelling is redone
        rerun.watch_until(lambda: False)
        assert rerun.proc.wait(timeout=5) == 0, "".join(rerun.stderr)[-4000:]
        for reader in rerun.readers:
            reader.join(10)
        summary = json.loads("".join(rerun.stdout))
        (result,) = summary["sources"].values()
        assert (result["ingest"]["episodes_written"], result["ingest"]["already_stored"]) == (0, 18)
        assert result["relabel"]["episodes_labelled"] + result["relabel"]["already_labelled"] == 18
        frames = labelled_frames(out)
        assert frames.num_rows == len(set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))) == 524
        assert json.loads((out / "latest.json").read_text())["run_id"] == summary["run_id"]
