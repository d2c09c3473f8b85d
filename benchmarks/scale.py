"""Scale run (issue #13): ingest and relabel time and memory per episode as the dataset grows
from `--sizes` SMALL to LARGE episodes, then a nightly rerun after adding a few new episodes.

    python benchmarks/scale.py [--sizes 1000 10000] [--frames-per-episode 10] [--new-fraction 0.01]
        [--workdir DIR] [--keep] [--out benchmarks/results/scale.json]

Data: for each size N, a synthetic LeRobot v3 dataset of N short episodes (8 to 12 frames
around `--frames-per-episode`, 48x64 frames of a coloured square moving over a plain
background, AV1 as real video, 4 task texts) written by the project's own writer
(`pipelines.sources.lerobot.LeRobotV3Writer`, the one `wvm datagen` uses).

Per size, each stage is a separate child process, as a user would run it, one after the other:
- ingest:  `wvm ingest DATASET --out STORE --engine local` (default 1,000-frame partitions)
- relabel: `wvm relabel STORE --out LABELS --engine local` (in-process model, the shipped
  default checkpoint, default 2,000-frame partitions); it labels the episode store, as the
  nightly flow does
Each reports wall seconds of the child, the pipeline's own `seconds` (its summary: no
interpreter start-up or imports, but relabel's includes loading the model, ~10 s on 2 cores),
seconds per episode of both, peak RSS (max RSS of the child,
RUSAGE_CHILDREN of a fresh wrapper process, as benchmarks/common.py measures memory) and bytes
read and written (rchar / wchar: every read() and write(), page-cache hits included; Linux adds
a reaped child's I/O counters to its parent's, so the wrapper's /proc/self/io before and after
the child gives exactly the child's). Goals, LARGE / SMALL: seconds per episode <= 1.2x (judged
on the pipeline's own seconds, so interpreter start-up does not hide growth; relabel's model
load still favours LARGE slightly), peak RSS <= 1.2x.

Nightly: the LARGE dataset is written with `--new-fraction` more episodes, hidden from the first
run by rewriting its episodes metadata without them (the trick of finalize_cost.py; data and
video files are unchanged, so the other episodes keep their fingerprints). After the first run
they are revealed and the same two commands are run again into the same store and labels (plain
ingest + relabel reruns, not the Prefect `wvm nightly` flow, whose QC report is a separate
cost). The second run's wall seconds and bytes read over the first run's: goal <= 5%.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import ROOT, write_results

from pipelines.sources.lerobot import LeRobotV3Writer

CAMERA = "observation.images.front"
HEIGHT, WIDTH = 48, 64
FPS = 10
TASKS = (
    ("push the red block to the goal", (220, 40, 40)),
    ("open the top drawer", (40, 180, 60)),
    ("pick up the blue cup and place it on the shelf", (40, 80, 220)),
    ("press the yellow button", (230, 210, 40)),
)
GOALS = {"seconds_per_episode_ratio": 1.2, "peak_rss_ratio": 1.2, "nightly_fraction": 0.05}

# One command in a fresh wrapper process: its RUSAGE_CHILDREN max RSS is the command's peak RSS,
# and its /proc/self/io after waiting for the command includes the command's I/O counters.
_MEASURE = """
import json, resource, subprocess, sys, time
def io():
    fields = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())
    return int(fields['rchar']), int(fields['wchar'])
stdout, stderr, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(stdout, 'wb') as out, open(stderr, 'wb') as err:
    (r0, w0), start = io(), time.perf_counter()
    code = subprocess.run(cmd, stdout=out, stderr=err).returncode
    seconds, (r1, w1) = time.perf_counter() - start, io()
