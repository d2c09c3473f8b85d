"""The benchmark's data: render the mixed-quality dataset, label it with `wvm relabel`, and
load states, actions and the three label sources per frame.

Layout of the work directory (everything is reused when present, so a rerun or a resumed run
redoes nothing it has finished):

    <work>/dataset/                   LeRobot v3 dataset (wvm.datagen.metaworld, full 39-dim state)
    <work>/dataset.labels.parquet     its ground truth (schemas/ground_truth.py)
    <work>/dataset.json               the datagen settings it was rendered with; written last
    <work>/labels/                    what `wvm relabel <work>/dataset --out <work>/labels` wrote
                                      (labels-h<H>/ for an action horizon other than 10)
    <work>/labels-<model>.json        how long that relabel took (the first time)
    <work>/policies/<task>/<run>/seed<k>/   each policy (policy.pt, policy.json) and result.json
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.errors import DatasetError, WvmError
from pipelines.weights import AdvantageHistogram, awr_weights, binary_weights, chunk_advantage, episode_summary, top_weights
from schemas import labels as spec
from schemas import ground_truth as truth_schema
from schemas.ground_truth import LABELS_SUFFIX

log = logging.getLogger(__name__)

KINDS = ("expert", "hesitation", "retry", "failed", "noisy")
# Bump when the rendered data changes for the same settings, so old renders are not reused.
DATAGEN_REVISION = 2  # 2: noisy episodes carry measured ground truth
SOURCES = ("wvm", "ramp", "gt")  # value model, time ramp t/(T-1), ground-truth progress
SOURCE_NAMES = {"wvm": "wvm (value model)", "ramp": "time ramp", "gt": "ground truth"}
WEIGHT_COLUMNS = spec.WEIGHT_COLUMNS  # per-frame weights, as frames.parquet has them
FRAME_COLUMNS = [spec.EPISODE_INDEX, spec.FRAME_INDEX, spec.PROGRESS, spec.ADVANTAGE, *WEIGHT_COLUMNS]  # what the bench reads
# whole-episode filter: 1 for the episodes whose quality (as episodes.parquet reports it) is in
# the dataset's top 70 %, else 0
EPISODE_WEIGHT = "w_episode70"


@dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...]
    mix: dict[str, int]  # episodes per task for each kind
    seed: int = 0
    size: int = 128  # rendered image size (only the value model looks at images)
    record_every: int = 4  # env steps per recorded frame: fixed, so the policy's action repeat matches
    noise_scale: float = 0.3
    workers: int = 1

    @property
    def placement_seed(self) -> int:
        """Seed of the training scenes (object and goal placements; task i adds i), far from
        the evaluation's placement seeds (wvm.policy.sim) so no trial repeats a training scene."""
        return 100_000 * (self.seed + 1)

    def datagen_settings(self) -> dict:
        return {
            "revision": DATAGEN_REVISION,
            "tasks": list(self.tasks),
            "mix": {k: int(v) for k, v in self.mix.items()},
            "seed": self.seed,
            "size": self.size,
            "record_every": self.record_every,
            "noise_scale": self.noise_scale,
            "full_state": True,
            "placement_seed": self.placement_seed,
        }


@dataclass
class Episode:
    index: int
    task: str  # Meta-World env name
    kind: str
    state: np.ndarray  # float32 (T, 39)
    action: np.ndarray  # float32 (T, 4), clipped to what the env executed
    gt_progress: np.ndarray  # float64 (T,)


