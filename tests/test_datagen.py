"""`wvm datagen metaworld` end to end (README: "render Meta-World expert / hesitation / retry
episodes with ground truth, as LeRobot v3"): one training task, one episode of each kind,
rendered small, then read back with the project's own reader and checked against the ground
truth the module documents (wvm.datagen.metaworld, wvm.metrics.ground_truth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from schemas.ground_truth import GROUND_TRUTH, KINDS, LABELS_SUFFIX
from wvm.datagen.metaworld import CAMERA_KEY_PREFIX, RESERVED_TASKS, task_text, training_tasks

TASK = "reach-v3"  # a training task with short episodes (fast to render)
SIZE = 64


def datagen(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wvm.cli", "datagen", "metaworld", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    """TASK rendered once: one expert, hesitation, retry and failed episode at SIZE px."""
    assert TASK in training_tasks() and TASK not in RESERVED_TASKS
    out = tmp_path_factory.mktemp("datagen") / "mw"
    counts = [f"--{kind}=1" for kind in KINDS]
    result = datagen(out, "--tasks", TASK, *counts, f"--size={SIZE}", "--workers=1", "--seed=5")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


@pytest.mark.slow  # ~20 s of software rendering on this machine
def test_datagen_writes_a_lerobot_v3_dataset_the_reader_opens(rendered):
    from pipelines.sources import open_source
    from pipelines.sources.lerobot import LeRobotSource

    out, summary = rendered
    assert summary["requested"] == summary["episodes"] == len(KINDS)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == len(KINDS)
    source = open_source(str(out))
    assert isinstance(source, LeRobotSource) and source.version == "v3.0"
    camera = CAMERA_KEY_PREFIX + "corner"
    assert source.cameras == [camera] and source.camera_shape(camera) == (SIZE, SIZE)
    assert source.feature_dim("state") == source.feature_dim("action") == 4
    episodes = source.episodes()
    assert [e.index for e in episodes] == list(range(len(KINDS)))
    assert {e.task for e in episodes} == {task_text(TASK)} == {"reach"}
    assert sum(e.length for e in episodes) == summary["frames"] == info["total_frames"]
    for episode in episodes:
        table = source.read_frames(episode)
        assert len(table) == episode.length >= 8
        assert table.frame_index.tolist() == list(range(episode.length))
        np.testing.assert_allclose(table.timestamp, np.arange(episode.length) / info["fps"], atol=1e-4)
        frames = np.stack(list(source.decode(episode, camera, table, np.arange(episode.length))))
        assert frames.shape == (episode.length, SIZE, SIZE, 3) and frames.dtype == np.uint8
        assert frames.std() > 10  # a rendered scene, not a blank image
        # the arm moves: the first and last frames differ, and so do the recorded hand positions
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1
        assert np.linalg.norm(table.state[-1, :3] - table.state[0, :3]) > 0.01


@pytest.mark.slow
def test_datagen_ground_truth_has_one_progress_per_frame_as_documented(rendered):
    from pipelines.sources import open_source

    out, _ = rendered
    labels_path = Path(str(out) + LABELS_SUFFIX)
    table = pq.read_table(labels_path)
    assert table.schema.remove_metadata().equals(GROUND_TRUTH.remove_metadata())
    labels = table.to_pandas()
    lengths = {e.index: e.length for e in open_source(str(out)).episodes()}
    assert len(labels) == sum(lengths.values())
    by_kind = {}
    for episode_index, group in labels.groupby("episode_index"):
        group = group.sort_values("frame_index")
        T = lengths[episode_index]
        assert group["frame_index"].tolist() == list(range(T))  # one value per frame
        (kind,) = group["kind"].unique()
        assert group["env"].unique().tolist() == [TASK]
        progress = group["gt_progress"].to_numpy()
        assert ((progress >= 0) & (progress <= 1)).all() and progress[0] == 0
        by_kind[kind] = (progress, int(group["seg_start"].iloc[0]), int(group["seg_end"].iloc[0]))
    assert sorted(by_kind) == sorted(KINDS)

    progress, m, n = by_kind["expert"]  # t / (T - 1): rises steadily to exactly 1, no segment
    T = len(progress)
    assert (m, n) == (-1, -1) and progress[-1] == 1.0 and (np.diff(progress) > 0).all()
    np.testing.assert_allclose(progress, np.arange(T) / (T - 1))

    progress, m, n = by_kind["hesitation"]  # flat over the pause, then on to 1
    assert 0 < m < n < len(progress) - 1 and progress[-1] == 1.0
    assert np.ptp(progress[m : n + 1]) == 0 and (np.diff(progress) >= 0).all()

    progress, m, n = by_kind["retry"]  # falls over the undone frames, then redone to 1
    assert 0 < m < n < len(progress) - 1 and progress[-1] == 1.0
    assert (np.diff(progress[m : n + 1]) < 0).all() and (np.diff(progress[n:]) > 0).all()

    # failed: the expert's pace until frame m, then held at m / (T - 1) to the last frame: the
    # segment ends at the last frame and progress never reaches 1 (never a success)
    progress, m, n = by_kind["failed"]
    T = len(progress)
    assert 0 < m < n == T - 1
    np.testing.assert_allclose(progress, np.minimum(np.arange(T), m) / (T - 1))
    assert progress.max() < 1 and np.ptp(progress[m:]) == 0


@pytest.mark.slow  # ~10 s of software rendering
def test_failed_detour_episodes_pause_or_undo_then_stop_and_are_labelled_failed(tmp_path):
    """--failed-detour: failures that first hesitate or retry, as real ones do, so a bench can
    check that a pause or an undo is not itself taken as a sign of success. The frames must
    show the detour the ground truth describes: the hand holds still where progress is flat
    before the stop and goes back where it falls."""
    from pipelines.sources import open_source

    out = tmp_path / "fd"
    counts = ["--expert=0", "--hesitation=0", "--retry=0", "--failed-detour=4"]
    result = datagen(out, "--tasks", TASK, *counts, "--size=32", "--workers=1", "--seed=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["episodes"] == 4
    labels = pq.read_table(str(out) + LABELS_SUFFIX).to_pandas()
    source = open_source(str(out))
    detours = set()
    for episode in source.episodes():
        group = labels[labels.episode_index == episode.index].sort_values("frame_index")
        progress, hand = group.gt_progress.to_numpy(), np.stack(list(source.read_frames(episode).state))[:, :3]
        stop, end = int(group.seg_start.iloc[0]), int(group.seg_end.iloc[0])
        assert group.kind.unique().tolist() == ["failed"] and end == len(progress) - 1 == episode.length - 1
        assert progress[0] == 0 and progress.max() < 1 and np.ptp(progress[stop:]) == 0
        steps = np.diff(progress[: stop + 1])
        if (steps < 0).any():  # an undo: the hand goes back towards where it started
            fall = np.flatnonzero(steps < 0)
            a, b = fall[0], fall[-1] + 1
            assert (np.diff(fall) == 1).all()
            away = np.linalg.norm(hand - hand[0], axis=1)  # the hand lags its commands by a frame
            assert away[a + 1 : b + 2].min() < 0.8 * away[a : b + 1].max()
            detours.add("retry")
        else:  # a pause: progress holds for a while before the stop and the hand comes to rest
            flat = np.flatnonzero(steps == 0)
            assert len(flat) >= 2 and (np.diff(flat) == 1).all() and flat[0] >= 1
            a, b = flat[0], flat[-1] + 1
            speed = np.linalg.norm(np.diff(hand, axis=0), axis=1)  # speed[k]: frame k to k + 1
            assert speed[b - 1] < 0.3 * speed[a - 1] and np.linalg.norm(hand[stop] - hand[0]) > 0.01
            detours.add("hesitation")
        assert (steps[steps != 0] != 0).all() and progress[stop] > 0
    assert detours == {"hesitation", "retry"}  # seed 5 draws both


@pytest.mark.slow  # renders one small episode of a reserved task (~10 s)
def test_datagen_warns_when_asked_for_a_reserved_task(tmp_path):
    reserved = RESERVED_TASKS[0]
    result = datagen(tmp_path / "bench", "--tasks", reserved, "--expert=1", "--hesitation=0", "--retry=0", "--size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if "WARNING" in line and "reserved task" in line]
    assert len(warning) == 1 and reserved in warning[0] and "evaluation only" in warning[0]
    assert json.loads(result.stdout)["episodes"] == 1  # a warning, not a refusal
    assert pq.read_table(str(tmp_path / "bench") + LABELS_SUFFIX).column("env").unique().to_pylist() == [reserved]


def test_datagen_unknown_task_or_camera_is_a_clear_error(tmp_path):
    out = tmp_path / "never"
    result = datagen(out, "--tasks", f"{TASK},no-such-task-v3", "--expert=1")
    assert result.returncode == 1
    assert "error: unknown Meta-World task(s): ['no-such-task-v3']" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists() and not Path(str(out) + LABELS_SUFFIX).exists()

    result = datagen(out, "--tasks", TASK, "--expert=1", "--camera=corner", "--camera=cornerX")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: unknown Meta-World camera(s) ['cornerX']" in result.stderr and "corner2" in result.stderr
    assert not out.exists()

    for args, message in (
        (["--camera=gripperPOV", "--camera-jitter=10"], "error: --camera-jitter moves cameras fixed in the scene; ['gripperPOV'] ride on the arm"),
        (["--camera-jitter=90"], "error: --camera-jitter 90.0: expected degrees from 0 to 45"),
    ):
        result = datagen(out, "--tasks", TASK, "--expert=1", *args)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()


def test_datagen_refuses_an_existing_output_and_an_empty_request(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    result = datagen(existing, "--tasks", TASK, "--expert=1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error:" in result.stderr and "already exists" in result.stderr and str(existing) in result.stderr
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]

    empty = tmp_path / "empty"
    result = datagen(empty, "--tasks", TASK, "--expert=0", "--hesitation=0", "--retry=0", "--failed=0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: nothing to render" in result.stderr
    assert not empty.exists()  # refused before anything was written


@pytest.mark.slow
def test_datagen_renders_the_same_scenes_again_from_the_same_seed_and_from_more_cameras(tmp_path, rendered):
    """The README's render commands must reproduce a bench: Meta-World draws object and goal
    placements from a pool it seeds at construction, so the seed has to reach it too. A second
    camera sees the same trajectories: adding it changes nothing the first camera recorded."""
    from pipelines.sources import open_source

    first, _ = rendered
    again = tmp_path / "again"
    counts = [f"--{kind}=1" for kind in KINDS]
    cameras = ["--camera=corner", "--camera=corner2"]
    result = datagen(again, "--tasks", TASK, *counts, f"--size={SIZE}", "--workers=1", "--seed=5", *cameras)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = open_source(str(first)), open_source(str(again))
    camera, other = CAMERA_KEY_PREFIX + "corner", CAMERA_KEY_PREFIX + "corner2"
    assert b.cameras == [camera, other] and b.camera_shape(other) == (SIZE, SIZE)
    for ea, eb in zip(a.episodes(), b.episodes(), strict=True):
        ta, tb = a.read_frames(ea), b.read_frames(eb)
        np.testing.assert_array_equal(np.stack(list(ta.state)), np.stack(list(tb.state)))
        fa = np.stack(list(a.decode(ea, camera, ta, np.arange(ea.length))))
        fb = np.stack(list(b.decode(eb, camera, tb, np.arange(eb.length))))
        np.testing.assert_array_equal(fa, fb)
        # another viewpoint of the same motion: different pixels, changing over the episode
        fo = np.stack(list(b.decode(eb, other, tb, np.arange(eb.length))))
        assert fo.shape == fb.shape and np.abs(fo.astype(int) - fb).mean() > 10
        assert np.abs(fo[-1].astype(int) - fo[0]).mean() > 0.5
    labels = [pq.read_table(str(p) + LABELS_SUFFIX).to_pandas() for p in (first, again)]
    assert labels[0].equals(labels[1])


@pytest.mark.slow
def test_camera_jitter_gives_each_episode_its_own_viewpoint_of_the_same_motion(tmp_path, rendered):
    """--camera-jitter moves the camera, nothing else: the same seed records the same states and
    ground truth as without it, every episode is seen from somewhere else, no two episodes from
    the same place, and a rerun renders the same viewpoints again."""
    from pipelines.sources import open_source

    plain, _ = rendered
    counts = [f"--{kind}=1" for kind in KINDS]
    jittered = tmp_path / "jittered"
    result = datagen(jittered, "--tasks", TASK, *counts, f"--size={SIZE}", "--workers=1", "--seed=5", "--camera-jitter=20")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = open_source(str(plain)), open_source(str(jittered))
    camera = CAMERA_KEY_PREFIX + "corner"
    first_frames = []
    for ea, eb in zip(a.episodes(), b.episodes(), strict=True):
        ta, tb = a.read_frames(ea), b.read_frames(eb)
        np.testing.assert_array_equal(np.stack(list(ta.state)), np.stack(list(tb.state)))
        fa = np.stack(list(a.decode(ea, camera, ta, np.arange(ea.length))))
        fb = np.stack(list(b.decode(eb, camera, tb, np.arange(eb.length))))
        assert fa.shape == fb.shape and np.abs(fa.astype(int) - fb).mean() > 5
        first_frames.append(fb[0].astype(int))
    # first frames differ by 2-4 grey levels between episodes from one camera (object placements);
    # from viewpoints 20 degrees apart by 15 or more
    pairs = [(i, j) for i in range(len(first_frames)) for j in range(i)]
    assert min(np.abs(first_frames[i] - first_frames[j]).mean() for i, j in pairs) > 10
    labels = [pq.read_table(str(p) + LABELS_SUFFIX).to_pandas() for p in (plain, jittered)]
    assert labels[0].equals(labels[1])

    again = tmp_path / "again"  # the expert episode alone draws the same seed as above
    result = datagen(again, "--tasks", TASK, "--expert=1", "--hesitation=0", "--retry=0", f"--size={SIZE}", "--workers=1", "--seed=5", "--camera-jitter=20")
    assert result.returncode == 0, result.stderr[-3000:]
    c = open_source(str(again))
    (ec,) = c.episodes()
    frame = next(iter(c.decode(ec, camera, c.read_frames(ec), np.arange(1))))
    np.testing.assert_array_equal(frame, first_frames[0])


# Compares one camera in a fresh process: two GL contexts of different owners in one process
# (gymnasium's viewer, mujoco.Renderer) do not survive being closed and made again.
SAME_PIXELS = """
import sys, numpy as np, gymnasium as gym
from wvm.datagen.metaworld import _TaskSimulator
task, size, camera = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sim = _TaskSimulator(task, size, ("corner", "corner2"), max_steps=50, placement_seed=3)
env = gym.make("Meta-World/MT1", env_name=task, render_mode="rgb_array", width=size, height=size, camera_name=camera, seed=3)
env.unwrapped.model.vis.quality.shadowsize = 1024  # as datagen always set it
env.reset(seed=11)
sim.env.reset(seed=11)
for _ in range(5):
    env.step(np.full(4, 0.5, np.float32))
    sim.env.step(np.full(4, 0.5, np.float32))
