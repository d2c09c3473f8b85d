"""Ingest of real LeRobot datasets into the episode store: content, idempotence, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import G1_V21, METAWORLD_MINI, ROOT, kill_midway_then_rerun, object_versions, rewrite_episode_table
from pipelines.engines.base import LocalEngine
from pipelines.errors import DatasetError, EpisodeError
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.store import EpisodeStore
from schemas import episode_store as layout


def ingest(src, out, on_error="fail", engine=None, **kwargs):
    config = IngestConfig(source=str(src), store=str(out), on_error=on_error, **kwargs)
    return run_ingest(config, engine or LocalEngine(), progress=False)


def pyav_frames(path: Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(presentation times, frames) of every frame of a video, decoded with plain PyAV and
    area-resized to `size` (height, width) when given."""
    times, frames = [], []
    resize = {"height": size[0], "width": size[1], "interpolation": "AREA"} if size else {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(format="rgb24", **resize))
    return np.array(times), frames


def store_content(url: str) -> dict:
    """Everything a store holds, keyed by source episode index, without run-specific fields."""
    store = EpisodeStore(url)
    content = {}
    for row in store.episodes().to_pylist():
        table = store.read_table(row)
        digest = hashlib.sha256()
        for camera in row["cameras"]:
            digest.update(store.read_frames(row, camera).tobytes())
        content[row["source_episode_index"]] = {
            "frames": digest.hexdigest(),
            "table": [None if v is None else v.tolist() for v in table.__dict__.values()],
            "meta": {k: row[k] for k in ("task", "embodiment", "fps", "length", "cameras", "fingerprint")},
        }
    return content


def check_against_source(store_url: str, dataset: Path, video_file_for, stored_size: dict | None = None) -> None:
    """Every stored frame equals the plain PyAV decode at its timestamp (at the stored size:
    `stored_size` camera -> (height, width), default the source's); tables and metadata are
    carried over exactly."""
    stored_size = stored_size or {}
    info = json.loads((dataset / "meta" / "info.json").read_text())
    store = EpisodeStore(store_url)
    rows = store.episodes().to_pylist()
    assert len(rows) == info["total_episodes"]
    assert sum(r["length"] for r in rows) == info["total_frames"]
    decoded: dict[Path, dict] = {}
    for row in rows:
        assert row["embodiment"] == info["robot_type"]
        assert row["fps"] == info["fps"]
        table = store.read_table(row)
        np.testing.assert_array_equal(table.frame_index, np.arange(row["length"]))
        for camera in row["cameras"]:
            path, start = video_file_for(row["source_episode_index"], camera)
            if path not in decoded:
                decoded = {path: pyav_frames(path, stored_size.get(camera))}  # one file in memory at a time
            times, video = decoded[path]
            frames = store.read_frames(row, camera)
            assert frames.shape[0] == row["length"]
            assert frames.shape[1:3] == video[0].shape[:2]
            for i, ts in enumerate(table.timestamp):
                nearest = int(np.argmin(np.abs(times - (start + ts))))
                assert abs(times[nearest] - (start + ts)) < 1e-4
                np.testing.assert_array_equal(frames[i], video[nearest], err_msg=f"episode {row['source_episode_index']} frame {i}")


