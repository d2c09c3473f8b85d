"""Meta-World episodes with ground-truth progress, written as a LeRobot v3.0 dataset.

Each episode is the task's scripted expert policy, recorded every k env steps (k varies per
episode, so the model sees several execution speeds), and one of three kinds:

- expert:     the policy as is, until success
- hesitation: at recorded frame m the arm holds still (zero xyz action, gripper unchanged) for x
              recorded frames, then the policy goes on
- retry:      at frame m the last x frames' xyz actions are replayed negated in reverse order, so
              the arm (and whatever it holds) moves back; then the policy redoes the work
- failed:     at frame m the policy is replaced so the task is never completed: the arm stalls
              (holds still), drifts off (moves steadily in a random direction) or drops what it
              holds (opens the gripper and lifts away); the episode lasts as long as the same
              seed's expert episode
- failed_detour: a failed episode that first pauses or undoes part of its work (a hesitation or
              retry segment, half each, before the work stops), as real failures often do. Its
              labels' kind is "failed", so benches score it as a failure; its ground truth
              follows the hesitation or retry formula up to the stop (scaled to end at the
              failed value m / (L - 1), L the expert length) and holds from there
- noisy:      (opt-in, for policy learning) the policy with temporally correlated noise on its
              xyz actions throughout; the recorded actions are the noisy ones actually executed.
              Its ground truth is measured, not modelled: progress at frame t is
              1 - S_t / S_0, S_t the env steps the clean expert needs to succeed from the state of
              frame t (clipped to [0, 1]); on an expert episode this is its pace t / (T - 1)

With `waypoints` N the task is replaced by a procedurally generated one in the same scene: the
hand visits N random points in turn (`WaypointPolicy`), the gripper set at random per leg, and
success is reaching the last point. No two episodes share a path, so nothing about the scene's
appearance says how far along an episode is: only the motion does (a pause is frames that stop
changing, a retry the arm retracing its path). The kinds apply unchanged; labels name the task
`waypoints-<scene task>`.

Expert, hesitation, retry and noisy episodes are kept only if they succeed; failed ones only if
they do not. Ground truth follows REFERENCE §2 (wvm.metrics.ground_truth)
and is written beside the dataset as `<out>.labels.parquet` (schemas.ground_truth). A noisy
episode's `kind` is "noisy" (not one of the schema's KINDS, so `wvm eval` does not score it).

`observation.state` is the hand xyz + gripper opening (obs[:4]); with `full_state` it is the
whole 39-dim Meta-World observation (same first 4 values, then object poses, the previous
step's 18 values and the goal), which a state-based policy needs to solve the task.

Rendering is the slow part (software OpenGL): the 4096-px shadow map Meta-World asks for costs
more than the frame itself, so we render shadows at 1024 px, which looks the same at 128 px.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from schemas import ground_truth as truth_schema
from schemas.ground_truth import GROUND_TRUTH, KINDS, LABELS_SUFFIX
from schemas.validate import conform
from wvm.metrics import ground_truth

# mujoco picks its offscreen GL platform once, when first imported (here or in a forked render
# worker): headless EGL unless the user chose another
os.environ.setdefault("MUJOCO_GL", "egl")

# REFERENCE §4: never train the shipped model on these; they measure generalisation.
RESERVED_TASKS = tuple(
    f"{name}-v3"
    for name in (
        "basketball", "button-press-wall", "coffee-push", "dial-turn", "door-lock", "faucet-open",
        "hammer", "handle-pull-side", "lever-pull", "peg-unplug-side", "pick-place-wall",
        "plate-slide-back", "push-back", "stick-push", "window-close",
    )
)  # fmt: skip

log = logging.getLogger(__name__)

CAMERA_KEY_PREFIX = "observation.images."
# the named cameras of Meta-World's scenes (every task has them all)
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
ARM_CAMERAS = ("behindGripper", "gripperPOV")  # ride on the arm: no fixed viewpoint to jitter


def all_tasks() -> tuple[str, ...]:
    from metaworld.policies import ENV_POLICY_MAP

    return tuple(sorted(ENV_POLICY_MAP))


def training_tasks() -> tuple[str, ...]:
    return tuple(t for t in all_tasks() if t not in RESERVED_TASKS)


WAYPOINTS_PREFIX = "waypoints-"
# Kinds rendered by `_failed_rollout`, and the kind their labels carry where it differs
FAILED_KINDS = ("failed", "failed_detour")
LABEL_KIND = {"failed_detour": "failed"}


def task_text(env_name: str) -> str:
    """'drawer-open-v3' -> 'drawer open' (the phrasing of the reference fixture)."""
    if env_name.startswith(WAYPOINTS_PREFIX):
        return "move the gripper through the points in turn"
    return env_name.removesuffix("-v3").replace("-", " ")


class WaypointPolicy:
    """A task made up per episode: move the hand through `n` random points in turn.

    The points lie in the part of the arm's reach above the table, at least 10 cm apart; each leg
    sets the gripper open or closed at random. The path only leads outward: every point is at
    least 2 cm farther from the start than the one before, and no leg turns back by more than
    120 degrees, so heading back to where the arm was is never part of the work (rendered retries
    are, and must stay tellable from it: experiment log row 45). Proportional control like
    Meta-World's own policies, so the pace resembles theirs; with `min_speed` < 1 each leg moves
    at its own fraction of that pace, drawn from [min_speed, 1], so slow, small motion is work
    too and only a still arm is a pause (unseen tasks' slow phases, e.g. turning a dial, read
    as stalls: experiment log row 47).
    """

    LOW, HIGH = np.array([-0.25, 0.45, 0.1]), np.array([0.25, 0.8, 0.3])
    REACHED = 0.02  # metres from a point that count as being there
    GAIN = 10.0

    def __init__(self, n: int, seed: int, start: np.ndarray, low: np.ndarray, high: np.ndarray, min_speed: float = 1.0):
        rng = np.random.default_rng([seed, 17])
        low, high = np.maximum(low + 0.02, self.LOW), np.minimum(high - 0.02, self.HIGH)
        start = np.asarray(start, dtype=np.float64)
        path = [start]
        for _ in range(1000 * n):
            if len(path) > n:
                break
            point = rng.uniform(low, high)
            leg = point - path[-1]
            farther = np.linalg.norm(point - start) >= np.linalg.norm(path[-1] - start) + 0.02
            last = path[-1] - path[-2] if len(path) > 1 else leg
            turn = np.dot(leg, last) / max(np.linalg.norm(leg) * np.linalg.norm(last), 1e-9)  # cosine
            if np.linalg.norm(leg) >= 0.1 and farther and turn > -0.5:
                path.append(point)
            elif len(path) > 1 and rng.random() < 0.02:
                path.pop()  # likely a dead end (no room farther out): back off one point
        if len(path) <= n:
            raise ValueError(f"no outward path of {n} points fits between {low} and {high} from {start}")
        self.points = np.stack(path[1:])
        self.grip = rng.choice([-1.0, 1.0], size=n)
        self.speed = rng.uniform(min_speed, 1.0, size=n) if min_speed < 1 else np.ones(n)
        self.reached = 0

    def _advance(self, hand: np.ndarray) -> None:
        while self.reached < len(self.points) and np.linalg.norm(self.points[self.reached] - hand) < self.REACHED:
            self.reached += 1

    def succeeded(self, obs: np.ndarray) -> bool:
        self._advance(obs[:3])
        return self.reached == len(self.points)

    def get_action(self, obs: np.ndarray) -> np.ndarray:
        self._advance(obs[:3])
        leg = min(self.reached, len(self.points) - 1)
        move = np.clip(self.GAIN * (self.points[leg] - obs[:3]), -1, 1) * self.speed[leg]
        return np.append(move, self.grip[leg]).astype(np.float32)


@dataclass(frozen=True)
class DatagenConfig:
    out: str
    tasks: tuple[str, ...]
    per_kind: dict[str, int]  # episodes per task for each kind
    seed: int = 0
    size: int = 128
    # Meta-World cameras to render every frame from (one dataset camera key each); the same
    # trajectory seen from several viewpoints, as real multi-camera datasets hold it
    cameras: tuple[str, ...] = ("corner",)
    # Per-episode viewpoint change, in degrees: each episode's cameras orbit the point they look
    # at by up to this much in azimuth and half as much in elevation, and move up to this many
    # percent closer or farther. 0 renders the named cameras as they are.
    camera_jitter: float = 0.0
    fps: int = 20
    record_every: tuple[int, int] = (3, 5)  # env steps per recorded frame, inclusive range
    max_steps: int = 500
    workers: int = 1
    full_state: bool = False  # observation.state = the full 39-dim observation instead of obs[:4]
    noise_scale: float = 0.3  # noisy kind: stationary std of the xyz action noise
    # Seeds Meta-World's pool of object/goal placements (task i of `tasks` gets placement_seed + i),
    # so a rerun renders the same scenes. None derives it from `seed`: 100 * seed, so datasets
    # rendered with different seeds never share a task's pool (fewer than 100 tasks).
    placement_seed: int | None = None
    # 0: each task's own scripted expert. N: a new task per episode in each task's scene, the
    # hand visiting N random points (WaypointPolicy)
    waypoints: int = 0
    # waypoint tasks: each leg's speed is drawn from [waypoint_min_speed, 1] of the full pace
    waypoint_min_speed: float = 1.0

    def __post_init__(self):
        if self.waypoints < 0:
            raise ValueError(f"waypoints must be 0 or more, got {self.waypoints}")
        if not 0 < self.waypoint_min_speed <= 1:
            raise ValueError(f"waypoint_min_speed must be in (0, 1], got {self.waypoint_min_speed}")
        if self.waypoints and self.per_kind.get("noisy", 0):
            # measured ground truth replays the expert from saved physics; a path's progress
            # through its points is not part of that state
            raise ValueError("noisy episodes are not available for waypoint tasks")

    def label_env(self, task: str) -> str:
        """The task name written to the labels' env column (and, through task_text, the dataset)."""
        return WAYPOINTS_PREFIX + task if self.waypoints else task

    def task_placement_seed(self, task: str) -> int:
        base = 100 * self.seed if self.placement_seed is None else self.placement_seed
        return base + self.tasks.index(task)


