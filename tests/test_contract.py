"""The inference contract (schemas/inference.py) that the Triton backend and the in-process
handler both enforce: every rule names what is wrong, and the version string round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import inference as contract

N = 24


def request(b=2, n=N, side=32, texts=None, lengths=None):
    frames = np.zeros((b, n, side, side, 3), np.uint8)
    return frames, texts if texts is not None else ["open the drawer"] * b, lengths if lengths is not None else np.full(b, n, np.int32)


def test_a_good_request_passes():
    contract.check_window_batch(*request(), N)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: request(b=0), "batch of 0 episodes; allowed 1..64"),
        (lambda: request(b=65), "batch of 65 episodes; allowed 1..64"),
        (lambda: request(n=N - 1), r"FRAMES must be \[B, 24, H, W, 3\]"),
        (lambda: request(side=4), "frame size 4x4 outside 8..1024 pixels"),
        (lambda: request(side=1100), "frame size 1100x1100 outside 8..1024 pixels"),
        (lambda: request(texts=["open the drawer"]), "TASK has 1 entries for 2 episodes"),
        (lambda: request(texts=["x" * 1025, "ok"]), "TASK longer than 1024 bytes"),
        (lambda: request(texts=["  ", "ok"]), "TASK must be non-empty text"),
        (lambda: request(lengths=np.full(2, N, np.int64)), "LENGTH must be int32"),
        (lambda: request(lengths=np.array([0, N], np.int32)), "LENGTH must be in 1..24"),
        (lambda: request(lengths=np.array([N + 1, N], np.int32)), "LENGTH must be in 1..24"),
    ],
)
def test_each_violation_is_named(make, message):
    frames, texts, lengths = make()
    with pytest.raises(contract.ContractError, match=message):
        contract.check_window_batch(frames, texts, lengths, N)


def test_frames_must_be_uint8_of_rank_5():
    frames, texts, lengths = request()
    with pytest.raises(contract.ContractError, match="FRAMES must be uint8, got float32"):
        contract.check_window_batch(frames.astype(np.float32), texts, lengths, N)
    with pytest.raises(contract.ContractError, match="FRAMES must have rank 5"):
        contract.check_window_batch(frames[0], texts, lengths, N)


def test_model_version_string_round_trips():
    answer = contract.format_model_version("wvm-small-mw35-v3", "6f9fd6de0e1f9bec")
    assert answer == "wvm-small-mw35-v3@6f9fd6de0e1f9bec"
    assert contract.parse_model_version(answer) == ("wvm-small-mw35-v3", "6f9fd6de0e1f9bec")
    assert contract.parse_model_version("a@b@c") == ("a@b", "c")  # the hash is after the last @
    assert contract.parse_model_version("no-hash") == ("no-hash", "")


def test_robot_states_are_optional_and_checked():
    contract.check_state_batch(None, 2, N)
    good = np.zeros((2, N, 5), np.float32)
    good[1] = np.nan  # an episode recorded without a state
    contract.check_state_batch(good, 2, N)
    partly = good.copy()
    partly[0, 3, 1] = np.nan
    for states, message in [
        (good.astype(np.float64), "STATE must be float32"),
        (good[:, :-1], r"STATE must be \[2, 24, S\]"),
        (good[:1], r"STATE must be \[2, 24, S\]"),
        (np.zeros((2, N, 0), np.float32), r"S in 1..1024"),
        (partly, "STATE of episode 0 is partly NaN"),
        (np.full((2, N, 5), np.inf, np.float32), "STATE has infinite values"),
    ]:
        with pytest.raises(contract.ContractError, match=message):
            contract.check_state_batch(states, 2, N)
    stacked = contract.stack_states([np.ones((N, 2), np.float32), None, np.ones((N, 4), np.float32)], N)
    assert stacked.shape == (3, N, 4) and np.all(stacked[0, :, 2:] == 0) and np.isnan(stacked[1]).all()
    assert contract.stack_states([None, None], N) is None
