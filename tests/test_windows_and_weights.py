"""Episode requests (every frame gets a value, whatever the fps), training episode edits,
advantages and sample weights against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.inference import EpisodeAnswers
from pipelines.weights import AdvantageHistogram, awr_weights, binary_weights, chunk_advantage, episode_summary, top_weights
from pipelines.windows import EpisodeChain, WindowGeometry, label_episodes, sample_positions
from schemas import inference as contract
from wvm.data import EpisodeSampler, TrainingEpisode, edit_episode, edit_failed_episode, reverse_episode
from wvm.metrics import ground_truth

GEOMETRY = WindowGeometry(samples_per_episode=24)


def progress_oracle(truth_by_key):
    """A predictor that returns the true values of the frames it is shown (encoded in pixel 0)."""

    def predict(frames, texts, lengths):
        values = frames[:, :, 0, 0, 0].astype(np.float32) / 255.0
        return EpisodeAnswers(values, np.zeros(len(frames), np.float32), np.full(len(frames), np.nan, np.float32))

    def fetch(chain, indices):
        frames = np.zeros((len(indices), 8, 8, 3), np.uint8)
        frames[:, 0, 0, 0] = np.round(truth_by_key[chain.key][indices] * 255)
        return frames

    return fetch, predict


@pytest.mark.parametrize("length,fps", [(1, 30), (2, 30), (25, 20), (421, 30), (5000, 10), (90, 7.5)])
def test_every_frame_gets_a_value(length, fps):
    truth = np.linspace(0, 1, length)
    chain = EpisodeChain("e", length, fps, "task", GEOMETRY)
    fetch, predict = progress_oracle({"e": truth})
    label_episodes([chain], fetch, predict)
    values = chain.frame_values()
    assert values.shape == (length,) and np.all(np.isfinite(values))
    assert chain.samples[0] == 0 and chain.samples[-1] == length - 1
    np.testing.assert_allclose(values, truth, atol=1 / 255 + 1e-6)  # exact up to pixel quantisation


def test_sampling_reads_every_episode_at_the_same_count():
    assert list(sample_positions(17, 24)) == list(range(17))  # short: every frame
    assert len(sample_positions(25, 24)) == 24 and len(sample_positions(18_000, 24)) == 24
    assert sample_positions(18_000, 24)[-1] == 17_999 and list(sample_positions(1, 24)) == [0]
    chain = EpisodeChain("e", 10, 20, "t", GEOMETRY)
    indices, count = chain.request()  # padded to the request size by repeating the last frame
    assert count == 10 and len(indices) == 24 and list(indices[9:]) == [9] * 15


def test_batching_does_not_change_values():
    truths = {str(i): np.sort(np.random.default_rng(i).random(40 + 7 * i)) for i in range(6)}
    results = []
    for batch_size in (1, 4, 64):
        chains = [EpisodeChain(k, len(v), 20, "t", GEOMETRY) for k, v in truths.items()]
        fetch, predict = progress_oracle(truths)
        label_episodes(chains, fetch, predict, batch_size=batch_size)
        results.append([c.frame_values() for c in chains])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_one_request_per_episode_and_each_sample_read_once():
    calls = []

    def predict(frames, texts, lengths):
        calls.append((frames.shape, list(lengths)))
        return EpisodeAnswers(np.zeros(frames.shape[:2], np.float32), np.full(len(frames), 0.5, np.float32), np.arange(len(frames), dtype=np.float32) / 4)

    chains = [EpisodeChain(str(i), n, 20, "t", GEOMETRY) for i, n in enumerate([5, 30, 100])]
    label_episodes(chains, lambda c, i: np.zeros((len(i), 8, 8, 3), np.uint8), predict, batch_size=64)
    assert calls == [((3, 24, 8, 8, 3), [5, 24, 24])]
    assert [c.ood for c in chains] == [0.5, 0.5, 0.5]
    assert [c.success for c in chains] == [0.0, 0.25, 0.5]  # each episode gets its own answer


def test_requests_carry_each_episodes_robot_state_at_its_samples():
    seen = []

    def predict(frames, texts, lengths, states=None):
        seen.append(states)
        return EpisodeAnswers(np.zeros(frames.shape[:2], np.float32), np.zeros(len(frames), np.float32), np.zeros(len(frames), np.float32))

    recorded = {"0": np.arange(30 * 3, dtype=np.float32).reshape(30, 3), "1": None, "2": np.ones((5, 7), np.float32)}
    chains = [EpisodeChain(k, 30 if k != "2" else 5, 20, "t", GEOMETRY) for k in recorded]
    frames = lambda c, i: np.zeros((len(i), 8, 8, 3), np.uint8)  # noqa: E731
    label_episodes(chains, frames, predict, fetch_states=lambda c, i: None if recorded[c.key] is None else recorded[c.key][i])
    (states,) = seen
    assert states.shape == (3, 24, 7) and states.dtype == np.float32  # zero padded to the widest
    np.testing.assert_array_equal(states[0, :, :3], recorded["0"][chains[0].request()[0]])
    assert np.all(states[0, :, 3:] == 0) and np.isnan(states[1]).all() and np.all(states[2] == 1)
    contract.check_state_batch(states, 3, 24)
    seen.clear()
    label_episodes([EpisodeChain("x", 9, 20, "t", GEOMETRY)], frames, predict, fetch_states=lambda c, i: None)
    assert seen == [None]  # no episode has a state: the request leaves it out


@pytest.mark.parametrize("seed", range(40))
def test_episode_edits_follow_the_ground_truth_formulas(seed):
    """Rewinding at the episode level: the edited frame order matches its kind, and the label
    is the formula's (REFERENCE §2), so an edited expert episode looks like a real one."""
    rng = np.random.default_rng(seed)
    length = int(rng.integers(8, 60))
    frames, kind, m, n = edit_episode(length, rng)
    truth = ground_truth(len(frames), kind, m, n)
    progress = frames / (length - 1)  # the expert's own progress at each shown frame
    if kind == "hesitation":
        assert len(frames) == length + (n - m) and np.all(frames[m : n + 1] == frames[m])
        np.testing.assert_allclose(truth, progress, atol=1e-9)  # exact: v_m = m / (T - 1 - x)
    elif kind == "retry":
        x = n - m
        assert len(frames) == length + 2 * x and np.all(np.diff(frames[m : n + 1]) == -1)
        np.testing.assert_allclose(truth, progress, atol=1.0 / length + 1e-9)  # formula uses T - 2x, not T - 1 - 2x
    else:
        assert kind == "failed" and len(frames) == length and n == length - 1
        assert np.all(frames[m:] == m) and truth[-1] == pytest.approx(m / (length - 1)) and truth[-1] < 1