ours, theirs = sim.render()[camera], env.render()[::-1]
print("mismatched", int((ours != theirs).sum()), "std", float(ours.std()))
"""


@pytest.mark.parametrize("camera", ["corner", "corner2"])
def test_datagen_frames_match_the_gymnasium_render_earlier_datasets_were_made_with(camera):
    """One renderer serves every camera now; its frames must be pixel for pixel what
    gymnasium's rgb_array render gave (flipped upright), or new renders would not match the
    benches and fixtures rendered before."""
    result = subprocess.run([sys.executable, "-c", SAME_PIXELS, TASK, str(SIZE), camera], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[0] == "mismatched" and int(words[1]) == 0 and float(words[3]) > 10, result.stdout


def test_waypoint_policy_draws_a_path_per_seed_and_follows_it():
    """A point-mass hand (Meta-World moves the hand by action / 100 per step) reaches every
    point in turn; points stay in the reachable box, 10 cm apart; another seed, another path."""
    from wvm.datagen.metaworld import WaypointPolicy

    start, low, high = np.array([0.0, 0.6, 0.2]), np.array([-0.5, 0.4, 0.05]), np.array([0.5, 1.0, 0.5])
    policy = WaypointPolicy(3, seed=4, start=start, low=low, high=high)
    points = policy.points
    assert points.shape == (3, 3)
    assert (points >= WaypointPolicy.LOW).all() and (points <= WaypointPolicy.HIGH).all()
    path = np.vstack([start, points])
    legs = np.diff(path, axis=0)
    assert min(np.linalg.norm(legs, axis=1)) >= 0.1
    # outward only: farther from the start at every point, no leg turning back on the last
    assert (np.diff(np.linalg.norm(path - start, axis=1)) >= 0.02).all()
    cosines = (legs[1:] * legs[:-1]).sum(1) / np.linalg.norm(legs[1:], axis=1) / np.linalg.norm(legs[:-1], axis=1)
    assert (cosines > -0.5).all()
    np.testing.assert_array_equal(WaypointPolicy(3, 4, start, low, high).points, points)
    assert np.abs(WaypointPolicy(3, 5, start, low, high).points - points).max() > 0.01

    hand, visited = start.copy(), []
    for _ in range(500):
        obs = np.concatenate([hand, np.zeros(36)])
        if policy.succeeded(obs):
            break
        action = policy.get_action(obs)
        assert action.shape == (4,) and np.abs(action).max() <= 1 and action[3] in (-1.0, 1.0)
        hand = hand + action[:3] / 100
        visited.append(policy.reached)
    else:
        pytest.fail("the policy never reached its last point")
    assert visited == sorted(visited) and set(visited) == {0, 1, 2}  # in turn, none skipped
    assert np.linalg.norm(hand - points[-1]) < WaypointPolicy.REACHED

    # the narrower of the env's reach and the box: an env that reaches less keeps its points inside
    small_low, small_high = np.array([-0.15, 0.5, 0.1]), np.array([0.15, 0.75, 0.25])
    inside = WaypointPolicy(3, 9, start, small_low, small_high).points
    assert (inside >= small_low + 0.02).all() and (inside <= small_high - 0.02).all()
    with pytest.raises(ValueError, match="no outward path of 4 points"):  # no room: a clear error, not a hang
        WaypointPolicy(4, 9, start, np.array([-0.1, 0.5, 0.1]), np.array([0.1, 0.7, 0.25]))


def test_waypoint_legs_at_their_own_speed_still_reach_every_point():
    """min_speed < 1: each leg has its own pace in [min_speed, 1] (the path and gripper are the
    seed's as before); the hand still gets through every point, more slowly."""
    from wvm.datagen.metaworld import WaypointPolicy

    start, low, high = np.array([0.0, 0.6, 0.2]), np.array([-0.5, 0.4, 0.05]), np.array([0.5, 1.0, 0.5])

    def run(policy) -> tuple[int, list[float]]:
        hand, peaks = start.copy(), [0.0] * 3
        for step in range(2000):
            obs = np.concatenate([hand, np.zeros(36)])
            if policy.succeeded(obs):
                return step, peaks
            action = policy.get_action(obs)
            peaks[policy.reached] = max(peaks[policy.reached], np.abs(action[:3]).max())
            hand = hand + action[:3] / 100
        pytest.fail("the policy never reached its last point")

    full, slow = WaypointPolicy(3, 4, start, low, high), WaypointPolicy(3, 4, start, low, high, min_speed=0.2)
    np.testing.assert_array_equal(slow.points, full.points)
    np.testing.assert_array_equal(slow.grip, full.grip)
    assert (full.speed == 1).all() and (slow.speed >= 0.2).all() and (slow.speed < 1).all()
    full_steps, _ = run(full)
    slow_steps, peaks = run(slow)
    assert slow_steps > 1.2 * full_steps
    assert all(peak <= speed + 1e-6 for peak, speed in zip(peaks, slow.speed))  # no leg faster than its pace
    assert len(set(np.round(slow.speed, 3))) == 3  # legs differ


@pytest.mark.slow  # ~15 s of software rendering
def test_datagen_waypoints_render_a_new_task_per_episode_in_the_scene(tmp_path):
    """--waypoints: every kind renders (same ground-truth formulas), the labels and the dataset
    name the made-up task, and two expert episodes of one scene follow different paths."""
    from pipelines.sources import open_source

    out = tmp_path / "way"
    counts = ["--expert=2", "--hesitation=1", "--retry=1", "--failed=1"]
    result = datagen(out, "--tasks", TASK, *counts, "--waypoints=3", f"--size={SIZE}", "--workers=1", "--seed=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["episodes"] == 5
    labels = pq.read_table(str(out) + LABELS_SUFFIX).to_pandas()
    assert labels["env"].unique().tolist() == ["waypoints-" + TASK]
    by_kind = {kind: group for kind, group in labels.groupby("kind")}
    assert sorted(by_kind) == sorted(KINDS)
    for kind in ("expert", "hesitation", "retry"):
        assert by_kind[kind]["gt_progress"].iloc[-1] == 1.0
    assert by_kind["failed"]["gt_progress"].max() < 1.0
    source = open_source(str(out))
    episodes = source.episodes()
    assert {e.task for e in episodes} == {task_text("waypoints-" + TASK)} != {task_text(TASK)}
    experts = sorted(set(by_kind["expert"]["episode_index"]))
    ends = [source.read_frames(episodes[i]).state[-1, :3] for i in experts]
    assert np.linalg.norm(ends[0] - ends[1]) > 0.02  # each ends at its own last point

    result = datagen(tmp_path / "never", "--tasks", TASK, "--expert=1", "--waypoints=-1")
    assert result.returncode == 1 and "error: --waypoints -1" in result.stderr and "Traceback" not in result.stderr
    result = datagen(tmp_path / "never", "--tasks", TASK, "--expert=1", "--waypoints=3", "--waypoint-min-speed=0")
    assert result.returncode == 1 and "error: --waypoint-min-speed 0.0" in result.stderr and "Traceback" not in result.stderr
