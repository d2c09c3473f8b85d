"""Windowing (every frame gets a value, whatever the fps), training clips, advantages and
sample weights against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from wvm.data import clip_indices, sampling_stride
from wvm.weights import AdvantageHistogram, awr_weights, binary_weights, chunk_advantage, episode_summary, top_weights
from wvm.windows import EpisodeChain, WindowGeometry, label_episodes

GEOMETRY = WindowGeometry(horizon=4, samples_per_episode=20, max_sample_interval_s=1.0)


def progress_oracle(truth_by_key):
    """A predictor that returns the true values of the frames it is shown (encoded in pixel 0)."""

    def predict(frames, texts, prefix):
        return frames[:, 1:, 0, 0, 0].astype(np.float32) / 255.0

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
    np.testing.assert_allclose(values[1:], truth[1:], atol=1 / 255 + 1e-6)  # exact up to pixel quantisation


def test_sampling_covers_episodes_whatever_the_fps():
    from wvm.data import sample_positions

    assert list(sample_positions(17, 20, 20, 1.0)) == list(range(17))  # short: every frame
    assert len(sample_positions(25, 20, 20, 1.0)) == 20 and len(sample_positions(421, 30, 20, 1.0)) == 20
    long = sample_positions(18_000, 30, 20, 1.0)  # never sparser than one sample a second
    assert np.diff(long).max() <= 30 and long[-1] == 17_999
    assert sampling_stride(421, 30, 20, 1.0) == pytest.approx(420 / 19)


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


def test_prefix_value_is_chained_and_averaged():
    seen = []

    def predict(frames, texts, prefix):
        seen.append(float(prefix[0]))
        return np.full((len(frames), 4), float(len(seen)) / 10, np.float32)

    chain = EpisodeChain("e", 8, 20, "t", GEOMETRY)
    label_episodes([chain], lambda c, i: np.zeros((len(i), 8, 8, 3), np.uint8), predict)
    # window 0 starts from 0; window 1's prefix is sample 1, predicted only by window 0 (0.1);
    # window 2's prefix is sample 2, predicted by windows 0 and 1: mean(0.1, 0.2)
    assert seen[:3] == pytest.approx([0.0, 0.1, 0.15])


def test_clip_indices_rewinding():
    rng = np.random.default_rng(0)
    kinds = {"rising": 0, "falling": 0, "flat": 0}
    for _ in range(2000):
        idx = clip_indices(100, 3.0, 4, rng)
        assert idx.shape == (9,) and idx.min() >= 0 and idx.max() <= 99
        steps = np.diff(idx)
        if np.any(steps < 0):
            kinds["falling"] += 1
        elif np.any(steps == 0) and idx[-1] < 99 and idx[0] > 0:
            kinds["flat"] += 1
        else:
            kinds["rising"] += 1
    assert 0.4 < kinds["falling"] / 2000 < 0.55  # rewind ratio 0.5 (clamping at the end hides a few)
    assert 0.03 < kinds["flat"] / 2000 < 0.12  # plateau ratio 0.1


def test_advantage_and_weights_by_hand():
    values = np.array([0.0, 0.1, 0.3, 0.2, 0.2, 0.5])
    a = chunk_advantage(values, horizon=3)  # V(min(t + 2, 5)) - V(t)
    np.testing.assert_allclose(a, [0.3, 0.1, -0.1, 0.3, 0.3, 0.0], atol=1e-6)
    np.testing.assert_array_equal(binary_weights(a), [1, 1, 0, 1, 1, 1])
    np.testing.assert_allclose(awr_weights(a, tau=10, delta=2.0), np.minimum(np.exp(10 * a), 2.0), rtol=1e-6)
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


def test_windows_with_an_anchor_start_with_the_first_frame():
    anchored = WindowGeometry(horizon=4, samples_per_episode=20, max_sample_interval_s=1.0, anchor_frame=True)
    chain = EpisodeChain("e", 60, 20, "t", anchored)
    assert anchored.window_frames == 6
    for w in range(chain.windows):
        idx = chain.indices(w)
        assert idx[0] == 0 and len(idx) == 6 and idx[1] == chain.samples[w]