def test_episode_edits_with_momentum_turn_after_the_label():
    """`max_lag`: the frames keep advancing for up to that many steps after the labelled pause or
    undo starts, as a real arm coasts, then hold or go back; the labels stay the formula's."""
    coasted = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        length = int(rng.integers(8, 60))
        frames, kind, m, n = edit_episode(length, rng, max_lag=2)
        truth = ground_truth(len(frames), kind, m, n)
        progress = frames / (length - 1)
        lag = int(np.argmax(np.diff(frames[m:]) <= 0))  # steps the frames still advance after m
        assert 0 <= lag <= 2 and np.all(np.diff(frames[m : m + lag + 1]) == 1)
        if lag:
            coasted.add(kind)
        if kind == "hesitation":
            assert np.all(frames[m + lag : n + 1] == frames[m + lag]) and np.all(np.diff(frames) >= 0)
            assert len(frames) == length + (n - m) - lag and frames[-1] == length - 1
        elif kind == "retry":
            assert frames[n] < frames[m] and np.all(np.diff(frames[m + lag : n + 1]) == -1)
            assert np.all(np.diff(frames[n:]) == 1) and frames[-1] == length - 1
        else:
            assert len(frames) == length and frames[-1] == min(m + lag, length - 1) and truth[-1] < 1
        # the frames run at most the coast there and back (and the formula's rounding) ahead of the
        # label, as in a rendered retry, whose undo replays the forward actions but starts braking
        np.testing.assert_allclose(truth, progress, atol=(2 * lag + 1) / (length - 1) + 1e-9)
    assert coasted == {"hesitation", "retry", "failed"}


def test_only_the_listed_edit_kinds_coast():
    """`lag_kinds` leaves the other edits turning with the label; the random stream is the same,
    so the listed kinds' edits are unchanged."""
    kinds = {}
    for seed in range(60):
        every = edit_episode(30, np.random.default_rng(seed), max_lag=2)
        some = edit_episode(30, np.random.default_rng(seed), max_lag=2, lag_kinds=("hesitation", "retry"))
        assert every[1:] == some[1:]
        frames, kind, m, _ = some
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "failed":
            np.testing.assert_array_equal(frames, np.minimum(np.arange(30), m))
        else:
            np.testing.assert_array_equal(frames, every[0])
    assert set(kinds) == {"hesitation", "retry", "failed"}