@dataclass(frozen=True)
class EpisodePlan:
    task: str
    kind: str
    seed: int


@dataclass
class Rollout:
    plan: EpisodePlan
    images: dict[str, np.ndarray]  # camera -> uint8 (T, H, W, 3)
    state: np.ndarray  # float32 (T, 4): hand xyz + gripper opening; (T, 39) with full_state
    action: np.ndarray  # float32 (T, 4)
    seg_start: int
    seg_end: int
    progress: np.ndarray | None = None  # measured ground truth (noisy episodes); else by formula


class _TaskSimulator:
    """One Meta-World task with its expert policy and a fast renderer."""

    def __init__(
        self,
        task: str,
        size: int,
        cameras: tuple[str, ...],
        max_steps: int,
        full_state: bool = False,
        noise_scale: float = 0.3,
        placement_seed: int | None = None,
        camera_jitter: float = 0.0,
        waypoints: int = 0,
        waypoint_min_speed: float = 1.0,
    ):
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the environments)
        import mujoco
        from metaworld.policies import ENV_POLICY_MAP

        self.env = gym.make("Meta-World/MT1", env_name=task, max_episode_steps=10 * max_steps, seed=placement_seed)
        # Hesitation and retry add steps beyond the benchmark's 500-step limit.
        self.env.unwrapped.max_path_length = 10 * max_steps
        model = self.env.unwrapped.model
        model.vis.quality.shadowsize = 1024
        # One offscreen renderer serves every camera: the env's own rgb_array render of that
        # camera gives the same pixels.
        self.renderer, self.cameras = mujoco.Renderer(model, size, size), cameras
        self.policy = ENV_POLICY_MAP[task]()
        self.waypoints, self.waypoint_min_speed = waypoints, waypoint_min_speed
        self.max_steps = max_steps
        self.state_slice = slice(None) if full_state else slice(0, 4)
        self.noise_scale = noise_scale
        self.camera_jitter = camera_jitter
        ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) for camera in cameras]
        self.camera_home = {i: (model.cam_pos[i].copy(), model.cam_quat[i].copy()) for i in ids}

    def place_cameras(self, seed: int, hand: np.ndarray) -> None:
        """This episode's viewpoints (`camera_jitter`): every camera orbits the point of its
        optical axis nearest the hand's start, by a random azimuth and elevation, and moves
        along the axis by a random factor; the same episode seed gives the same viewpoints."""
        if not self.camera_jitter:
            return
        import mujoco

        env = self.env.unwrapped
        rng = np.random.default_rng([seed, 13])
        for i, (home_pos, home_quat) in self.camera_home.items():
            azimuth, elevation = np.radians(self.camera_jitter * rng.uniform(-1, 1, 2) * (1.0, 0.5))
            scale = 1.0 + self.camera_jitter / 100 * rng.uniform(-1, 1)
            rotation = np.empty(9)
            mujoco.mju_quat2Mat(rotation, home_quat)
            # MuJoCo cameras look along their -z; tilting about their x axis (image right) raises
            # or lowers the view, also for a camera looking straight down
            side, forward = rotation.reshape(3, 3)[:, 0], -rotation.reshape(3, 3)[:, 2]
            pivot = home_pos + forward * max(float(np.dot(hand - home_pos, forward)), 0.1)
            turn, tilt, orbit = np.empty(4), np.empty(4), np.empty(4)
            mujoco.mju_axisAngle2Quat(turn, np.array([0.0, 0.0, 1.0]), azimuth)
            mujoco.mju_axisAngle2Quat(tilt, side, elevation)
            mujoco.mju_mulQuat(orbit, turn, tilt)
            offset = np.empty(3)
            mujoco.mju_rotVecQuat(offset, (home_pos - pivot) * scale, orbit)
            quat = np.empty(4)
            mujoco.mju_mulQuat(quat, orbit, home_quat)
            env.model.cam_pos[i], env.model.cam_quat[i] = pivot + offset, quat
        mujoco.mj_forward(env.model, env.data)  # the renderer reads camera poses from data

    def _reset(self, seed: int) -> np.ndarray:
        """Reset the scene (and with `waypoints` draw this seed's path); the first observation."""
        obs, _ = self.env.reset(seed=seed)
        if self.waypoints:
            env = self.env.unwrapped
            self.policy = WaypointPolicy(self.waypoints, seed, obs[:3], env.mocap_low, env.mocap_high, self.waypoint_min_speed)
        return obs

    def _start(self, seed: int) -> np.ndarray:
        """Reset the scene and place this episode's cameras; the first observation."""
        obs = self._reset(seed)
        self.place_cameras(seed, obs[:3])
        return obs

    def _succeeded(self, obs: np.ndarray, info: dict) -> bool:
        return self.policy.succeeded(obs) if self.waypoints else bool(info["success"])

    def render(self) -> dict[str, np.ndarray]:
        """The current frame from every camera."""
        views = {}
        for camera in self.cameras:
            self.renderer.update_scene(self.env.unwrapped.data, camera=camera)
            views[camera] = self.renderer.render()[::-1].copy()  # Meta-World's cameras see the scene upside down
        return views

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def expert_length(self, seed: int, every: int) -> int | None:
        """Recorded length of the plain expert episode for this seed (no rendering)."""
        obs = self._reset(seed)
        for step in range(self.max_steps):
            obs, _, _, _, info = self.env.step(self.policy.get_action(obs))
            if self._succeeded(obs, info):
                return step // every + 1
        return None

    def rollout(self, plan: EpisodePlan, every: int, seg: tuple[int, int] | None) -> Rollout | None:
        """Render one episode; `seg` = (m, x) puts x non-progress frames right after frame m
        (for a failed episode: the work stops after frame m and the episode ends at x frames).

        The action stored with a frame is the one that led to it (zeros for frame 0).
        """
        if plan.kind in FAILED_KINDS:
            return self._failed_rollout(plan, every, *seg)
        obs = self._start(plan.seed)
        images, states, actions, history, snapshots = [], [], [], [], []
        noise = _CorrelatedNoise(self.noise_scale, np.random.default_rng([plan.seed, 11])) if plan.kind == "noisy" else None

        def record(a: np.ndarray) -> None:
            images.append(self.render())
            states.append(obs[self.state_slice].astype(np.float32))
            actions.append(np.asarray(a, dtype=np.float32))
            if noise is not None:
                snapshots.append(self._snapshot(obs))

        record(np.zeros(4))
        m, x = seg if seg else (-1, 0)
        for step in range(1, self.max_steps + 1):
            if seg and len(images) == m + 1:
                injected = _detour_actions(plan.kind, x * every, history)
                for i, a in enumerate(injected, 1):
                    obs, *_ = self.env.step(a)
                    if i % every == 0:
                        record(a)
                seg = None  # inserted
                continue
            a = np.asarray(self.policy.get_action(obs), dtype=np.float32)
            if noise is not None:
                a = np.clip(a + noise.sample(), -1, 1).astype(np.float32)
            obs, _, _, _, info = self.env.step(a)
            history.append(a)
            succeeded = self._succeeded(obs, info)
            if succeeded or step % every == 0:
                record(a)
            if succeeded:
                if seg:
                    return None  # succeeded before the planned segment
                seg_start, seg_end = (m, m + x) if m >= 0 else (-1, -1)
                progress = self._measured_progress(snapshots) if noise is not None else None
                return Rollout(plan, _stack_views(images), np.stack(states), np.stack(actions), seg_start, seg_end, progress)
        return None

    def _snapshot(self, obs: np.ndarray) -> tuple:
        """Everything the clean expert's rollout from this moment depends on."""
        import mujoco

        env = self.env.unwrapped
        physics = np.empty(mujoco.mj_stateSize(env.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(env.model, env.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        return physics, env._prev_obs.copy(), env.curr_path_length, obs.copy()

    def _measured_progress(self, snapshots: list[tuple]) -> np.ndarray:
        """1 - S_t / S_0 per recorded frame, S_t the steps the clean expert needs from there
        (the last frame is the success itself: S = 0). Leaves the env mid-episode; callers reset."""
        import mujoco

        env = self.env.unwrapped
        steps_to_go = []
        for physics, prev_obs, path_length, obs in snapshots[:-1]:
            mujoco.mj_setState(env.model, env.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(env.model, env.data)
            env._prev_obs, env.curr_path_length = prev_obs.copy(), path_length
            needed = self.max_steps  # never succeeding counts as the whole budget
            for step in range(1, self.max_steps + 1):
                obs, _, _, _, info = env.step(self.policy.get_action(obs))
                if info["success"]:
                    needed = step
                    break
            steps_to_go.append(needed)
        steps_to_go.append(0)
        s = np.asarray(steps_to_go, dtype=np.float64)
        return np.clip(1.0 - s / max(s[0], 1.0), 0.0, 1.0)

    def _failed_rollout(
        self, plan: EpisodePlan, every: int, m: int, length: int, detour: tuple[str, int, int] | None = None
    ) -> Rollout | None:
        """The expert until frame m, then a failure mode until `length` frames; None if the
        task succeeds anyway. `detour` = (kind, d, x) first pauses ("hesitation") or undoes
        ("retry") x frames of work after frame d < m; the stop and the end move later by the
        frames the detour adds (x for a pause, 2x for an undo and its redo)."""
        rng = np.random.default_rng([plan.seed, 7])
        mode = ("stall", "drift", "drop")[int(rng.integers(0, 3))]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        obs = self._start(plan.seed)
        images, states, actions = [self.render()], [obs[self.state_slice].astype(np.float32)], [np.zeros(4, np.float32)]
        last = np.zeros(4, np.float32)
        history = []
        kind, d, x = detour or ("", -1, 0)
        added = {"": 0, "hesitation": x, "retry": 2 * x}[kind]
        stop, end = m + added, length + added
        step = 0
        while len(images) < end:
            if len(images) == d + 1:  # the detour, as `rollout` injects it into a successful episode
                injected, d = _detour_actions(kind, x * every, history), -1
            elif len(images) <= stop:
                last = np.asarray(self.policy.get_action(obs), dtype=np.float32)
                history.append(last)
                injected = [last]
            elif mode == "stall":
                injected = [np.array([0, 0, 0, last[3]], np.float32)]
            elif mode == "drift":
                injected = [np.append(0.6 * direction + 0.1 * rng.normal(size=3), last[3]).astype(np.float32)]
            else:  # drop: open the gripper and lift away
                injected = [np.array([0.0, 0.0, 0.5, -1.0], np.float32)]
            for a in injected:
                step += 1
                obs, _, _, _, info = self.env.step(np.clip(a, -1, 1))
                if self._succeeded(obs, info):
                    return None
                if step % every == 0 and len(images) < end:
                    images.append(self.render())
                    states.append(obs[self.state_slice].astype(np.float32))
                    actions.append(a)
        progress = None
        if detour:  # the detour's formula up to the stop, scaled to the failed value there
            held = m / (length - 1)
            before = ground_truth(stop + 1, kind, detour[1], detour[1] + x) * held
            progress = np.concatenate([before, np.full(end - stop - 1, held)])
        return Rollout(plan, _stack_views(images), np.stack(states), np.stack(actions), stop, end - 1, progress)


def _detour_actions(kind: str, steps: int, history: list[np.ndarray]) -> list[np.ndarray]:
    """The env actions of a pause ("hesitation": the arm holds still, the gripper as it was) or
    an undo ("retry": the last `steps` xyz actions negated, newest first) after `history`."""
    if kind == "hesitation":
        hold = np.zeros(4, dtype=np.float32)
        hold[3] = history[-1][3] if history else -1.0
        return [hold] * steps
    return [a * np.array([-1, -1, -1, 1], np.float32) for a in reversed(history[-steps:])]


def _stack_views(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {camera: np.stack([f[camera] for f in frames]) for camera in frames[0]}


class _CorrelatedNoise:
    """Ornstein-Uhlenbeck noise on the xyz action (gripper untouched): correlated over about 20
    env steps, so it pushes the arm off course for a while, as a shaky operator would, instead
    of averaging out within a frame."""

    THETA = 0.05  # mean reversion per env step

    def __init__(self, scale: float, rng: np.random.Generator):
        self.scale, self.rng = scale, rng
        self.value = rng.normal(size=3) * scale

    def sample(self) -> np.ndarray:
        kick = self.scale * np.sqrt(2 * self.THETA) * self.rng.normal(size=3)
        self.value = (1 - self.THETA) * self.value + kick  # stationary std = scale
        return np.append(self.value, 0.0).astype(np.float32)


def _simulate_task(args: tuple[DatagenConfig, str, list[EpisodePlan]]) -> list[Rollout]:
    config, task, plans = args
    placement_seed = config.task_placement_seed(task)
    sim = _TaskSimulator(
        task,
        config.size,
        config.cameras,
        config.max_steps,
        config.full_state,
        config.noise_scale,
        placement_seed,
        config.camera_jitter,
        config.waypoints,
        config.waypoint_min_speed,
    )
    rollouts = []
    for plan in plans:
        rollout = None
        for attempt in range(5):  # a different seed when an episode fails or is too short
            seed = plan.seed + 100_003 * attempt
            rng = np.random.default_rng(seed)
            every = int(rng.integers(config.record_every[0], config.record_every[1] + 1))
            try:
                length = sim.expert_length(seed, every)
            except Exception as exc:  # e.g. no waypoint path fits this scene's reach
                log.warning("%s seed %d: %s", task, seed, exc)
                continue
            if length is None or length < 8:
                continue
            seg = None
            if plan.kind == "hesitation":
                x = int(rng.integers(max(2, length // 5), max(3, length // 2) + 1))
                m = int(rng.integers(1, max(2, int(0.8 * length))))
                seg = (m, x)
            elif plan.kind == "retry":
                x = int(rng.integers(max(2, length // 6), max(3, length // 3) + 1))
                m = int(rng.integers(x, max(x + 1, int(0.8 * length))))
                seg = (m, x)
            elif plan.kind == "failed":
                m = int(rng.integers(max(1, int(0.2 * length)), max(2, int(0.8 * length))))
                seg = (m, length)
            elif plan.kind == "failed_detour":  # room for the detour before the stop
                m = int(rng.integers(max(4, int(0.4 * length)), max(5, int(0.8 * length))))
                if rng.random() < 0.5:
                    x = int(rng.integers(max(2, length // 5), max(3, length // 2) + 1))
                    detour = ("hesitation", int(rng.integers(1, m)), x)
                else:
                    x = int(rng.integers(2, max(3, m // 3 + 1)))
                    detour = ("retry", int(rng.integers(x, m)), x)
                seg = (m, length, detour)
            try:
                rollout = sim.rollout(EpisodePlan(task, plan.kind, seed), every, seg)
            except Exception as exc:  # a simulator hiccup costs one episode, not the whole job
                log.warning("%s %s seed %d failed: %s", task, plan.kind, seed, exc)
                rollout = None
            if rollout is not None:
                break
        if rollout is not None:
            rollouts.append(rollout)
    sim.close()
    return rollouts


def generate(config: DatagenConfig) -> dict:
    """Render all episodes and write the dataset plus its labels. Returns a summary."""
    from pipelines.sources.lerobot import LeRobotV3Writer

    rng = np.random.default_rng(config.seed)
    jobs = []
    for task in config.tasks:
        plans = [
            EpisodePlan(task, kind, int(rng.integers(0, 2**31 - 1)))
            # new kinds last: existing seeds keep their plans
            for kind in (*KINDS, "noisy", "failed_detour")
            for _ in range(config.per_kind.get(kind, 0))
        ]
        jobs.append((config, task, plans))
    writer = LeRobotV3Writer(
        root=config.out,
        fps=config.fps,
        robot_type="sawyer",
        cameras={CAMERA_KEY_PREFIX + camera: (config.size, config.size) for camera in config.cameras},
        state_dim=39 if config.full_state else 4,
        action_dim=4,
    )
    labels = []
    total = sum(len(j[2]) for j in jobs)
    with tqdm(total=total, desc="render", unit="ep") as bar, ProcessPoolExecutor(config.workers) as pool:
        for rollouts in pool.map(_simulate_task, jobs):
            for r in rollouts:
                views = {CAMERA_KEY_PREFIX + camera: images for camera, images in r.images.items()}
                env = config.label_env(r.plan.task)
                index = writer.add_episode(views, r.state, r.action, task_text(env))
                T = len(r.state)
                gt = r.progress if r.progress is not None else ground_truth(T, r.plan.kind, r.seg_start, r.seg_end)
                labels.append(
                    pa.table(
                        {
                            truth_schema.EPISODE_INDEX: np.full(T, index),
                            truth_schema.FRAME_INDEX: np.arange(T),
                            truth_schema.GT_PROGRESS: gt,
                            truth_schema.KIND: [LABEL_KIND.get(r.plan.kind, r.plan.kind)] * T,
                            truth_schema.ENV: [env] * T,
                            truth_schema.SEG_START: np.full(T, r.seg_start),
                            truth_schema.SEG_END: np.full(T, r.seg_end),
                        }
                    )
                )
            bar.update(len(rollouts) if rollouts else 0)
    writer.close()
    table = conform(pa.concat_tables(labels), GROUND_TRUTH, "labels")
    pq.write_table(table, config.out.rstrip("/") + LABELS_SUFFIX)
    return {"episodes": len(labels), "frames": table.num_rows, "out": config.out, "requested": total}
