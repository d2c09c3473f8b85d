"""The RLDS and raw-folder readers, on real files: the Bridge RLDS debug set (and damaged copies
of it) and raw datasets written with the module's own writer; and the LeRobot v3 writer's video
encoder threads."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_iterator

from conftest import FIXTURES, G1_V21, copy_dataset
from pipelines.errors import DatasetError, EpisodeError
from pipelines.sources import open_source
from pipelines.sources.raw import RawSource, write_raw_dataset_info, write_raw_episode
from pipelines.sources.rlds import RLDSSource, write_records

BRIDGE = FIXTURES / "bridge_rlds_debug"
BUILDER = BRIDGE / "1.0.0"
TRAIN = "bridge_dataset-train.tfrecord-00000-of-00001"
VAL = "bridge_dataset-val.tfrecord-00000-of-00001"


def examples(shard: Path) -> list[example_pb2.Example]:
    """The shard's Examples, framed by the tfrecord package's own reader (not ours)."""
    parsed = []
    for record in tfrecord_iterator(str(shard)):
        example = example_pb2.Example()
        example.ParseFromString(bytes(record))
        parsed.append(example)
    return parsed


def values(example: example_pb2.Example, key: str) -> list:
    feature = example.features.feature[key]
    return list(getattr(feature, feature.WhichOneof("kind")).value)


def record_offsets(shard: Path) -> list[int]:
    data, offsets, offset = shard.read_bytes(), [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + int.from_bytes(data[offset : offset + 8], "little")
    return offsets


# -- RLDS -------------------------------------------------------------------------------------


def test_rlds_detect():
    assert RLDSSource.detect(str(BRIDGE)) and RLDSSource.detect(str(BUILDER))
    assert not RLDSSource.detect(str(G1_V21))
    assert not RLDSSource.detect(str(FIXTURES / "no_such_dataset"))
    assert isinstance(open_source(str(BRIDGE)), RLDSSource)


def test_rlds_lists_the_bridge_episodes():
    source = RLDSSource(str(BRIDGE))
    assert (source.version, source.source_format, source.embodiment, source.fps) == ("1.0.0", "rlds/1.0.0", "bridge_dataset", 5.0)
    assert source.cameras == ["image_0", "image_1", "image_2", "image_3"] and source.default_camera() == "image_0"
    assert source.camera_shape("image_0") == (64, 64) and source.feature_dim("state") == 7 and source.feature_dim("action") == 7
    assert RLDSSource(str(BUILDER)).uri == source.uri == BUILDER.resolve().as_uri()
    assert RLDSSource(str(BRIDGE), fps=12).fps == 12.0

    episodes = source.episodes()
    truth = examples(BUILDER / TRAIN) + examples(BUILDER / VAL)  # splits in dataset_info.json order
    assert len(episodes) == len(truth) == 50
    assert [e.index for e in episodes] == list(range(50))
    assert [e.file.rsplit("/", 1)[-1] for e in episodes] == [TRAIN] * 25 + [VAL] * 25
    for episode, example in zip(episodes, truth, strict=True):
        instruction = values(example, "steps/language_instruction")[0].decode()
        assert episode.task == instruction and episode.task.strip()
        assert episode.length == len(values(example, "steps/is_first")) == 10
    assert len({e.fingerprint for e in episodes}) == 50
    assert [e.fingerprint for e in source.episodes()] == [e.fingerprint for e in episodes]
    assert all(a.fingerprint != b.fingerprint for a, b in zip(episodes, source.episodes(decode_options="resize=32"), strict=True))


def test_rlds_reads_tables_and_decodes_the_stored_jpegs():
    source = RLDSSource(str(BRIDGE))
    episode = source.episodes()[27]  # the val shard's third episode
    example = examples(BUILDER / VAL)[2]
    table = source.read_frames(episode)
    assert len(table) == 10
    np.testing.assert_allclose(table.timestamp, np.arange(10) / 5.0)
    assert np.array_equal(table.frame_index, np.arange(10)) and np.array_equal(table.index, np.arange(10))
    assert table.state.shape == table.action.shape == (10, 7) and table.state.dtype == np.float32
    np.testing.assert_array_equal(table.state, np.float32(values(example, "steps/observation/state")).reshape(10, 7))
    np.testing.assert_array_equal(table.action, np.float32(values(example, "steps/action")).reshape(10, 7))

    jpegs = values(example, "steps/observation/image_0")
    frames = list(source.decode(episode, "image_0", table, np.arange(10)))
    for frame, jpeg in zip(frames, jpegs, strict=True):
        assert frame.dtype == np.uint8 and frame.shape == (64, 64, 3)
        np.testing.assert_array_equal(frame, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    rows = np.array([1, 4, 9])
    small = list(source.decode(episode, "image_1", table, rows, size=(32, 48)))
    jpegs = values(example, "steps/observation/image_1")
    for frame, row in zip(small, rows, strict=True):
        want = Image.open(io.BytesIO(jpegs[row])).convert("RGB").resize((48, 32), Image.Resampling.BOX)
        np.testing.assert_array_equal(frame, np.asarray(want))


def test_rlds_missing_metadata_and_shards(tmp_path):
    copy = copy_dataset(BRIDGE, tmp_path / "bridge")
    (copy / "1.0.0" / "features.json").unlink()
    assert not RLDSSource.detect(str(copy / "1.0.0"))
    with pytest.raises(DatasetError, match="features.json is missing") as err:
        RLDSSource(str(copy / "1.0.0"))
    assert err.value.file.endswith("1.0.0/features.json")
    for url in (copy, copy / "1.0.0"):  # what `wvm ingest` says: the same file, not "not a dataset"
        with pytest.raises(DatasetError, match="features.json is missing") as err:
            open_source(str(url))
        assert err.value.file.endswith("1.0.0/features.json")

    copy = copy_dataset(BRIDGE, tmp_path / "bridge2")
    (copy / "1.0.0" / VAL).unlink()
    with pytest.raises(DatasetError, match="shard named by dataset_info.json is missing") as err:
        RLDSSource(str(copy)).episodes()
    assert err.value.file.endswith(VAL)


def test_rlds_listing_reads_only_new_or_changed_shards(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("WVM_LISTING_CACHE", str(tmp_path / "cache"))
    copy = copy_dataset(BRIDGE, tmp_path / "bridge")
    scanned, scan = [], RLDSSource._scan

    def counting(self, shard, expected):
        scanned.append(shard.rsplit("/", 1)[-1])
        yield from scan(self, shard, expected)

    monkeypatch.setattr(RLDSSource, "_scan", counting)
    listed = lambda: [(e.index, e.length, e.task, e.fingerprint, e.locator) for e in RLDSSource(str(copy)).episodes()]  # noqa: E731
    first = listed()
    assert sorted(scanned) == sorted([TRAIN, VAL]) and len(first) == 50
    scanned.clear()
    assert listed() == first and scanned == []  # a second run reads no shard
    os.utime(copy / "1.0.0" / VAL, ns=(1, 1))  # the val shard rewritten (new token)
    again = listed()
    assert scanned == [VAL]
    assert [e[:3] + e[4:] for e in again] == [e[:3] + e[4:] for e in first]  # same episodes, new fingerprints for val
    assert sum(a[3] != b[3] for a, b in zip(again, first)) == sum(e[4].shard.endswith(VAL) for e in first) > 0


def test_rlds_damaged_shards(tmp_path):
    copy = copy_dataset(BRIDGE, tmp_path / "bridge")
    shard = copy / "1.0.0" / TRAIN
    offsets = record_offsets(BUILDER / TRAIN)
    data = (BUILDER / TRAIN).read_bytes()

    # the shard's last record cut short: that one episode fails when read, the rest are fine
    shard.write_bytes(data[: offsets[-1] + 100])
    source = RLDSSource(str(copy))
    episodes = source.episodes()
    assert len(episodes) == 50 and episodes[24].length == 0
    with pytest.raises(EpisodeError, match=f"record at byte {offsets[-1]} is cut off by the end of the file") as err:
        source.read_frames(episodes[24])
    assert err.value.file.endswith(TRAIN) and err.value.episode == 24
    assert len(source.read_frames(episodes[23])) == len(source.read_frames(episodes[25])) == 10

    # cut mid-shard: 15 episodes after the cut are lost, which would renumber all later ones
    shard.write_bytes(data[: offsets[9] + 100])
    with pytest.raises(DatasetError, match=f"record at byte {offsets[9]} is cut off.*so 15 after it are lost") as err:
        RLDSSource(str(copy)).episodes()
    assert err.value.file.endswith(TRAIN)

    # a payload byte flipped: the CRC catches it, for that episode only
    damaged = bytearray(data)
    damaged[offsets[5] + 500] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    source = RLDSSource(str(copy))
    episodes = source.episodes()
    assert len(episodes) == 50
    with pytest.raises(EpisodeError, match=f"record at byte {offsets[5]} fails its data CRC"):
        source.read_frames(episodes[5])
    assert source.read_frames(episodes[6]).state.shape == (10, 7)


def test_rlds_bad_episodes(tmp_path):
    copy = copy_dataset(BRIDGE, tmp_path / "bridge")
    good = examples(BUILDER / VAL)[0]
    empty = example_pb2.Example()
    empty.features.feature["steps/is_first"].int64_list.value[:] = []
    empty.features.feature["steps/language_instruction"].bytes_list.value[:] = []
    untasked = example_pb2.Example.FromString(good.SerializeToString())
    untasked.features.feature["steps/language_instruction"].bytes_list.value[:] = [b""] * 10
    short_state = example_pb2.Example.FromString(good.SerializeToString())
    del short_state.features.feature["steps/observation/state"].float_list.value[-1]
    with open(copy / "1.0.0" / VAL, "wb") as f:  # TFRecord framing with correct CRCs
        write_records(f, [e.SerializeToString() for e in (good, empty, untasked, short_state)])
    info_path = copy / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["splits"][1]["shardLengths"] = ["4"]
    info_path.write_text(json.dumps(info))

    source = RLDSSource(str(copy))
    episodes = source.episodes()
    assert len(episodes) == 29 and [e.length for e in episodes[25:]] == [10, 0, 10, 10]
    assert source.read_frames(episodes[25]).action.shape == (10, 7)
    for episode, message in [
        (episodes[26], "episode is empty"),
        (episodes[27], "episode has no task text"),
        (episodes[28], "'steps/observation/state' has 69 values for 10 steps but features.json declares 7"),
    ]:
        with pytest.raises(EpisodeError, match=message) as err:
            source.read_frames(episode)
        assert err.value.file.endswith(VAL) and err.value.episode == episode.index

    # the shard now holds 4 records but dataset_info.json still said 25
    info["splits"][1]["shardLengths"] = ["25"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="shard holds 4 episodes but dataset_info.json says 25"):
        RLDSSource(str(copy)).episodes()


# -- raw folders ------------------------------------------------------------------------------

N, H, W = 12, 32, 48


def synthetic(seed: int) -> np.ndarray:
    """N distinct smooth RGB frames (gradients that move), so a video codec keeps them close."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack(
        [np.stack([(x * 5 + k * 9 + seed * 50) % 256, (y * 7 + k * 4) % 256, np.full_like(x, (k * 20 + seed * 60) % 256)], -1) for k in range(N)]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def raw_written(tmp_path_factory) -> tuple[Path, dict]:
    """A raw dataset: episode "a" at the dataset's 30 fps, "b" overriding it to 15 fps."""
    root = write_raw_dataset_info(tmp_path_factory.mktemp("raw") / "raw", "toy_arm", 30, ["front", "wrist"])
    rng = np.random.default_rng(0)
    written = {}
    for name, fps, seed in (("a", 30, 0), ("b", 15, 2)):
        frames = {"front": synthetic(seed), "wrist": synthetic(seed + 1)}
        state, action = rng.normal(size=(N, 5)).astype(np.float32), rng.normal(size=(N, 3)).astype(np.float32)
        write_raw_episode(root, name, f"task {name}", frames, fps, state=state, action=action)
        written[name] = {"frames": frames, "state": state, "action": action, "fps": fps}
    return root, written