@pytest.mark.parametrize("seed", range(30))
def test_a_failed_episode_can_pause_or_undo_before_it_stops(seed):
    """`edit_failed_episode`: a pause or an undo spliced in before the work stops; the label
    follows the failed episode's own pace at each shown frame (holding in the pause, falling in
    the undo), the frames from the stop on are the original's, and it never reaches 1."""
    rng = np.random.default_rng(seed)
    length = int(rng.integers(10, 60))
    stop = int(rng.integers(5, length - 1))
    truth = ground_truth(length, "failed", stop, length - 1).astype(np.float32)
    steps, labels = edit_failed_episode(np.arange(length), truth, rng)
    assert len(steps) > length and len(labels) == len(steps)
    np.testing.assert_array_equal(steps[-(length - stop - 1) :], np.arange(stop + 1, length))
    np.testing.assert_allclose(labels[-(length - stop) :], truth[stop])  # holds from the stop on, short of 1
    assert labels.max() == pytest.approx(truth[stop]) and truth[stop] < 1
    # no lag: the label is the failed episode's own progress at the shown frame (the retry
    # formula rounds its pace, within a step)
    np.testing.assert_allclose(labels, truth[steps], atol=1.0 / (length - 1) + 1e-6)
    assert np.any(np.diff(steps[: len(steps) - (length - stop)]) <= 0)  # something stops or goes back


def test_the_sampler_edits_failed_episodes_only_when_asked():
    """At failed_edit_p 1 every failed episode pauses or goes back before its work stops (at 0 its
    frames only advance until then), and successful ones are untouched."""
    episodes = [
        TrainingEpisode(np.zeros((30, 4, 4, 3), np.uint8), ground_truth(30, k, 20, 29 if k == "failed" else 25).astype(np.float32), "t", k, 10.0, k)
        for k in ("hesitation", "failed")
    ]

    def before_the_stop(frames, values):  # frame steps while the label is still below its final hold
        return np.diff(frames)[values[1:] < values[-1] - 1e-6]

    plain = EpisodeSampler(episodes, 24, edit_p=0.0).sample(64, np.random.default_rng(0))
    assert all(np.all(before_the_stop(f, v) > 0) for i, f, v in zip(*plain[:3]) if i == 1)
    edited = EpisodeSampler(episodes, 24, edit_p=0.0, failed_edit_p=1.0).sample(64, np.random.default_rng(0))
    np.testing.assert_array_equal(plain[0], edited[0])
    for i, f, v, p in zip(edited[0], edited[1], edited[2], plain[1]):
        if i == 0:
            np.testing.assert_array_equal(f, p)
        else:
            assert np.any(before_the_stop(f, v) <= 0)
            assert v[-1] == pytest.approx(20 / 29) and v.max() < 1


@pytest.mark.parametrize("kind", ["expert", "hesitation", "retry"])
def test_a_reversed_episode_is_its_reverse_task_by_the_same_formula(kind):
    """Played backwards, a successful episode of any kind is one of the same kind (the pause or
    undo at the mirrored place) whose ground truth is the formula's: 1 - the old truth read
    backwards."""
    length, m, n = 30, 9, 15
    truth = ground_truth(length, kind, m, n)
    steps, reversed_truth = reverse_episode(np.arange(length), truth)
    np.testing.assert_array_equal(steps, np.arange(length)[::-1])
    mirrored = ground_truth(length, kind, length - 1 - n, length - 1 - m)
    # the retry formula rounds its pace (T - 2x steps), so the mirrored one is the same within a step
    np.testing.assert_allclose(reversed_truth, mirrored, atol=1.0 / (length - 2 * (n - m)) + 1e-9)
    assert reversed_truth[0] == 0 and reversed_truth[-1] == 1
    falling = np.flatnonzero(np.diff(reversed_truth) < -1e-9)
    assert (len(falling) > 0) == (kind == "retry") and np.all((falling >= length - 1 - n) & (falling < length - 1 - m))


