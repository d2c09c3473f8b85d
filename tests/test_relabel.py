"""Relabel end to end: outputs against schemas/, every frame labelled once, the RA-BC
sidecar, weights recomputed by hand, engines, object storage, crashes, model versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import METAWORLD_MINI, free_port, kill_midway_then_rerun
from pipelines.engines.base import LocalEngine
from pipelines.errors import WvmError
from pipelines.inference import ModelSpec
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.labels_store import LabelsError, LabelsStore
from pipelines.relabel import RelabelConfig, run_relabel
from pipelines.store import open_zarr_group
from schemas import labels as spec
from schemas.validate import conform
from wvm.checkpoint import CheckpointError
from wvm.serving.client import ModelVersionMismatch, ServerUnavailable

N_FRAMES = 524  # metaworld_mini


def relabel(src, dst, model=None, engine=None, **kwargs):
    config = RelabelConfig(source=str(src), dst=str(dst), model=model or ModelSpec(), **kwargs)
    return run_relabel(config, engine or LocalEngine(), progress=False)


def version_dir(dst: Path) -> Path:
    (key,) = LabelsStore(str(dst)).versions()
    return dst / spec.VERSIONS_DIR / key


def read_frames_table(version: Path):
    return pq.read_table(version / spec.FRAMES_DIR).sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])


def assert_same_outputs(a: dict, b: dict) -> None:
    """Equal, except that float labels may differ in the last bits: the CPU math libraries
    split work by the threads free at the moment, which changes float rounding (~1e-7, amplified by exp in w_awr)."""
    assert a.keys() == b.keys()
    for table in a:
        assert a[table].keys() == b[table].keys()
        for column, values in a[table].items():
            other = b[table][column]
            if values and isinstance(np.asarray(values).flat[0], (float, np.floating)) or column in ("progress",):
                np.testing.assert_allclose(np.asarray(values, dtype=float), np.asarray(other, dtype=float), rtol=1e-5, atol=2e-6, err_msg=f"{table}.{column}")
            else:
                assert values == other, f"{table}.{column}"


def outputs(dst: Path) -> dict:
    """The content of every consolidated output and the progress arrays, without run ids."""
    version = version_dir(dst)
    frames = read_frames_table(version).to_pandas()
    episodes = pq.read_table(version / spec.EPISODES_FILE).to_pandas()
    episodes = episodes.drop(columns=["run_id", "labelled_at", "progress_path"])
    sidecar = pq.read_table(version / spec.SIDECAR_FILE).to_pandas()
    progress = {}
    for row in pq.read_table(version / spec.EPISODES_FILE).to_pylist():
        group = open_zarr_group(str(version / row["progress_path"]), mode="r")
        values = group[spec.PROGRESS_ARRAY][row["progress_offset"] : row["progress_offset"] + row["length"]]
        progress[row["episode_id"]] = values.tolist()
    return {"frames": frames.to_dict("list"), "episodes": episodes.to_dict("list"), "sidecar": sidecar.to_dict("list"), "progress": progress}


@pytest.mark.slow
def test_relabel_through_triton_end_to_end(triton_server, tmp_path):
    summary = relabel(METAWORLD_MINI, tmp_path / "labels", ModelSpec(backend="triton", triton_url=triton_server.grpc_url))
    assert (summary.episodes_labelled, summary.frames_labelled, summary.failed) == (18, N_FRAMES, 0)
    version = version_dir(tmp_path / "labels")

    # every output conforms to schemas/
    frames = read_frames_table(version)
    conform(frames, spec.FRAMES, "frames")
    episodes = conform(pq.read_table(version / spec.EPISODES_FILE), spec.EPISODES, "episodes")
    assert episodes.num_rows == 18

    # every source frame labelled exactly once
    source = pq.read_table(METAWORLD_MINI / "data/chunk-000/file-000.parquet")
    keys = set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))
    assert frames.num_rows == len(keys) == N_FRAMES
    assert keys == set(zip(source["episode_index"].to_pylist(), source["frame_index"].to_pylist()))
    assert set(frames["model_version"].to_pylist()) == {summary.model_version}
    assert set(frames["checkpoint_hash"].to_pylist()) == {summary.checkpoint_hash}

    # the sidecar is what LeRobot reads: exact columns and dtypes, keyed like the source
    sidecar = pq.read_table(version / spec.SIDECAR_FILE)
    assert [(f.name, str(f.type)) for f in sidecar.schema] == [
        ("index", "int64"), ("episode_index", "int64"), ("frame_index", "int64"), ("progress_sparse", "float")
    ]  # fmt: skip
    assert sidecar["index"].to_pylist() == sorted(source["index"].to_pylist())
    published = pq.read_table(tmp_path / "labels" / spec.SIDECAR_FILE)
    assert published.equals(sidecar.replace_schema_metadata(published.schema.metadata))
    by_index = dict(zip(sidecar["index"].to_pylist(), sidecar["progress_sparse"].to_pylist()))
    np.testing.assert_allclose([by_index[i] for i in frames["index"].to_pylist()], frames["progress"].to_numpy())

    # advantages and weights, recomputed by hand from frames.parquet
    df = frames.to_pandas()
    horizon = json.loads((version / spec.MODEL_FILE).read_text())["advantage_horizon"]
    for _, group in df.groupby("episode_index"):
        v = group["progress"].to_numpy(np.float64)
        a = np.array([v[min(t + horizon - 1, len(v) - 1)] - v[t] for t in range(len(v))])
        np.testing.assert_allclose(group["advantage"], a, atol=1e-6)
        np.testing.assert_array_equal(group["w_binary"], (group["advantage"] >= 0).astype(np.float32))
        np.testing.assert_allclose(group["w_awr"], np.minimum(np.exp(10 * group["advantage"].to_numpy(np.float64)), 2.0), rtol=1e-5)
    cut = json.loads((version / spec.WEIGHTS_FILE).read_text())["top70_threshold"]
    np.testing.assert_array_equal(df["w_top70"], (df["advantage"] >= cut).astype(np.float32))
    kept = df["w_top70"].mean()
    assert 0.7 <= kept <= 0.7 + (df["advantage"] == cut).mean() + 0.01

    # the progress Zarr holds the same values, at the rows episodes.parquet points to
    for row in episodes.to_pylist():
        group = open_zarr_group(str(version / row["progress_path"]), mode="r")
        stored = group[spec.PROGRESS_ARRAY][row["progress_offset"] : row["progress_offset"] + row["length"]]
        np.testing.assert_allclose(stored, df[df.episode_id == row["episode_id"]]["progress"])
    latest = json.loads((tmp_path / "labels" / spec.LATEST_POINTER).read_text())
    assert latest["model_key"] == version.name


def test_store_source_is_aligned_and_incremental(tmp_path):
    store, labels = tmp_path / "store", tmp_path / "labels"
    ingest = lambda: run_ingest(IngestConfig(str(METAWORLD_MINI), str(store), partition_frames=150), LocalEngine(), progress=False)  # noqa: E731
    ingest()
    first = relabel(store, labels)
    assert first.episodes_labelled == 18
    version = version_dir(labels)
    # progress rows align with the episode store's partition rows
    from pipelines.store import EpisodeStore

    manifest = {r["episode_id"]: r for r in EpisodeStore(str(store)).episodes().to_pylist()}
    for row in pq.read_table(version / spec.EPISODES_FILE).to_pylist():
        assert row["progress_offset"] == manifest[row["episode_id"]]["offset"]
        group = open_zarr_group(str(version / row["progress_path"]), mode="r")
        assert group[spec.PROGRESS_ARRAY].shape[0] == EpisodeStore(str(store)).partition_rows(manifest[row["episode_id"]])
    # a rerun writes nothing
    before = {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()}
    again = relabel(store, labels)
    assert (again.episodes_labelled, again.already_labelled) == (0, 18)
    assert {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()} == before


def test_new_source_episodes_are_labelled_on_the_next_run(metaworld_copy, tmp_path):
    # hide the last 6 episodes from the source, label, then bring them back
    episodes_file = metaworld_copy / "meta/episodes/chunk-000/file-000.parquet"
    full = pq.read_table(episodes_file)
    pq.write_table(full.slice(0, 12), episodes_file)
    assert relabel(metaworld_copy, tmp_path / "labels").episodes_labelled == 12
    pq.write_table(full, episodes_file)
    summary = relabel(metaworld_copy, tmp_path / "labels")
    assert (summary.episodes_labelled, summary.already_labelled) == (6, 12)
    frames = read_frames_table(version_dir(tmp_path / "labels"))
    assert frames.num_rows == N_FRAMES
    assert len(set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))) == N_FRAMES


def test_a_second_model_version_leaves_the_first_untouched(tmp_path, other_checkpoint):
    labels = tmp_path / "labels"
    relabel(METAWORLD_MINI, labels)
    (first,) = LabelsStore(str(labels)).versions()
    before = {p: p.read_bytes() for p in (labels / spec.VERSIONS_DIR / first).rglob("*") if p.is_file()}
    second = relabel(METAWORLD_MINI, labels, ModelSpec(checkpoint=str(other_checkpoint)))
    assert second.model_key != first and sorted(LabelsStore(str(labels)).versions()) == sorted([first, second.model_key])
    after = {p: p.read_bytes() for p in (labels / spec.VERSIONS_DIR / first).rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((labels / spec.LATEST_POINTER).read_text())["model_key"] == second.model_key


@pytest.mark.slow
def test_dask_and_beam_give_identical_labels(tmp_path):
    from pipelines.engines.beam import BeamEngine
    from pipelines.engines.dask import DaskEngine

    with DaskEngine(workers=2) as engine:
        relabel(METAWORLD_MINI, tmp_path / "dask", engine=engine, partition_frames=150)
    with BeamEngine(workers=2) as engine:
        relabel(METAWORLD_MINI, tmp_path / "beam", engine=engine, partition_frames=150)
    dask, beam = outputs(tmp_path / "dask"), outputs(tmp_path / "beam")
    assert len(dask["frames"]["progress"]) == N_FRAMES
    assert_same_outputs(dask, beam)


@pytest.mark.slow
def test_kill_9_midway_then_rerun_gives_the_same_outputs(tmp_path):
    reference = tmp_path / "reference"
    relabel(METAWORLD_MINI, reference, partition_frames=60)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "wvm.cli", "relabel", str(METAWORLD_MINI), "--out", str(out), "--engine", "local",
           "--partition-frames", "60"]  # fmt: skip
    summary = kill_midway_then_rerun(cmd, out, f"{spec.VERSIONS_DIR}/*/{spec.EPISODE_PARTS_DIR}/*.parquet")
    assert summary["already_labelled"] >= 2 and summary["episodes_labelled"] > 0  # resumed mid-run
    assert_same_outputs(outputs(out), outputs(reference))


@pytest.mark.slow
def test_gcs_destination_against_emulator(gcs_emulator, tmp_path):
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=gcs_emulator, token="anon")
    fs.mkdir("wvm-labels")
    summary = relabel(METAWORLD_MINI, "gs://wvm-labels/mw", partition_frames=300)
    assert summary.frames_labelled == N_FRAMES
    again = relabel(METAWORLD_MINI, "gs://wvm-labels/mw", partition_frames=300)
    assert again.episodes_labelled == 0
    (key,) = LabelsStore("gs://wvm-labels/mw").versions()
    with fs.open(f"wvm-labels/mw/versions/{key}/{spec.SIDECAR_FILE}", "rb") as f:
        remote = pq.read_table(f)
    relabel(METAWORLD_MINI, tmp_path / "local", partition_frames=300)
    local = pq.read_table(version_dir(tmp_path / "local") / spec.SIDECAR_FILE)
    assert remote.equals(local)


# -- bad input ------------------------------------------------------------------------------


def test_checkpoint_that_does_not_match_its_config(tmp_path, shipped_checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shipped_checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())
    config["depth"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights do not match config.json .*missing"):
        relabel(METAWORLD_MINI, tmp_path / "labels", ModelSpec(checkpoint=str(broken)))
    assert not (tmp_path / "labels").exists()


def test_unreachable_triton_server(tmp_path):
    spec_ = ModelSpec(backend="triton", triton_url=f"127.0.0.1:{free_port()}", ready_timeout_s=2)
    with pytest.raises(ServerUnavailable, match=r"Triton at 127\.0\.0\.1:\d+ not ready after 2s"):
        relabel(METAWORLD_MINI, tmp_path / "labels", spec_)
    assert not (tmp_path / "labels").exists()  # nothing written before the model answered


@pytest.mark.slow
def test_triton_serving_another_model_version(triton_server, tmp_path):
    spec_ = ModelSpec(backend="triton", triton_url=triton_server.grpc_url, expected_version="wvm-some-other-version")
    with pytest.raises(ModelVersionMismatch, match="expected 'wvm-some-other-version'"):
        relabel(METAWORLD_MINI, tmp_path / "labels", spec_)


def test_destination_with_labels_of_an_unknown_schema_version(tmp_path):
    labels = tmp_path / "labels"
    relabel(METAWORLD_MINI, labels)
    version = version_dir(labels)
    before = {p: p.read_bytes() for p in labels.rglob("*") if p.is_file()}
    marker = json.loads((labels / spec.ROOT_MARKER).read_text())
    marker["schema_version"] = 99
    (labels / spec.ROOT_MARKER).write_text(json.dumps(marker))
    with pytest.raises(LabelsError, match="schema version 99"):
        relabel(METAWORLD_MINI, labels)
    after = {p: p.read_bytes() for p in labels.rglob("*") if p.is_file() and p.name != spec.ROOT_MARKER}
    assert after == {p: b for p, b in before.items() if p.name != spec.ROOT_MARKER}
    assert version.exists()


def test_destination_that_is_not_a_labels_directory(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "notes.txt").write_text("mine")
    with pytest.raises(WvmError, match="not a wvm labels directory"):
        relabel(METAWORLD_MINI, tmp_path / "labels")


# -- one writer per output (issue #14) ------------------------------------------------------


def test_an_episode_committed_twice_is_published_once(tmp_path):
    # Two runs with different partitioning can commit the same episode under two partition
    # ids (what two concurrent relabels did before the lease): finalize keeps one copy.
    labels = tmp_path / "labels"
    relabel(METAWORLD_MINI, labels, partition_frames=150)
    version = version_dir(labels)
    for directory in (spec.FRAMES_DIR, spec.SIDECAR_PARTS_DIR, spec.EPISODE_PARTS_DIR):  # commit record last
        first = sorted((version / directory).glob("part-*.parquet"))[0]
        (version / directory / "part-zz-other-run.parquet").write_bytes(first.read_bytes())
    relabel(METAWORLD_MINI, labels, partition_frames=150)
    sidecar = pq.read_table(version / spec.SIDECAR_FILE)
    assert sidecar.num_rows == N_FRAMES and len(set(sidecar.column("index").to_pylist())) == N_FRAMES
    assert read_frames_table(version).num_rows == N_FRAMES
    episodes = pq.read_table(version / spec.EPISODES_FILE)
    assert episodes.num_rows == 18 and len(set(episodes.column("episode_id").to_pylist())) == 18


def test_a_live_lease_refuses_a_second_writer_and_a_dead_one_is_taken_over(tmp_path):
    import socket
    import time

    from pipelines.lease import LEASE_FILE, OutputBusy

    labels = tmp_path / "labels"
    relabel(METAWORLD_MINI, labels)
    assert not (labels / LEASE_FILE).exists()  # released after the run
    before = {p: p.read_bytes() for p in labels.rglob("*") if p.is_file()}
    # held by a live process (this one) on another host, lease not yet expired
    (labels / LEASE_FILE).write_text(json.dumps({"host": "other-host", "pid": 4242, "purpose": "relabel", "expires_at": time.time() + 60}))
    with pytest.raises(OutputBusy, match=r"another wvm relabel is writing here \(host other-host, pid 4242\)"):
        relabel(METAWORLD_MINI, labels, partition_frames=60)
    assert {p: p.read_bytes() for p in labels.rglob("*") if p.is_file() and p.name != LEASE_FILE} == before
    # its holder was killed on this machine: taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    (labels / LEASE_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "expires_at": time.time() + 60}))
    assert relabel(METAWORLD_MINI, labels).already_labelled == 18
    # an expired lease of another host is taken over too
    (labels / LEASE_FILE).write_text(json.dumps({"host": "other-host", "pid": 4242, "expires_at": time.time() - 1}))
    assert relabel(METAWORLD_MINI, labels).already_labelled == 18
    assert not (labels / LEASE_FILE).exists()


@pytest.mark.slow
def test_two_relabels_into_one_output_label_every_frame_once(tmp_path):
    out = tmp_path / "labels"
    cmd = [sys.executable, "-m", "wvm.cli", "relabel", str(METAWORLD_MINI), "--out", str(out), "--engine", "local"]
    procs = [subprocess.Popen([*cmd, "--partition-frames", frames], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for frames in ("60", "300")]  # fmt: skip
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, stderr in results:  # the loser, if they overlapped, says why and names the output
        assert code == 0 or ("another wvm relabel is writing here" in stderr and str(out) in stderr), stderr
    sidecar = pq.read_table(out / spec.SIDECAR_FILE)
    assert sidecar.num_rows == N_FRAMES and len(set(sidecar.column("index").to_pylist())) == N_FRAMES
    assert read_frames_table(version_dir(out)).num_rows == N_FRAMES