print(json.dumps({'returncode': code, 'seconds': seconds, 'rchar': r1 - r0, 'wchar': w1 - w0,
                  'max_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

_started = time.perf_counter()


def say(message: str) -> None:
    print(f"[scale {time.perf_counter() - _started:7.0f}s] {message}", file=sys.stderr, flush=True)


def episode(index: int, frames_per_episode: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Frames, state, action and task of one synthetic episode: a square of the task's colour
    moving from a random start towards a random goal."""
    rng = np.random.default_rng(index)
    length = int(rng.integers(max(2, frames_per_episode - 2), frames_per_episode + 3))
    task, colour = TASKS[index % len(TASKS)]
    side = 10
    start = rng.uniform([0, 0], [HEIGHT - side, WIDTH - side])
    goal = rng.uniform([0, 0], [HEIGHT - side, WIDTH - side])
    path = start + np.linspace(0, 1, length)[:, None] * (goal - start)  # (length, 2) top-left corners
    images = np.empty((length, HEIGHT, WIDTH, 3), np.uint8)
    images[:] = rng.integers(60, 140)  # plain grey background, one level per episode
    for t, (y, x) in enumerate(path.astype(int)):
        images[t, y : y + side, x : x + side] = colour
    state = np.concatenate([path / [HEIGHT, WIDTH], np.broadcast_to(goal / [HEIGHT, WIDTH], (length, 2))], axis=1)
    action = np.diff(state[:, :2], axis=0, append=state[-1:, :2])
    return images, state.astype(np.float32), np.concatenate([action, np.zeros_like(action)], axis=1).astype(np.float32), task


def write_dataset(path: Path, episodes: int, hidden: int, frames_per_episode: int):
    """A LeRobot v3 dataset of `episodes + hidden` episodes, the last `hidden` left out of its
    episodes metadata. Returns the metadata file and the full table, to reveal them later."""
    writer = LeRobotV3Writer(str(path), fps=FPS, robot_type="synthetic", cameras={CAMERA: (HEIGHT, WIDTH)}, state_dim=4, action_dim=4)
    for index in range(episodes + hidden):
        images, state, action, task = episode(index, frames_per_episode)
        writer.add_episode({CAMERA: images}, state, action, task)
        if (index + 1) % 2000 == 0:
            say(f"  written {index + 1:,} / {episodes + hidden:,} episodes")
    writer.close()
    (episodes_file,) = sorted((path / "meta" / "episodes").rglob("*.parquet"))
    full = pq.read_table(episodes_file)
    if hidden:
        pq.write_table(full.slice(0, episodes), episodes_file)
    return episodes_file, full


def run_measured(verb: str, src: Path, out: Path, logs: Path, name: str) -> dict:
    """`wvm VERB SRC --out OUT --engine local` in a child process: its summary, wall seconds,
    peak RSS and bytes read and written."""
    stdout, stderr = logs / f"{name}.stdout.json", logs / f"{name}.stderr.log"
    cmd = [sys.executable, "-m", "wvm.cli", verb, str(src), "--out", str(out), "--engine", "local"]
    wrapper = [sys.executable, "-c", _MEASURE, str(stdout), str(stderr), *cmd]
    measured = json.loads(subprocess.run(wrapper, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    if measured["returncode"]:
        raise RuntimeError(f"{' '.join(cmd)} failed ({measured['returncode']}):\n{stderr.read_text()[-3000:]}")
    summary = json.loads(stdout.read_text())
    if summary.get("failed"):
        raise RuntimeError(f"{verb}: {summary['failed']} failures: {summary.get('failures', [])[:5]}")
    done = summary["episodes_written"] if verb == "ingest" else summary["episodes_labelled"]
    frames = summary["frames_written"] if verb == "ingest" else summary["frames_labelled"]
    result = {
        "episodes": done,
        "frames": frames,
        "source_episodes": summary["source_episodes"],
        "wall_seconds": round(measured["seconds"], 2),
        "pipeline_seconds": summary["seconds"],
        "wall_seconds_per_episode": round(measured["seconds"] / done, 5) if done else None,
        "pipeline_seconds_per_episode": round(summary["seconds"] / done, 5) if done else None,
        "peak_rss_mb": measured["max_rss_kb"] // 1024,
        "bytes_read": measured["rchar"],
        "bytes_written": measured["wchar"],
        "partitions": summary.get("partitions"),
    }
    if verb == "relabel":
        result["frames_per_second"] = summary["frames_per_second"]
        result.pop("partitions")
    say(
        f"  {verb}: {done:,} episodes in {measured['seconds']:.1f} s wall ({summary['seconds']:.1f} s pipeline), "
        f"peak RSS {result['peak_rss_mb']} MB, read {measured['rchar'] / 1e6:.1f} MB"
    )
    return result


def one_size(size: int, work: Path, args, hidden: int) -> tuple[dict, Path, object]:
    dataset, store, labels = work / f"dataset-{size}", work / f"store-{size}", work / f"labels-{size}"
    say(f"size {size:,}: writing the dataset ({size:,} episodes" + (f" + {hidden:,} hidden" if hidden else "") + ")")
    start = time.perf_counter()
    episodes_file, full = write_dataset(dataset, size, hidden, args.frames_per_episode)
    result = {"episodes": size, "write_seconds": round(time.perf_counter() - start, 1)}
    say(f"size {size:,}: ingest")
    result["ingest"] = run_measured("ingest", dataset, store, work, f"ingest-{size}")
    result["frames"] = result["ingest"]["frames"]
    say(f"size {size:,}: relabel")
    result["relabel"] = run_measured("relabel", store, labels, work, f"relabel-{size}")
    return result, episodes_file, full


def ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="episodes per dataset, smallest first")
    parser.add_argument("--frames-per-episode", type=int, default=10, help="mean episode length (lengths vary by +-2)")
    parser.add_argument("--new-fraction", type=float, default=0.01, help="new episodes for the nightly rerun, as a fraction of the largest size")
    parser.add_argument("--workdir", default=None, help="where to make the temporary directory (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the datasets, stores and labels")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    new = max(1, math.ceil(sizes[-1] * args.new_fraction))
    work = Path(tempfile.mkdtemp(prefix="wvm-scale-", dir=args.workdir))
    say(f"work directory {work}; sizes {sizes}, {args.frames_per_episode} frames per episode, nightly +{new} episodes")
    results: dict = {
        "sizes": sizes,
        "frames_per_episode": args.frames_per_episode,
        "frame_size": [HEIGHT, WIDTH],
        "new_episodes": new,
        "goals": GOALS,
    }
    try:
        for size in sizes:
            hidden = new if size == sizes[-1] else 0
            results[str(size)], episodes_file, full = one_size(size, work, args, hidden)
        # nightly: reveal the new episodes of the largest dataset, run both stages again
        largest = sizes[-1]
        first = results[str(largest)]
        pq.write_table(full, episodes_file)
        dataset, store, labels = work / f"dataset-{largest}", work / f"store-{largest}", work / f"labels-{largest}"
        say(f"nightly: {new} new episodes revealed in the {largest:,}-episode dataset; ingest again")
        second = {"ingest": run_measured("ingest", dataset, store, work, "ingest-nightly")}
        say("nightly: relabel again")
        second["relabel"] = run_measured("relabel", store, labels, work, "relabel-nightly")
        for verb in ("ingest", "relabel"):
            if second[verb]["episodes"] != new:
                raise RuntimeError(f"nightly {verb} did {second[verb]['episodes']} episodes, expected {new}")
        first_total = {k: first["ingest"][k] + first["relabel"][k] for k in ("wall_seconds", "pipeline_seconds", "bytes_read")}
        second_total = {k: second["ingest"][k] + second["relabel"][k] for k in ("wall_seconds", "pipeline_seconds", "bytes_read")}
        second["vs_first_run"] = {
            stage: {k: ratio(first[stage][k], second[stage][k]) for k in ("wall_seconds", "pipeline_seconds", "bytes_read")}
            for stage in ("ingest", "relabel")
        }
        second["vs_first_run"]["both"] = {k: ratio(first_total[k], second_total[k]) for k in first_total}
        second["vs_first_run"]["new_episodes_fraction"] = round(new / largest, 4)
        results["nightly"] = second
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    results["ratio_large_over_small"] = {
        "episodes": round(sizes[-1] / sizes[0], 2),
        **{
            stage: {
                "pipeline_seconds_per_episode": ratio(small[stage]["pipeline_seconds_per_episode"], large[stage]["pipeline_seconds_per_episode"]),
                "wall_seconds_per_episode": ratio(small[stage]["wall_seconds_per_episode"], large[stage]["wall_seconds_per_episode"]),
                "peak_rss": ratio(small[stage]["peak_rss_mb"], large[stage]["peak_rss_mb"]),
                "bytes_read_per_episode": ratio(small[stage]["bytes_read"] / sizes[0], large[stage]["bytes_read"] / sizes[-1]),
            }
            for stage in ("ingest", "relabel")
        },
    }
    r, both = results["ratio_large_over_small"], results["nightly"]["vs_first_run"]["both"]
    results["goals_met"] = {
        **{f"{stage}_seconds_per_episode": r[stage]["pipeline_seconds_per_episode"] <= GOALS["seconds_per_episode_ratio"] for stage in ("ingest", "relabel")},
        **{f"{stage}_peak_rss": r[stage]["peak_rss"] <= GOALS["peak_rss_ratio"] for stage in ("ingest", "relabel")},
        "nightly_seconds": both["wall_seconds"] <= GOALS["nightly_fraction"],
        "nightly_bytes_read": both["bytes_read"] <= GOALS["nightly_fraction"],
    }
    results["seconds_total"] = round(time.perf_counter() - _started, 1)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
