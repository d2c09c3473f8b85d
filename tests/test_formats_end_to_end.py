"""`wvm ingest` and `wvm relabel` on every format the readers know: the real Open X-Embodiment
(RLDS) fixture and a raw-folder dataset, stored frames against independent decodes, labels for
every frame, the labelling camera recorded, and bad sources refused before anything is written."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tfrecord import example_pb2

from conftest import FIXTURES
from pipelines.engines.base import LocalEngine
from pipelines.errors import DatasetError
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.labels_store import LabelsStore
from pipelines.relabel import RelabelConfig, run_relabel
from pipelines.sources.raw import write_raw_dataset_info, write_raw_episode
from pipelines.store import EpisodeStore
from schemas import labels as spec

BRIDGE = FIXTURES / "bridge_rlds_debug"
TRAIN_SHARD = BRIDGE / "1.0.0" / "bridge_dataset-train.tfrecord-00000-of-00001"


def relabel(src, dst, **kwargs):
    return run_relabel(RelabelConfig(source=str(src), dst=str(dst), **kwargs), LocalEngine(), progress=False)


def labelled_episodes(dst) -> list[dict]:
    (key,) = LabelsStore(str(dst)).versions()
    return pq.read_table(dst / spec.VERSIONS_DIR / key / spec.EPISODES_FILE).to_pylist()


def first_records(shard, n: int) -> list[example_pb2.Example]:
    """The first n Examples of a shard, read with plain framing (8-byte length, 4-byte crc, data, crc)."""
    data, examples, at = shard.read_bytes(), [], 0
    while len(examples) < n:
        length = int.from_bytes(data[at : at + 8], "little")
        example = example_pb2.Example()
        example.ParseFromString(data[at + 12 : at + 12 + length])
        examples.append(example)
        at += 16 + length
    return examples


@pytest.mark.slow
def test_rlds_ingest_and_relabel(tmp_path):
    summary = run_ingest(IngestConfig(str(BRIDGE), str(tmp_path / "store")), LocalEngine(), progress=False)
    assert (summary.episodes_written, summary.frames_written, summary.failed) == (50, 500, 0)
    store = EpisodeStore(str(tmp_path / "store"))
    rows = store.episodes().to_pylist()
    assert {r["source_format"] for r in rows} == {"rlds/1.0.0"} and {r["embodiment"] for r in rows} == {"bridge_dataset"}
    assert rows[0]["cameras"][0] == "image_0"  # the default labelling camera is stored first
    for row, example in zip(rows[:3], first_records(TRAIN_SHARD, 3)):
        features = example.features.feature
        assert row["task"] == features["steps/language_instruction"].bytes_list.value[0].decode()
        stored = store.read_frames(row, "image_0")
        jpegs = features["steps/observation/image_0"].bytes_list.value
        np.testing.assert_array_equal(stored, np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]))
        state = np.float32(features["steps/observation/state"].float_list.value).reshape(len(jpegs), -1)
        np.testing.assert_array_equal(store.read_table(row).state, state)

    # from the store, and straight from the RLDS directory with a per-embodiment camera
    assert relabel(tmp_path / "store", tmp_path / "labels").frames_labelled == 500
    assert {e["camera"] for e in labelled_episodes(tmp_path / "labels")} == {"image_0"}
    direct = relabel(BRIDGE, tmp_path / "direct", camera_by_embodiment=(("bridge_dataset", "image_1"),))
    assert (direct.episodes_labelled, direct.frames_labelled, direct.failed) == (50, 500, 0)
    episodes = labelled_episodes(tmp_path / "direct")
    assert {e["camera"] for e in episodes} == {"image_1"}
    assert all(0.0 <= e["final_progress"] <= 1.0 for e in episodes)
    # no LeRobot global index in RLDS: no sidecar rows to join
    assert not (tmp_path / "direct" / spec.SIDECAR_FILE).exists() or pq.read_table(tmp_path / "direct" / spec.SIDECAR_FILE).num_rows == 0


def test_raw_folder_ingest_and_relabel(tmp_path):
    root = write_raw_dataset_info(tmp_path / "raw", "toy_arm", 10, ["wrist_cam", "front"])
    rng = np.random.default_rng(0)
    written = {}
    for name in ("ep_a", "ep_b"):
        frames = {c: rng.integers(0, 255, size=(1, 12, 16, 3), dtype=np.uint8).repeat(8, 0) for c in ("wrist_cam", "front")}
        for k in range(8):  # a bright square moving right: distinct, codec-friendly frames
            frames["front"][k, 4:8, 2 * k : 2 * k + 4] = 255
        write_raw_episode(root, name, f"push the block ({name})", frames, 10)
        written[name] = frames
    summary = run_ingest(IngestConfig(str(root), str(tmp_path / "store")), LocalEngine(), progress=False)
    assert (summary.episodes_written, summary.frames_written) == (2, 16)
    store = EpisodeStore(str(tmp_path / "store"))
    for row, name in zip(store.episodes().to_pylist(), ("ep_a", "ep_b")):
        assert row["source_format"] == "raw/1" and row["cameras"] == ["front", "wrist_cam"]  # third-person first
        stored = store.read_frames(row, "front").astype(int)
        assert np.abs(stored - written[name]["front"]).mean() < 3  # lossless-ish H.264, YUV rounding
        np.testing.assert_allclose(store.read_table(row).timestamp, np.arange(8) / 10)
    result = relabel(root, tmp_path / "labels")
    assert (result.episodes_labelled, result.frames_labelled) == (2, 16)
    assert {e["camera"] for e in labelled_episodes(tmp_path / "labels")} == {"front"}


def test_relabel_of_what_is_not_a_dataset_writes_nothing(tmp_path):
    for bad, message in ((tmp_path / "nowhere", "no such file or directory"), (tmp_path, "not a dataset wvm can read")):
        with pytest.raises(DatasetError, match=message):
            relabel(bad, tmp_path / "labels")
        assert not (tmp_path / "labels").exists()