def test_the_sampler_never_reverses_a_failed_episode():
    """A failed episode has no reverse task (it starts where it did not finish): at reverse_p 1
    every successful episode is read backwards and every failed one forwards."""
    kinds = ("expert", "retry", "failed")
    episodes = [
        TrainingEpisode(np.zeros((30, 4, 4, 3), np.uint8), ground_truth(30, k, 10, 29 if k == "failed" else 16).astype(np.float32), "t", k, 10.0, k)
        for k in kinds
    ]
    sampler = EpisodeSampler(episodes, 24, edit_p=0.0, reverse_p=1.0)
    ids, frames, values, valid = sampler.sample(64, np.random.default_rng(0))
    offsets = sampler.offsets
    for i, f, v in zip(ids, frames, values):
        local = f - offsets[i]
        if kinds[i] == "failed":
            assert np.all(np.diff(local) >= 0) and v[-1] < 1
        else:
            assert np.all(np.diff(local) <= 0) and v[0] == 0 and v[-1] == pytest.approx(1)
    assert set(ids.tolist()) == {0, 1, 2}


def test_advantage_and_weights_by_hand():
    values = np.array([0.0, 0.1, 0.3, 0.2, 0.2, 0.5])
    a = chunk_advantage(values, horizon=3)  # V(min(t + 2, 5)) - V(t)
    np.testing.assert_allclose(a, [0.3, 0.1, -0.1, 0.3, 0.3, 0.0], atol=1e-6)
    np.testing.assert_array_equal(binary_weights(a), [1, 1, 0, 1, 1, 1])
    np.testing.assert_allclose(awr_weights(a, tau=10, delta=2.0), [2.0, 2.0, 0.3678794, 2.0, 2.0, 1.0], rtol=1e-6)  # min(e^(10 A), 2)
    np.testing.assert_array_equal(top_weights(a, 0.1), [1, 1, 0, 1, 1, 0])


def test_histogram_cut_keeps_the_top_fraction():
    rng = np.random.default_rng(0)
    advantage = np.clip(rng.normal(0.02, 0.1, 100_000), -1, 1)
    histogram = AdvantageHistogram()
    for part in np.array_split(advantage, 7):
        histogram.add(part)
    cut = histogram.cut_keeping(0.7)
    assert cut == pytest.approx(np.quantile(advantage, 0.3), abs=2e-4)
    assert 0.699 <= np.mean(advantage >= cut) <= 0.702


def test_episode_summary():
    expert = episode_summary(np.linspace(0, 1, 50))
    assert expert["quality"] == pytest.approx(1.0) and expert["monotonicity"] == pytest.approx(1.0)
    stalled = np.concatenate([np.linspace(0, 0.5, 20), np.full(20, 0.5), np.linspace(0.5, 0.4, 10)])
    summary = episode_summary(stalled)
    assert summary["final_progress"] == pytest.approx(0.4) and summary["max_progress"] == pytest.approx(0.5)
    assert summary["flat_fraction"] == pytest.approx(20 / 49, abs=0.03)
    assert summary["falling_fraction"] == pytest.approx(10 / 49, abs=0.03)
    assert summary["quality"] < 0.35
    assert np.isnan(summary["success_probability"])  # no success judgement: quality from final progress


def test_quality_rests_on_the_success_probability_where_the_model_gives_one():
    """A failed episode whose values climb high still gets a low quality when the model judges
    it failed; a successful one with a pause keeps most of its quality."""
    climbed = np.concatenate([np.linspace(0, 0.8, 40), np.full(10, 0.8)])
    failed = episode_summary(climbed, success=0.1)
    assert failed["success_probability"] == pytest.approx(0.1) and failed["final_progress"] == pytest.approx(0.8)
    flat = failed["flat_fraction"]
    assert failed["quality"] == pytest.approx(0.1 * (1 - flat / 2))
    assert episode_summary(climbed)["quality"] == pytest.approx(0.8 * (1 - flat / 2))
    paused = np.concatenate([np.linspace(0, 0.5, 20), np.full(10, 0.5), np.linspace(0.5, 1, 20)])
    assert episode_summary(paused, success=0.9)["quality"] > 4 * failed["quality"]




def test_warped_positions_keep_the_episode_ends_and_order():
    from wvm.data import warped_positions

    rng = np.random.default_rng(0)
    for length in (3, 30, 500):
        positions = warped_positions(length, 24, rng)
        assert positions[0] == 0 and positions[-1] == length - 1 and len(positions) == 24
        assert np.all(np.diff(positions) >= 0)
    gaps = np.diff(warped_positions(10_000, 24, rng))
    assert gaps.max() > 2 * gaps.min() + 1  # uneven speed, unlike the evenly spaced inference grid