@pytest.fixture
def raw_copy(raw_written, tmp_path) -> Path:
    return Path(shutil.copytree(raw_written[0], tmp_path / "raw"))


def test_raw_lists_reads_and_decodes(raw_written):
    root, written = raw_written
    assert RawSource.detect(str(root)) and not RLDSSource.detect(str(root)) and not RawSource.detect(str(BRIDGE))
    assert isinstance(open_source(str(root)), RawSource)
    source = RawSource(str(root))
    assert (source.source_format, source.embodiment, source.fps, source.cameras) == ("raw/1", "toy_arm", 30.0, ["front", "wrist"])
    assert source.camera_shape("wrist") == (H, W) and source.feature_dim("state") == 5 and source.feature_dim("action") == 3
    episodes = source.episodes()
    assert [(e.index, e.task, e.length) for e in episodes] == [(0, "task a", N), (1, "task b", N)]
    for episode, want in zip(episodes, written.values(), strict=True):
        assert source.context(episode).fps == want["fps"]
        table = source.read_frames(episode)
        np.testing.assert_allclose(table.timestamp, np.arange(N) / want["fps"])
        np.testing.assert_array_equal(table.state, want["state"])
        np.testing.assert_array_equal(table.action, want["action"])
        for camera in source.cameras:
            frames = np.stack(list(source.decode(episode, camera, table, np.arange(N))))
            assert frames.dtype == np.uint8 and frames.shape == (N, H, W, 3)
            assert np.abs(frames.astype(int) - want["frames"][camera]).mean() < 3  # RGB->YUV rounding only
        rows = np.array([2, 7, 11])
        picked = np.stack(list(source.decode(episode, "front", table, rows)))
        assert np.abs(picked.astype(int) - want["frames"]["front"][rows]).mean() < 3  # the right frames, after a seek
        assert next(source.decode(episode, "front", table, rows, size=(16, 24))).shape == (16, 24, 3)


