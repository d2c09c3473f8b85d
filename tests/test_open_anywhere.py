"""Stores open in generic tools: zarr walks from the root to every array, xarray and dask open
partitions and progress arrays with their dims and attrs, pandas and duckdb read the tables.
Real stores: the real ingest and relabel (local engine, shipped checkpoint) on the first
episodes of metaworld_mini (few frames: the model's load is most of the time)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from conftest import METAWORLD_MINI, copy_dataset
from pipelines.engines.base import LocalEngine
from pipelines.inference import ModelSpec
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.labels_store import LabelsStore
from pipelines.relabel import RelabelConfig, run_relabel
from pipelines.sources import EpisodeFrames
from pipelines.store import EpisodeStore
from schemas import episode_store as layout
from schemas import labels as spec

N_EPISODES = 4
# The stores hold non-Zarr files too (manifest/, *.parquet); zarr says so on every listing.
pytestmark = pytest.mark.filterwarnings("ignore:Object at .* is not recognized as a component of a Zarr hierarchy")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path, int]:
    """(episode store, labels, frames) of the first N_EPISODES episodes."""
    tmp = tmp_path_factory.mktemp("open_anywhere")
    source, store, labels = copy_dataset(METAWORLD_MINI, tmp / "source"), tmp / "store", tmp / "labels"
    episodes = source / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(episodes).slice(0, N_EPISODES)
    pq.write_table(table, episodes)
    # several partitions (about two episodes each), so the walk has siblings to find
    run_ingest(IngestConfig(str(source), str(store), partition_frames=60), LocalEngine(), progress=False)
    run_relabel(RelabelConfig(source=str(store), dst=str(labels), model=ModelSpec()), LocalEngine(), progress=False)
    return store, labels, sum(table.column("length").to_pylist())


def groups(group: zarr.Group) -> list[zarr.Group]:
    return [g for _, g in group.groups()]


def open_xr(url: Path, **kwargs) -> xr.Dataset:
    return xr.open_zarr(str(url), consolidated=False, **kwargs)


def test_zarr_walks_from_the_root_to_every_partitions_frames(stores):
    store, _, n_frames = stores
    manifest = EpisodeStore(str(store)).episodes().to_pandas()
    committed = set(manifest["partition_path"])
    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["format"] == layout.STORE_FORMAT
    frames, attempts = 0, set()
    for partition in groups(root[layout.PARTITIONS_DIR]):
        for attempt in groups(partition):
            attempts.add(attempt.path)
            # a group found by walking may be an uncommitted attempt: readers go by the manifest
            if attempt.path in committed:
                images = attempt[layout.IMAGES_GROUP]
                (frames_here,) = {a.shape[0] for _, a in images.arrays()}
                frames += frames_here
    assert attempts == committed and len(committed) > 1
    assert frames == manifest["length"].sum() == n_frames


def test_xarray_and_dask_open_every_partition(stores):
    store, _, _ = stores
    rows = EpisodeStore(str(store)).episodes().to_pandas()
    (camera,) = rows["cameras"].iloc[0]
    for path, part in rows.groupby("partition_path"):
        ds = open_xr(store / path)
        n = int(ds.sizes[layout.DIM_FRAME])
        assert n == part["length"].sum()
        assert ds.attrs["format"] == layout.PARTITION_FORMAT and ds.attrs["schema_version"] == layout.STORE_SCHEMA_VERSION
        assert ds[layout.TIMESTAMP].dims == (layout.DIM_FRAME,) and ds[layout.TIMESTAMP].attrs["units"] == "s"
        assert ds[layout.STATE].dims == (layout.DIM_FRAME, layout.DIM_STATE)
        assert ds[layout.EPISODE_OFFSETS].dims == (layout.DIM_EPISODE_BOUNDARY,)
        assert ds.sizes[layout.DIM_EPISODE_BOUNDARY] == len(part) + 1
        image = open_xr(store / path, group=layout.IMAGES_GROUP)[camera]
        assert image.dims == layout.image_dims(camera) and image.shape == (n, 128, 128, 3)
        assert image.attrs["camera"] == camera and image.attrs["units"]
    # dask reads the same bytes zarr does
    array = zarr.open_group(str(store / path), mode="r")[layout.IMAGES_GROUP][camera]
    np.testing.assert_array_equal(da.from_zarr(array).compute(), array[...])
    # the whole store as one tree
    tree = xr.open_datatree(str(store), engine="zarr", consolidated=False)
    assert tree.attrs["format"] == layout.STORE_FORMAT
    assert tree[f"{path}/{layout.IMAGES_GROUP}"][camera].dims == layout.image_dims(camera)


def test_cameras_of_different_sizes_and_concurrent_partition_writers(tmp_path):
    # Eight partitions written at once by threads; two cameras of different sizes in one images
    # group. As in a store from before intermediate groups existed, `partitions/` is not a group
    # yet: all eight writers create it together.
    store = EpisodeStore(str(tmp_path / "store"), create=True)
    (tmp_path / "store" / layout.PARTITIONS_DIR / "zarr.json").unlink()
    root_metadata = (tmp_path / "store" / "zarr.json").read_bytes()
    cameras = {"wrist": (8, 12), "top": (16, 10)}

    def write(i: int) -> None:
        writer = store.partition_writer(
            f"p{i}", "run1", cameras=cameras, state_dim=2, action_dim=0, capacity=5, fps=15.0, attrs={"run_id": "run1"}
        )
        for camera, (h, w) in cameras.items():
            for t in range(5):
                writer.append_frame(camera, np.full((h, w, 3), i * 10 + t, np.uint8))
        zeros = np.zeros(5)
        writer.end_episode(EpisodeFrames(zeros, np.arange(5), np.arange(5), np.zeros((5, 2)), None))
        writer.finish()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # raises a writer's error
    assert (tmp_path / "store" / "zarr.json").read_bytes() == root_metadata  # writers leave the root alone
    root = zarr.open_group(str(tmp_path / "store"), mode="r")
    assert len(groups(root[layout.PARTITIONS_DIR])) == 8
    ds = open_xr(tmp_path / "store" / layout.PARTITIONS_DIR / "p3" / "run1", group=layout.IMAGES_GROUP)
    assert ds["wrist"].dims == ("frame", "wrist_height", "wrist_width", "channel") and ds.sizes["top_height"] == 16
    assert ds["top"].attrs == {**layout.IMAGE_ATTRIBUTES, "camera": "top", "fps": 15.0}
    assert int(ds["top"][4, 0, 0, 0]) == 34
    partition = open_xr(tmp_path / "store" / layout.PARTITIONS_DIR / "p3" / "run1")
    assert partition.attrs["fps"] == 15.0 and partition.attrs["run_id"] == "run1"
    assert layout.ACTION not in partition  # action_dim 0: no array


def test_labels_walk_and_open_in_xarray_pandas_and_duckdb(stores):
    _, labels, n_frames = stores
    (key,) = LabelsStore(str(labels)).versions()
    version = labels / spec.VERSIONS_DIR / key
    episodes = pd.read_parquet(version / spec.EPISODES_FILE)
    assert len(episodes) == N_EPISODES

    root = zarr.open_group(str(labels), mode="r")
    assert root.attrs["format"] == spec.LABELS_FORMAT
    model = root[spec.VERSIONS_DIR][key]
    found = {}
    for partition in groups(model[spec.PROGRESS_DIR]):
        for run in groups(partition):
            found[run.path.removeprefix(f"{spec.VERSIONS_DIR}/{key}/")] = run[spec.PROGRESS_ARRAY]
    assert set(found) == set(episodes["progress_path"])
    assert sum(a.shape[0] for a in found.values()) == n_frames  # store partitions hold only labelled episodes

    info = model.attrs.asdict()
    for path in found:
        progress = open_xr(version / path)[spec.PROGRESS_ARRAY]
        assert progress.dims == spec.PROGRESS_DIMS
        assert progress.attrs["units"] == "progress in [0, 1]"
        assert (progress.attrs["model_version"], progress.attrs["checkpoint_hash"]) == (info["model_version"], info["checkpoint_hash"])
        assert np.nanmin(progress.values) >= 0 and np.nanmax(progress.values) <= 1

    tree = xr.open_datatree(str(labels), engine="zarr", consolidated=False)
    assert tree[f"{spec.VERSIONS_DIR}/{key}/{path}"][spec.PROGRESS_ARRAY].dims == spec.PROGRESS_DIMS

    tables = {
        version / spec.FRAMES_DIR: n_frames,
        version / spec.EPISODES_FILE: N_EPISODES,
        version / spec.SIDECAR_FILE: n_frames,
        labels / spec.SIDECAR_FILE: n_frames,  # published copy
    }
    for path, rows in tables.items():
        assert len(pd.read_parquet(path)) == rows, path
        glob = f"{path}/*.parquet" if path.is_dir() else str(path)
        assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(rows,)], path
