"""Probe where checkpoints lose Failure-AUROC: separate the episode quality score into the
parts the rates head makes it from, per kind and per failure mode.

For each checkpoint (a "rates" head) and bench: Failure-AUROC of the quality score (what
`wvm eval` reports), of the final progress alone, and of the head's success probability s
alone; and per kind (expert, hesitation, retry, and the failed episodes split by mode) the
mean s, the rates' sum over the expert-pace steps c/K (1: all work, 0: all pause), the final
progress and the quality; and the experts' mean rate per quarter of the episode (where the
rates call work, pause or undo on motion they cannot place). A failed episode's mode is read
from its robot state after the work stops: the hand still = stall, rising = drop, otherwise
drift (wvm.datagen's three modes).

With `--splice`, each failed episode is also scored with a pause and, separately, an undo spliced
in before its work stops (wvm.data.edit_failed_episode, no lag): a model that reads any pause or
undo as a sign of success (every rendered suboptimal episode succeeds) scores those as successes.

    python scripts/probe_failures.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] [--bench data/mw_bench_reserved] [--splice]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import wvm.model
from pipelines.weights import episode_summary
from schemas import labels as spec
from schemas.ground_truth import SUCCESS_KINDS
from wvm.data import edit_failed_episode
from wvm.evaluate import BenchEpisode, load_bench, predict
from wvm.handlers import LocalHandler
from wvm.metrics import failure_auroc


def failure_mode(states: np.ndarray, stop: int, still: float = 0.02) -> str:
    """stall / drop / drift from the hand's xyz (the first 3 state dimensions) after the work stops at `stop`."""
    hand = np.asarray(states)[max(stop, 0) :, :3]
    span = float(np.linalg.norm(hand[-1] - hand[0]))
    if span < still:
        return "stall"
    return "drop" if hand[-1, 2] - hand[0, 2] > 0.5 * span else "drift"


def spliced(episode: BenchEpisode, kind: str, index: int, rng: np.random.Generator) -> BenchEpisode | None:
    """The failed `episode` with a pause ("hesitation") or an undo ("retry") before its work
    stops, as a new episode `index`; None if it stops too early to splice."""
    steps, truth = edit_failed_episode(np.arange(len(episode.truth)), episode.truth, rng, kinds=(kind,))
    if len(steps) == len(episode.truth):
        return None
    states = None if episode.states is None else episode.states[steps]
    added = len(steps) - len(episode.truth)
    return dataclasses.replace(
        episode, index=index, frames=episode.frames[steps], truth=truth, states=states, seg_start=episode.seg_start + added, seg_end=len(steps) - 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=CHECKPOINT (a value_head 'rates' checkpoint)")
    parser.add_argument("--bench", action="append", help="LeRobot dataset with ground truth beside it (repeatable)")
    parser.add_argument("--splice", action="store_true", help="also score each failed episode with a pause and with an undo before it stops")
    args = parser.parse_args()

    # The head's rates are internal to progress_from_rates: record them on the way through (one
    # batch row per episode, in request order, one frame size).
    recorded: list[np.ndarray] = []  # the real samples' rates per episode
    values_from_rates = wvm.model.progress_from_rates

    def recording(rates, success, valid):
        for r, n in zip(rates.detach().cpu().numpy(), valid.sum(1).tolist()):
            recorded.append(r[:n])
        return values_from_rates(rates, success, valid)

    wvm.model.progress_from_rates = recording
    groups = ("expert", "hesitation", "retry", "stall", "drift", "drop") + (("failed+pause", "failed+undo") if args.splice else ())
    for bench in args.bench or ["data/mw_bench_reserved"]:
        episodes = load_bench(bench)
        group = [failure_mode(e.states, e.seg_start) if e.kind == "failed" else e.kind for e in episodes]
        count = len(episodes)
        if args.splice:
            rng = np.random.default_rng(0)
            next_index = max(e.index for e in episodes) + 1
            failed = [e for e in episodes if e.kind == "failed"]  # the rendered ones only
            for kind, name in (("hesitation", "failed+pause"), ("retry", "failed+undo")):
                for e in failed:
                    if (copy := spliced(e, kind, next_index, rng)) is not None:
                        next_index += 1
                        episodes.append(copy)
                        group.append(name)
        group, rendered = np.array(group), np.arange(len(episodes)) < count
        succeeded = np.array([e.kind in SUCCESS_KINDS for e in episodes])
        print(f"\n{bench}: " + ", ".join(f"{g} {int((group == g).sum())}" for g in groups))
        truth = {g: np.mean([e.truth[-1] for e, k in zip(episodes, group) if k == g]) for g in groups[3:] if (group == g).any()}
        if truth:
            print("  truth final progress: " + ", ".join(f"{g} {v:.2f}" for g, v in truth.items()))
        for name, checkpoint in (m.split("=", 1) for m in args.models):
            recorded.clear()
            with LocalHandler(checkpoint) as handler:
                values, success, _ = predict(handler, episodes)
            s = np.array([success[e.index] for e in episodes])
            work = np.array([r[1:].sum() / max(len(r) - 1, 1) for r in recorded])  # c/K
            summaries = [episode_summary(values[e.index], success[e.index]) for e in episodes]
            quality = np.array([x[spec.QUALITY] for x in summaries])
            final = np.array([x[spec.FINAL_PROGRESS] for x in summaries])
            auroc = {k: failure_auroc(v[rendered], succeeded[rendered]) for k, v in (("quality", quality), ("final", final), ("s", s))}
            print(f"  {name}: Failure-AUROC by " + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()))
            for g in groups:
                at = group == g
                if not at.any():
                    continue
                against = at | succeeded  # this failure mode against every success
                by_mode = f" | AUROC quality {failure_auroc(quality[against], succeeded[against]):.3f} final {failure_auroc(final[against], succeeded[against]):.3f}" if g in groups[3:] else ""
                print(f"    {g:<10} s {s[at].mean():.2f}  c/K {work[at].mean():.2f}  final {final[at].mean():.2f}  quality {quality[at].mean():.2f}{by_mode}")
            quarters = [[] for _ in range(4)]
            for rates, g in zip(recorded, group):
                n = len(rates)
                if g == "expert" and n > 1:
                    for i in range(1, n):  # the rate at sample i is the work since sample i - 1
                        quarters[min(int(4 * (i - 0.5) / (n - 1)), 3)].append(rates[i])
            print("    expert rate by quarter: " + " / ".join(f"{np.mean(q):.2f}" if q else "-" for q in quarters))


if __name__ == "__main__":
    main()