def test_raw_without_frames_table(raw_copy):
    (raw_copy / "episodes" / "a" / "frames.parquet").unlink()
    source = RawSource(str(raw_copy))
    episode = source.episodes()[0]
    assert episode.length == N  # the video's own frame count
    table = source.read_frames(episode)
    assert table.state is None and table.action is None
    np.testing.assert_allclose(table.timestamp, np.arange(N) / 30)
    assert len(list(source.decode(episode, "wrist", table, np.arange(N)))) == N


def test_raw_bad_dataset_info(raw_copy):
    info = raw_copy / "wvm_raw.json"
    info.write_text("{not json")
    with pytest.raises(DatasetError, match="wvm_raw.json is not valid JSON") as err:
        RawSource(str(raw_copy))
    assert err.value.file.endswith("wvm_raw.json")
    info.write_text(json.dumps({"format": "wvm-raw", "version": 1, "fps": 30, "cameras": []}))
    with pytest.raises(DatasetError, match='"cameras" must be a non-empty list'):
        RawSource(str(raw_copy))
    info.unlink()
    assert not RawSource.detect(str(raw_copy))


def test_raw_bad_episodes(raw_copy):
    (raw_copy / "episodes" / "b" / "wrist.mp4").unlink()
    source = RawSource(str(raw_copy))
    a, b = source.episodes()
    with pytest.raises(EpisodeError, match="video file for camera 'wrist' is missing") as err:
        source.read_frames(b)
    assert err.value.file.endswith("episodes/b/wrist.mp4") and err.value.episode == 1
    assert len(source.read_frames(a)) == N

    frames_path = raw_copy / "episodes" / "a" / "frames.parquet"
    original = pq.read_table(frames_path)
    timestamps = np.arange(N) / 30
    timestamps[5] = timestamps[4]
    pq.write_table(original.set_column(0, "timestamp", [timestamps]), frames_path)
    with pytest.raises(EpisodeError, match="timestamps are not increasing from 0: frame 5 is at") as err:
        source.read_frames(source.episodes()[0])
    assert err.value.file.endswith("episodes/a/frames.parquet")

    pq.write_table(original.set_column(0, "timestamp", [np.arange(N) / 25]), frames_path)  # not the declared 30 fps
    with pytest.raises(EpisodeError, match=r"timestamps advance 0\.0400s per frame \(median\) but the dataset declares 30 fps"):
        source.read_frames(source.episodes()[0])
    shifted = np.arange(N) / 30 + 0.01  # the declared rate, but between the video's frames
    pq.write_table(original.set_column(0, "timestamp", [shifted]), frames_path)
    table = source.read_frames(source.episodes()[0])
    with pytest.raises(EpisodeError, match="timestamps do not match the video") as err:
        list(source.decode(source.episodes()[0], "front", table, np.arange(N)))
    assert err.value.file.endswith("episodes/a/front.mp4")

    (raw_copy / "episodes" / "a" / "episode.json").write_text("{")
    with pytest.raises(EpisodeError, match="episode.json is unusable"):
        source.read_frames(source.episodes()[0])