def render_dataset(config: DataConfig, work: Path) -> tuple[Path, float]:
    """Render the dataset unless `<work>/dataset.json` says it exists with these settings.
    Returns its path and how long rendering took (when it was rendered)."""
    from wvm.datagen import metaworld

    dataset, marker = work / "dataset", work / "dataset.json"
    settings = config.datagen_settings()
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("settings") != settings:
            raise WvmError(
                f"{dataset} was rendered with other settings ({marker}); use another --work directory "
                f"or delete {work} to render again"
            )
        log.info("reusing the rendered dataset %s", dataset)
        return dataset, float(saved.get("seconds", 0.0))
    # Render into a scratch directory and move it in place, so a killed render never leaves
    # something that looks finished.
    scratch = work / "render-tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    for leftover in (dataset, Path(str(dataset) + LABELS_SUFFIX)):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    summary = metaworld.generate(
        metaworld.DatagenConfig(
            out=str(scratch / "dataset"),
            tasks=config.tasks,
            per_kind=dict(config.mix),
            seed=config.seed,
            size=config.size,
            record_every=(config.record_every, config.record_every),
            workers=config.workers,
            full_state=True,
            noise_scale=config.noise_scale,
            placement_seed=config.placement_seed,
        )
    )
    os.replace(scratch / "dataset", dataset)
    os.replace(scratch / ("dataset" + LABELS_SUFFIX), Path(str(dataset) + LABELS_SUFFIX))
    scratch.rmdir()
    seconds = round(time.perf_counter() - start, 1)
    marker.write_text(json.dumps({"settings": settings, "summary": summary, "seconds": seconds}, indent=2))
    return dataset, seconds