def test_metaworld_v3_every_frame_matches_pyav(tmp_path):
    summary = ingest(METAWORLD_MINI, tmp_path / "store")
    assert (summary.episodes_written, summary.frames_written, summary.failed) == (18, 524, 0)
    episodes = pq.read_table(METAWORLD_MINI / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "observation.images.corner"

    def video(index, camera):
        e = episodes[index]
        return METAWORLD_MINI / f"videos/{camera}/chunk-000/file-000.mp4", e[f"videos/{camera}/from_timestamp"]

    check_against_source(str(tmp_path / "store"), METAWORLD_MINI, video)
    rows = {r["source_episode_index"]: r for r in EpisodeStore(str(tmp_path / "store")).episodes().to_pylist()}
    assert rows[0]["task"] == "drawer open" and rows[7]["task"] == "button press" and rows[17]["task"] == "pick place"
    assert rows[0]["cameras"] == [key]
    # state and action are carried exactly
    data = pq.read_table(METAWORLD_MINI / "data/chunk-000/file-000.parquet").to_pandas()
    ep5 = data[data.episode_index == 5]
    stored = EpisodeStore(str(tmp_path / "store")).read_table(rows[5])
    np.testing.assert_array_equal(stored.state, np.stack(ep5["observation.state"]))
    np.testing.assert_array_equal(stored.index, ep5["index"].to_numpy())


def test_g1_v21_real_robot_every_frame_matches_pyav(tmp_path):
    summary = ingest(G1_V21, tmp_path / "store", partition_frames=800)
    assert (summary.episodes_written, summary.frames_written) == (8, 2868)
    assert summary.partitions > 1

    def video(index, camera):
        return G1_V21 / f"videos/chunk-000/{camera}/episode_{index:06d}.mp4", 0.0

    # 480x640 cameras are stored at the default --max-side 128, aspect kept
    info = json.loads((G1_V21 / "meta" / "info.json").read_text())
    cameras = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    assert all(info["features"][c]["shape"][:2] == [480, 640] for c in cameras)
    check_against_source(str(tmp_path / "store"), G1_V21, video, stored_size=dict.fromkeys(cameras, (96, 128)))
    # storable at scale: the store is at most twice the AV1 source (benchmarks/store_size.py)
    size = lambda root: sum(p.stat().st_size for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert size(tmp_path / "store") <= 2 * size(G1_V21)
    store = EpisodeStore(str(tmp_path / "store"))
    row = store.episodes().to_pylist()[3]
    assert row["task"] == "Pick up the yellow bottle on the table."
    assert row["embodiment"] == "Unitree_G1_Inspire"
    assert (row["state_dim"], row["action_dim"]) == (26, 26)
    # data columns and timestamps are the source parquet's, exactly
    data = pq.read_table(G1_V21 / "data/chunk-000/episode_000003.parquet").to_pandas()
    stored = store.read_table(row)
    np.testing.assert_array_equal(stored.timestamp, data["timestamp"].to_numpy(np.float64))
    np.testing.assert_array_equal(stored.state, np.stack(data["observation.state"]).astype(np.float32))
    np.testing.assert_array_equal(stored.action, np.stack(data["action"]).astype(np.float32))
    np.testing.assert_array_equal(stored.index, data["index"].to_numpy())


def test_resize_and_camera_selection(tmp_path):
    from pipelines.stages.ingest import DecodeOptions

    ingest(METAWORLD_MINI, tmp_path / "store", decode=DecodeOptions(resize=(48, 64)))
    store = EpisodeStore(str(tmp_path / "store"))
    row = store.episodes().to_pylist()[0]
    assert store.read_frames(row, "observation.images.corner").shape == (row["length"], 48, 64, 3)
    with pytest.raises(EpisodeError, match="not in dataset"):
        ingest(METAWORLD_MINI, tmp_path / "other", decode=DecodeOptions(cameras=("observation.images.wrist",)))


def test_rerun_writes_nothing(tmp_path):
    out = tmp_path / "store"
    ingest(METAWORLD_MINI, out, partition_frames=100)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    summary = ingest(METAWORLD_MINI, out, partition_frames=100)
    assert (summary.episodes_written, summary.already_stored, summary.partitions) == (0, 18, 0)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_changed_episode_is_reingested(metaworld_copy, tmp_path):
    out = tmp_path / "store"
    ingest(metaworld_copy, out)
    episodes_file = metaworld_copy / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(episodes_file)
    tasks = table["tasks"].to_pylist()
    tasks[4] = ["drawer open slowly"]
    table = table.set_column(table.schema.get_field_index("tasks"), "tasks", pa.array(tasks, table.schema.field("tasks").type))
    pq.write_table(table, episodes_file)
    summary = ingest(metaworld_copy, out)
    # only the data/videos shared by all episodes are unchanged; the one edited record changed
    assert summary.episodes_written == 1 and summary.already_stored == 17
    rows = {r["source_episode_index"]: r for r in EpisodeStore(str(out)).episodes().to_pylist()}
    assert len(rows) == 18 and rows[4]["task"] == "drawer open slowly"


# -- bad input ------------------------------------------------------------------------------


def test_missing_info_json_or_path_is_not_a_dataset_and_nothing_is_written(metaworld_copy, tmp_path):
    (metaworld_copy / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json: meta/info\.json is missing"):
        ingest(metaworld_copy, tmp_path / "store")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match=r"plain: not a dataset wvm can read\. Formats read: LeRobot .*RLDS"):
        ingest(tmp_path / "plain", tmp_path / "store")
    with pytest.raises(DatasetError, match=r"nowhere: no such file or directory"):
        ingest(tmp_path / "nowhere", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_unknown_codebase_version(metaworld_copy, tmp_path):
    info = json.loads((metaworld_copy / "meta/info.json").read_text())
    info["codebase_version"] = "v4.2"
    (metaworld_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json.*unsupported LeRobot codebase_version 'v4\.2'"):
        ingest(metaworld_copy, tmp_path / "store")


def _only_episode_failed(out: Path, episode: int, reason: str, total: int = 8) -> None:
    """The dead-letter table names exactly `episode` with `reason`; all others are stored."""
    store = EpisodeStore(str(out))
    failures = store.failures().to_pylist()
    assert [f["source_episode_index"] for f in failures] == [episode]
    assert reason in failures[0]["reason"], failures[0]["reason"]
    stored = sorted(store.episodes().column("source_episode_index").to_pylist())
    assert stored == [i for i in range(total) if i != episode]


def test_missing_video_is_skipped_into_failures(g1_small, tmp_path):
    video = g1_small / "videos/chunk-000/observation.images.cam_high/episode_000003.mp4"
    video.unlink()
    summary = ingest(g1_small, tmp_path / "store", on_error="skip")
    assert summary.failed == 1 and summary.episodes_written == 7
    _only_episode_failed(tmp_path / "store", 3, "video file for camera 'observation.images.cam_high' is missing")
    assert EpisodeStore(str(tmp_path / "store")).failures().to_pylist()[0]["file"].endswith("episode_000003.mp4")


def test_missing_video_fails_with_clear_error(g1_small, tmp_path):
    (g1_small / "videos/chunk-000/observation.images.cam_high/episode_000007.mp4").unlink()
    with pytest.raises(EpisodeError) as info:
        ingest(g1_small, tmp_path / "store", partition_frames=48)
    assert "episode_000007.mp4: episode 7: video file" in str(info.value)
    # partitions finished before the failure stay committed, and the failure is recorded
    store = EpisodeStore(str(tmp_path / "store"))
    assert sorted(store.episodes().column("source_episode_index").to_pylist()) == [0, 1, 2, 3, 4, 5]
    assert store.failures().column("source_episode_index").to_pylist() == [7]


def test_corrupt_video(g1_small, tmp_path):
    video = g1_small / "videos/chunk-000/observation.images.cam_high/episode_000002.mp4"
    data = bytearray(video.read_bytes())
    data[: len(data) // 2] = os.urandom(len(data) // 2)  # header and first frames destroyed
    video.write_bytes(bytes(data))
    ingest(g1_small, tmp_path / "store", on_error="skip")
    failure = EpisodeStore(str(tmp_path / "store")).failures().to_pylist()[0]
    assert failure["source_episode_index"] == 2 and failure["file"].endswith("episode_000002.mp4")
    assert "video" in failure["reason"]
    _only_episode_failed(tmp_path / "store", 2, "")


def test_timestamps_that_do_not_match_the_video(metaworld_copy, tmp_path):
    def shift(table):
        ts = table["timestamp"].to_numpy() + 0.013  # between two frames at 20 fps
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(ts, pa.float32()))

    rewrite_episode_table(metaworld_copy, 5, shift)
    with pytest.raises(EpisodeError, match=r"file-000\.mp4: episode 5: timestamps do not match the video"):
        ingest(metaworld_copy, tmp_path / "fail")
    ingest(metaworld_copy, tmp_path / "store", on_error="skip")
    _only_episode_failed(tmp_path / "store", 5, "timestamps do not match the video", total=18)


def test_nan_timestamp_is_reported_at_its_frame(g1_small, tmp_path):
    def nan_at_7(table):
        ts = table["timestamp"].to_numpy().copy()
        ts[7] = np.nan
        return table.set_column(table.schema.get_field_index("timestamp"), "timestamp", pa.array(ts, table.schema.field("timestamp").type))

    rewrite_episode_table(g1_small, 2, nan_at_7)
    with pytest.raises(EpisodeError, match=r"episode_000002\.parquet: episode 2: timestamp of frame 7 is nan"):
        ingest(g1_small, tmp_path / "fail")


def test_fps_that_disagrees_with_the_timestamps(g1_small, tmp_path):
    info = json.loads((g1_small / "meta/info.json").read_text())
    declared = info["fps"]
    info["fps"] = declared * 3
    (g1_small / "meta/info.json").write_text(json.dumps(info))
    message = rf"timestamps advance 0\.\d+s per frame \(median\) but the dataset declares {declared * 3:g} fps"
    with pytest.raises(EpisodeError, match=message):
        ingest(g1_small, tmp_path / "fail")
    # relabelling straight from the dataset reads it through the same reader: refused the same way
    from pipelines.relabel import RelabelConfig, run_relabel

    with pytest.raises(EpisodeError, match=message):
        run_relabel(RelabelConfig(source=str(g1_small), dst=str(tmp_path / "labels")), LocalEngine(), progress=False)


def test_empty_episode(g1_small, tmp_path):
    rewrite_episode_table(g1_small, 4, lambda table: table.slice(0, 0))
    episodes = [json.loads(l) for l in (g1_small / "meta/episodes.jsonl").read_text().splitlines()]
    episodes[4]["length"] = 0
    (g1_small / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    with pytest.raises(EpisodeError, match=r"episode_000004\.parquet: episode 4: episode is empty"):
        ingest(g1_small, tmp_path / "fail")
    ingest(g1_small, tmp_path / "store", on_error="skip")
    _only_episode_failed(tmp_path / "store", 4, "episode is empty")


def test_feature_shape_disagrees_with_info_json(g1_small, tmp_path):
    def drop_last_joint(table):
        state = [row[:-1] for row in table["observation.state"].to_pylist()]
        i = table.schema.get_field_index("observation.state")
        return table.set_column(i, "observation.state", pa.array(state, table.schema.field(i).type))

    rewrite_episode_table(g1_small, 6, drop_last_joint)
    ingest(g1_small, tmp_path / "store", on_error="skip")
    _only_episode_failed(
        tmp_path / "store", 6, "feature 'observation.state' has 25 values at frame 0 but meta/info.json declares 26"
    )


def test_video_size_disagrees_with_info_json(g1_small, tmp_path):
    info = json.loads((g1_small / "meta/info.json").read_text())
    info["features"]["observation.images.cam_high"]["shape"] = [240, 320, 3]
    (g1_small / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(EpisodeError, match=r"video frames are 480x640 but the dataset declares 240x320"):
        ingest(g1_small, tmp_path / "store")
    from pipelines.relabel import RelabelConfig, run_relabel  # relabel reads through the same reader

    with pytest.raises(EpisodeError, match=r"video frames are 480x640 but the dataset declares 240x320"):
        run_relabel(RelabelConfig(source=str(g1_small), dst=str(tmp_path / "labels")), LocalEngine(), progress=False)


def test_failure_is_cleared_once_the_episode_is_fixed(g1_small, tmp_path):
    video = g1_small / "videos/chunk-000/observation.images.cam_high/episode_000001.mp4"
    backup = video.read_bytes()
    video.unlink()
    ingest(g1_small, tmp_path / "store", on_error="skip")
    assert EpisodeStore(str(tmp_path / "store")).failures().num_rows == 1
    video.write_bytes(backup)
    summary = ingest(g1_small, tmp_path / "store", on_error="skip")
    assert summary.episodes_written == 1
    store = EpisodeStore(str(tmp_path / "store"))
    assert store.failures().num_rows == 0 and store.episodes().num_rows == 8


# -- engines, crashes, object storage ---------------------------------------------------------


@pytest.mark.slow
def test_dask_and_beam_produce_identical_stores(tmp_path):
    from pipelines.engines.beam import BeamEngine
    from pipelines.engines.dask import DaskEngine

    with DaskEngine(workers=2) as engine:
        ingest(METAWORLD_MINI, tmp_path / "dask", engine=engine, partition_frames=150)
    with BeamEngine(workers=2) as engine:
        ingest(METAWORLD_MINI, tmp_path / "beam", engine=engine, partition_frames=150)
    local = ingest(METAWORLD_MINI, tmp_path / "local", partition_frames=150)
    assert local.partitions == 4
    content = store_content(str(tmp_path / "dask"))
    assert len(content) == 18
    assert content == store_content(str(tmp_path / "beam")) == store_content(str(tmp_path / "local"))


@pytest.mark.slow
def test_beam_options_reach_beam_from_the_cli(tmp_path):
    def wvm_ingest(out, *options):
        cmd = [sys.executable, "-m", "wvm.cli", "ingest", str(METAWORLD_MINI), "--out", str(out), "--engine", "beam",
               "--partition-frames", "200", *(f"--beam-option={o}" for o in options)]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    done = wvm_ingest(tmp_path / "direct", "--runner=BundleBasedDirectRunner", "--direct_num_workers=1")
    assert done.returncode == 0, done.stderr[-3000:]
    ingest(METAWORLD_MINI, tmp_path / "local", partition_frames=200)
    assert store_content(str(tmp_path / "direct")) == store_content(str(tmp_path / "local"))
    # an option Beam cannot use is refused in words before anything is written
    refused = wvm_ingest(tmp_path / "refused", "--runner=NoSuchRunner")
    assert refused.returncode == 1 and "Unexpected pipeline runner: NoSuchRunner" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_kill_9_midway_then_resume_gives_the_same_store(tmp_path):
    reference = tmp_path / "reference"
    ingest(G1_V21, reference, partition_frames=300)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "wvm.cli", "ingest", str(G1_V21), "--out", str(out), "--engine", "dask",
           "--workers", "2", "--partition-frames", "300"]  # fmt: skip
    summary = kill_midway_then_rerun(cmd, out / layout.MANIFEST_DIR, "*.parquet")
    assert summary["already_stored"] >= 2 and summary["already_stored"] + summary["episodes_written"] == 8
    assert store_content(str(out)) == store_content(str(reference))
    assert EpisodeStore(str(out)).episodes().num_rows == 8  # no duplicates


@pytest.mark.slow
def test_gcs_end_to_end_against_emulator(gcs_emulator, tmp_path):
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=gcs_emulator, token="anon")
    fs.mkdir("wvm-test")
    fs.put(str(METAWORLD_MINI), "wvm-test/datasets/metaworld_mini", recursive=True)
    summary = ingest("gs://wvm-test/datasets/metaworld_mini", "gs://wvm-test/stores/mw", partition_frames=200)
    assert summary.episodes_written == 18
    before = object_versions(fs, "wvm-test/stores/mw")
    again = ingest("gs://wvm-test/datasets/metaworld_mini", "gs://wvm-test/stores/mw", partition_frames=200)
    assert again.episodes_written == 0 and again.already_stored == 18
    assert object_versions(fs, "wvm-test/stores/mw") == before  # the rerun rewrote no object
    ingest(METAWORLD_MINI, tmp_path / "local", partition_frames=200)
    remote, local = store_content("gs://wvm-test/stores/mw"), store_content(str(tmp_path / "local"))
    for content in (remote, local):
        for episode in content.values():
            episode["meta"].pop("fingerprint")  # depends on the files' checksums vs mtimes
    assert remote == local
    row = EpisodeStore("gs://wvm-test/stores/mw").episodes().to_pylist()[0]
    assert row["source_uri"] == "gs://wvm-test/datasets/metaworld_mini"


# -- hostile metadata (issue #14): a clear error naming the file, nothing read from outside --


def test_empty_task_text_fails_only_its_episode(metaworld_copy, tmp_path):
    path = metaworld_copy / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    tasks = table.column("tasks").to_pylist()
    tasks[0] = [" "]  # episode 0's task text is blank
    pq.write_table(table.set_column(table.schema.get_field_index("tasks"), "tasks", pa.array(tasks, table.schema.field("tasks").type)), path)
    with pytest.raises(EpisodeError, match=r"tasks\.parquet: episode 0: episode has no task text"):
        ingest(metaworld_copy, tmp_path / "fail")
    summary = ingest(metaworld_copy, tmp_path / "store", on_error="skip")
    assert summary.failed == 1
    _only_episode_failed(tmp_path / "store", 0, "no task text", total=18)


def test_duplicated_episode_index_is_refused(g1_small, tmp_path):
    lines = (g1_small / "meta/episodes.jsonl").read_text().splitlines()
    record = json.loads(lines[5])
    record["episode_index"] = 2
    lines[5] = json.dumps(record)
    (g1_small / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"meta: episode index\(es\) \[2\] appear more than once"):
        ingest(g1_small, tmp_path / "store", on_error="skip")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("template", ["../outside/episode_{episode_index:06d}.parquet", "/etc/episode_{episode_index:06d}.parquet"])
def test_path_templates_that_leave_the_dataset_are_refused(g1_small, tmp_path, template):
    secret = g1_small.parent / "outside" / "episode_000000.parquet"
    secret.parent.mkdir()
    secret.write_bytes((g1_small / "data/chunk-000/episode_000000.parquet").read_bytes())
    info = json.loads((g1_small / "meta/info.json").read_text())
    info["data_path"] = template
    (g1_small / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: data_path .* outside the dataset"):
        ingest(g1_small, tmp_path / "store", on_error="skip")
    assert not (tmp_path / "store").exists()


def test_metadata_that_is_not_utf8(g1_small, tmp_path):
    path = g1_small / "meta/tasks.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"task": "', b'"task": "\xff\xfe'))
    with pytest.raises(DatasetError, match=r"tasks\.jsonl: metadata file is not UTF-8 text"):
        ingest(g1_small, tmp_path / "store")


def test_an_absurd_claimed_length_fails_only_its_episode(metaworld_copy, tmp_path):
    path = metaworld_copy / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    lengths = table.column("length").to_pylist()
    lengths[3] = 10**12  # the metadata claims a trillion frames
    pq.write_table(table.set_column(table.schema.get_field_index("length"), "length", pa.array(lengths, table.schema.field("length").type)), path)
    summary = ingest(metaworld_copy, tmp_path / "store", on_error="skip", partition_frames=150)
    assert summary.failed == 1
    _only_episode_failed(tmp_path / "store", 3, "episode metadata says length 1000000000000", total=18)


def test_one_ingest_per_store_at_a_time(tmp_path):
    import time

    from pipelines.lease import LEASE_FILE, OutputBusy

    store = tmp_path / "store"
    ingest(METAWORLD_MINI, store, partition_frames=150)
    assert not (store / LEASE_FILE).exists()  # released after the run
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    (store / LEASE_FILE).write_text(json.dumps({"host": "other-host", "pid": 4242, "purpose": "ingest", "expires_at": time.time() + 60}))
    with pytest.raises(OutputBusy, match=r"another wvm ingest is writing here \(host other-host, pid 4242\)"):
        ingest(METAWORLD_MINI, store, partition_frames=60)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != LEASE_FILE} == before
    (store / LEASE_FILE).write_text(json.dumps({"host": "other-host", "pid": 4242, "expires_at": time.time() - 1}))
    assert ingest(METAWORLD_MINI, store, partition_frames=60).already_stored == 18  # expired: taken over


def test_a_source_that_is_not_a_dataset_leaves_no_store(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        ingest(tmp_path / "empty", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_attempts_left_by_a_failed_run_are_swept_by_the_rerun(g1_small, tmp_path):
    video = g1_small / "videos/chunk-000/observation.images.cam_high/episode_000007.mp4"
    saved = video.read_bytes()
    video.unlink()
    store = tmp_path / "store"
    with pytest.raises(EpisodeError):
        ingest(g1_small, store, partition_frames=48)
    attempts = lambda: sorted(p.relative_to(store).as_posix() for p in (store / layout.PARTITIONS_DIR).glob("*/*") if p.is_dir())  # noqa: E731
    left = attempts()
    committed = set(EpisodeStore(str(store)).episodes().column("partition_path").to_pylist())
    assert set(left) - committed  # the failed partition's attempt was left behind
    video.write_bytes(saved)
    ingest(g1_small, store, partition_frames=48)
    assert attempts() == sorted(set(EpisodeStore(str(store)).episodes().column("partition_path").to_pylist()))