# -- gs:// --------------------------------------------------------------------------------------


def test_readers_on_gcs(gcs_emulator, raw_written):
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=gcs_emulator, token="anon")
    fs.mkdir("wvm-sources")
    fs.put(str(BRIDGE), "wvm-sources/bridge", recursive=True)
    fs.put(str(raw_written[0]), "wvm-sources/raw", recursive=True)

    remote, local = RLDSSource("gs://wvm-sources/bridge"), RLDSSource(str(BRIDGE))
    assert remote.uri == "gs://wvm-sources/bridge/1.0.0"
    remote_episodes, local_episodes = remote.episodes(), local.episodes()
    assert [(e.index, e.task, e.length) for e in remote_episodes] == [(e.index, e.task, e.length) for e in local_episodes]
    table = remote.read_frames(remote_episodes[30])
    np.testing.assert_array_equal(table.state, local.read_frames(local_episodes[30]).state)
    np.testing.assert_array_equal(
        np.stack(list(remote.decode(remote_episodes[30], "image_0", table, np.arange(10)))),
        np.stack(list(local.decode(local_episodes[30], "image_0", table, np.arange(10)))),
    )

    raw = RawSource("gs://wvm-sources/raw")
    assert raw.camera_shape("front") == (H, W)
    episode = raw.episodes()[1]
    table = raw.read_frames(episode)
    frames = np.stack(list(raw.decode(episode, "front", table, np.arange(N))))
    assert np.abs(frames.astype(int) - raw_written[1]["b"]["frames"]["front"]).mean() < 3


def _may_run_realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


@pytest.mark.skipif(not _may_run_realtime(), reason="SVT-AV1 only switches to real time where the process may (root, CAP_SYS_NICE)")
def test_writing_av1_video_leaves_no_thread_real_time(tmp_path):
    """SVT-AV1 puts the thread that starts an encoder, and the encoder's workers, on SCHED_FIFO 99;
    the writer puts them back, so a render never starves the node it runs on."""
    from pipelines.sources.lerobot import LeRobotV3Writer

    def real_time_threads() -> list[int]:
        found = []
        for tid in map(int, os.listdir("/proc/self/task")):
            try:
                if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                    found.append(tid)
            except OSError:  # the thread has exited meanwhile
                pass
        return found

    writer = LeRobotV3Writer(root=str(tmp_path / "v3"), fps=10, robot_type="test", cameras={"observation.images.top": (32, 32)}, state_dim=2, action_dim=2)
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    writer.add_episode({"observation.images.top": frames}, np.zeros((12, 2), np.float32), np.zeros((12, 2), np.float32), "a task")
    assert real_time_threads() == []  # the encoder's workers are running now
    writer.close()
    assert real_time_threads() == [] and open_source(str(tmp_path / "v3")).version == "v3.0"

