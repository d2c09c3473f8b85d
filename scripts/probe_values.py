"""Probe what a checkpoint reads from the frames: hand-made episodes built from real expert
episodes of a bench (read at the model's N samples), as recorded, with a stretch of samples
frozen, and with a stretch replaced by earlier samples in reverse (a rewind). A model that reads
the frames keeps values flat over the freeze and lets them fall over the rewind.

    python scripts/probe_values.py CHECKPOINT [--bench data/mw_bench_reserved] [--episodes 8]
"""

from __future__ import annotations

import argparse

import numpy as np

from wvm.evaluate import load_bench
from wvm.handlers import LocalHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--bench", default="data/mw_bench_reserved", help="LeRobot dataset with ground truth beside it")
    parser.add_argument("--episodes", type=int, default=8, help="expert episodes to probe (spread over the bench)")
    args = parser.parse_args()

    with LocalHandler(args.checkpoint) as handler:
        n = handler.geometry.window_frames
        freeze, rewind = slice(n // 3, 2 * n // 3), slice(5 * n // 12, 2 * n // 3)  # 8..15 and 10..15 at N = 24
        experts = [e for e in load_bench(args.bench) if e.kind == "expert" and len(e.frames) >= n]
        step = max(1, len(experts) // args.episodes)
        print(f"{'task':<22} {'expert at freeze ends':<22} {'frozen':<22} {'expert at rewind ends':<22} rewound")
        for episode in experts[::step][: args.episodes]:
            base = episode.frames[np.round(np.linspace(0, len(episode.frames) - 1, n)).astype(int)]
            frozen, rewound = base.copy(), base.copy()
            frozen[freeze] = base[freeze.start]
            back = np.arange(rewind.start - 1, rewind.start - 1 - (rewind.stop - rewind.start), -1).clip(min=0)
            rewound[rewind] = base[back]
            values = handler.run_batch(np.stack([base, frozen, rewound]), [episode.task] * 3, np.full(3, n, np.int32))
            ends = lambda s: np.round(values[:, [s.start, s.stop - 1]], 2)  # noqa: E731
            f, r = ends(freeze), ends(rewind)
            print(f"{episode.task[:22]:<22} {str(f[0]):<22} {str(f[1]):<22} {str(r[0]):<22} {r[2]}")


if __name__ == "__main__":
    main()
