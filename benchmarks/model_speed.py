"""Model-only labelling speed of several checkpoints, side by side in one run, past releases included.

    python benchmarks/model_speed.py --model v1=git:cdcd49e --model v6=wvm/checkpoints/default \
        --model p2=runs/p2/final [--scale 4] [--repeat 3] [--out benchmarks/results/model_speed.json]

A model is `NAME=CHECKPOINT` (run by this checkout's code) or `NAME=git:COMMIT` (that commit's
shipped default checkpoint run by that commit's own code, extracted with `git archive`: a past
release's model cannot be loaded by today's code, and its speed is that of its code too). Each
labels the same episodes (metaworld_mini's 18 written `scale` times), frames already decoded and
in memory, through its code's own batching (`model_only` of its `benchmarks/relabel_pipeline.py`:
batches of 64, values and OOD scores where the release had them). Every measurement runs in a
fresh child process and times only the labelling; the models take turns `repeat` times, so the
machine's noise hits them alike. A model's figure is its median, in source frames per second
(every frame of an episode counts). The first model is the reference for the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from common import ROOT, replicate, write_results

# Run inside the child, with the code tree's root and benchmarks/ first on sys.path.
_CHILD = """
import json, sys
from pathlib import Path
root, checkpoint, dataset = sys.argv[1:4]
sys.path[:0] = [root + "/benchmarks", root]
from relabel_pipeline import decode_only, model_only
from wvm.handlers import LocalHandler
handler = LocalHandler(checkpoint or None)
handler.load()
_, frames, sampled = decode_only(Path(dataset), handler.geometry)
print(json.dumps({"frames": frames, "seconds": model_only(handler, sampled), "version": handler.version}))
"""


def code_tree(spec: str, work: Path) -> tuple[Path, str]:
    """(code root, checkpoint) for `git:COMMIT` or a checkpoint path run by this checkout."""
    if not spec.startswith("git:"):
        return ROOT, str(Path(spec).resolve())
    commit = spec.removeprefix("git:")
    root = work / f"code-{commit}"
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root, ""  # that release's own default checkpoint


def measure(root: Path, checkpoint: str, dataset: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(root), checkpoint, str(dataset)], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"labelling with {root} {checkpoint or '(default checkpoint)'} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT|NAME=git:COMMIT", help="repeatable; the first is the reference")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_speed.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wvm-bench-"))
    dataset = replicate(args.scale, work / f"x{args.scale}")
    specs = dict(m.split("=", 1) for m in args.model)
    models = {name: code_tree(spec, work) for name, spec in specs.items()}
    reference = next(iter(models))

    runs = {name: [] for name in models}
    for turn in range(args.repeat):
        for name, (root, checkpoint) in models.items():
            runs[name].append(measure(root, checkpoint, dataset))
            print(f"turn {turn + 1}/{args.repeat} {name}: {runs[name][-1]['frames'] / runs[name][-1]['seconds']:.0f} frames/s", flush=True)
    frames = runs[reference][0]["frames"]
    fps = {name: frames / statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    results = {
        "frames": frames,
        "models": {name: {"spec": spec, "version": runs[name][0]["version"]} for name, spec in specs.items()},
        "seconds": {name: [r["seconds"] for r in rs] for name, rs in runs.items()},
        "model_only_frames_per_s": fps,
        f"ratio_to_{reference}": {name: fps[name] / fps[reference] for name in models},
    }
    write_results(results, args.out)


if __name__ == "__main__":
    main()