def relabel(dataset: Path, labels: Path, checkpoint: str | None, horizon: int) -> dict:
    """Run the real pipeline, `wvm relabel DATASET --out LABELS --engine local`, as a user would;
    it labels only what is new, so a rerun costs little. Returns its JSON summary."""
    cmd = [sys.executable, "-m", "wvm.cli", "relabel", str(dataset), "--out", str(labels), "--engine", "local", "--horizon", str(horizon)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise WvmError(f"wvm relabel failed (exit {done.returncode}):\n{done.stderr.strip()[-3000:]}")
    try:
        return json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise WvmError(f"could not read the summary wvm relabel printed:\n{done.stdout[-2000:]}") from None


def load_episodes(dataset: Path) -> list[Episode]:
    """Every episode's states and actions (via the project's dataset readers) with its kind,
    task and ground-truth progress from the labels file datagen wrote beside it."""
    from pipelines.sources import open_source

    truth = pq.read_table(str(dataset) + LABELS_SUFFIX).to_pandas()
    by_episode = {int(i): g.sort_values(truth_schema.FRAME_INDEX) for i, g in truth.groupby(truth_schema.EPISODE_INDEX)}
    source = open_source(str(dataset))
    episodes = []
    for e in source.episodes():
        frames = source.read_frames(e)
        gt = by_episode.get(e.index)
        if gt is None or len(gt) != len(frames):
            raise DatasetError(f"episode {e.index}: ground truth does not match the dataset", file=str(dataset) + LABELS_SUFFIX)
        if frames.state is None or frames.state.shape[1] < 39:
            raise DatasetError("observation.state is not the full 39-dim Meta-World observation (render with full_state)", file=str(dataset))
        episodes.append(
            Episode(
                index=e.index,
                task=str(gt[truth_schema.ENV].iloc[0]),
                kind=str(gt[truth_schema.KIND].iloc[0]),
                state=frames.state.astype(np.float32),
                # Meta-World clips actions to [-1, 1]; some scripted experts ask for more.
                action=np.clip(frames.action, -1.0, 1.0).astype(np.float32),
                gt_progress=gt[truth_schema.GT_PROGRESS].to_numpy(np.float64),
            )
        )
    return episodes


def read_wvm_frames(labels_dir: str, model_key: str) -> pd.DataFrame:
    """The labels as a training team reads them: `<labels>/versions/<model_key>/frames.parquet`
    (the version `wvm relabel` just wrote and published in <labels>/latest.json)."""
    path = Path(labels_dir) / spec.VERSIONS_DIR / model_key / spec.FRAMES_DIR
    if not path.exists():
        raise WvmError(f"no labels of model {model_key} in {labels_dir} ({path} is missing)")
    frames = pq.read_table(path).to_pandas()
    return frames[FRAME_COLUMNS].sort_values([spec.EPISODE_INDEX, spec.FRAME_INDEX]).reset_index(drop=True)


def control_frames(progress: dict[int, np.ndarray], horizon: int) -> pd.DataFrame:
    """Frame labels of a control source, made as the pipeline makes them from the value
    model's progress (pipelines/stages/relabel.py, pipelines/labels_store.py): chunk advantage,
    binary and AWR weights per episode, one top-70 % cut over every frame of the dataset (the
    pipeline may hold per-part cuts within 1 point of it: schemas/labels.py)."""
    rows, histogram = [], AdvantageHistogram()
    for index, values in sorted(progress.items()):
        advantage = chunk_advantage(values, horizon)
        histogram.add(advantage)
        rows.append(
            pd.DataFrame(
                {
                    spec.EPISODE_INDEX: index,
                    spec.FRAME_INDEX: np.arange(len(values)),
                    spec.PROGRESS: np.asarray(values, np.float32),
                    spec.ADVANTAGE: advantage,
                    spec.W_BINARY: binary_weights(advantage),
                    spec.W_AWR: awr_weights(advantage),
                }
            )
        )
    frames = pd.concat(rows, ignore_index=True)
    threshold = histogram.cut_keeping(spec.TOP_FRACTION)
    frames[spec.W_TOP70] = top_weights(frames[spec.ADVANTAGE].to_numpy(), threshold)
    return frames[FRAME_COLUMNS]


def time_ramp(length: int) -> np.ndarray:
    return np.arange(length, dtype=np.float64) / max(length - 1, 1)


def label_sources(episodes: list[Episode], labels_dir: str, model_key: str, horizon: int) -> dict[str, pd.DataFrame]:
    """Per-frame progress, advantage and weights of each label source, keyed like SOURCES;
    the three differ only in their progress values."""
    wvm = read_wvm_frames(labels_dir, model_key)
    expected = sum(len(e.state) for e in episodes)
    if len(wvm) != expected:
        raise WvmError(f"{labels_dir} labels {len(wvm)} frames but the dataset has {expected}: relabel it again")
    sources = {
        "wvm": (wvm, read_wvm_quality(labels_dir, model_key)),
        "ramp": (control_frames({e.index: time_ramp(len(e.state)) for e in episodes}, horizon), None),
        "gt": (control_frames({e.index: e.gt_progress for e in episodes}, horizon), None),
    }
    return {name: with_episode_filter(frames, quality) for name, (frames, quality) in sources.items()}


def read_wvm_quality(labels_dir: str, model_key: str) -> dict[int, float]:
    """Each episode's quality as `<labels>/versions/<model_key>/episodes.parquet` reports it."""
    episodes = pq.read_table(Path(labels_dir) / spec.VERSIONS_DIR / model_key / spec.EPISODES_FILE, columns=[spec.EPISODE_INDEX, spec.QUALITY])
    return dict(zip(episodes.column(spec.EPISODE_INDEX).to_pylist(), episodes.column(spec.QUALITY).to_pylist()))


def with_episode_filter(frames: pd.DataFrame, quality: dict[int, float] | None = None) -> pd.DataFrame:
    """`frames` plus EPISODE_WEIGHT: whole episodes kept by their `quality` (by default, computed
    from the frames' progress as episodes.parquet does for a model without a success judgement),
    the cut keeping the dataset's top 70 % of episodes (ties kept: the time ramp rates every
    episode alike)."""
    if quality is None:  # the frames alone (a source without episodes.parquet)
        quality = {
            int(i): episode_summary(g.sort_values(spec.FRAME_INDEX)[spec.PROGRESS].to_numpy())[spec.QUALITY]
            for i, g in frames.groupby(spec.EPISODE_INDEX)
        }
    cut = np.quantile(np.fromiter(quality.values(), float), 1.0 - spec.TOP_FRACTION)
    return frames.assign(**{EPISODE_WEIGHT: frames[spec.EPISODE_INDEX].map(lambda i: float(quality[int(i)] >= cut - 1e-12)).astype(np.float32)})


def by_episode(frames: pd.DataFrame, column: str) -> dict[int, np.ndarray]:
    """Each episode's values of a frames column, in frame order."""
    ordered = frames.sort_values([spec.EPISODE_INDEX, spec.FRAME_INDEX])
    return {int(i): g[column].to_numpy(np.float32) for i, g in ordered.groupby(spec.EPISODE_INDEX, sort=False)}
