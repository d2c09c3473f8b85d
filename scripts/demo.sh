#!/usr/bin/env bash
# The main job on embedded defaults: set up, render a small Meta-World sample dataset, then run
# the nightly flow once with a local Triton server (the shipped model), a local Dask cluster
# and a temporary local Prefect server. Prints where the labels and the QC report are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WVM=.venv/bin/wvm
SAMPLE=demo/sample_metaworld
OUT=${1:-demo/out}
if [ ! -f "$SAMPLE/meta/info.json" ]; then
  rm -rf "$SAMPLE" "$SAMPLE.labels.parquet"
  mkdir -p demo
  echo "rendering a sample dataset (2 reserved Meta-World tasks, 12 episodes) ..."
  $WVM datagen metaworld --out "$SAMPLE" --tasks door-lock-v3,window-close-v3 \
    --expert 2 --hesitation 2 --retry 2 --seed 7 >/dev/null
fi
$WVM nightly "$SAMPLE" --out "$OUT" --serve > demo/nightly.json
.venv/bin/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
latest = json.load(open(f"{out}/latest.json"))
print(f"\nnightly run {latest['run_id']} published")
for name, source in latest["sources"].items():
    print(f"  {name}: {source['relabel']['episodes_labelled']} episodes labelled into {source['labels']}")
print(f"  QC report: {latest['report']}")
print(f"  latest pointer: {out}/latest.json")
PY
