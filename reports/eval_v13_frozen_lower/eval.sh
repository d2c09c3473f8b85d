#!/usr/bin/env bash
# Rows 78-79: the lower two video layers frozen at stage 1's weights (configs/wvm_frozen_lower.json),
# seeds 0-2, beside v13's recipe (seeds 0-2) and the whole stream frozen (row 77's runs, same stage 1);
# and both frozen recipes from a stage 1 whose world model trained 5000 steps (runs/stage1_long, seed 0).
# reports/eval_v13_frozen_lower/eval.sh state|video OUT (video: every model from the frames alone, reserved and G1)
# runs/v13 = `git show a72e150:wvm/checkpoints/default/{config.json,model.safetensors}` (the default until v14)
set -euo pipefail
cd /work/main && source .venv/bin/activate
mode=$1 out=$2
declare -A ck=(
  ["v13 s0"]=runs/v13 ["v13 s1"]=runs/v13r_s1/final ["v13 s2"]=runs/v13r_s2/final
  ["frozen s0"]=runs/abl74_frozen_s0/final ["frozen s1"]=runs/abl74_frozen_s1/final
  ["lower 2 frozen s0"]=runs/abl78_lower2_s0/final ["lower 2 frozen s1"]=runs/abl78_lower2_s1/final ["lower 2 frozen s2"]=runs/abl78_lower2_s2/final
  ["frozen, long stage 1 s0"]=runs/abl79_frozen_long_s0/final ["lower 2 frozen, long stage 1 s0"]=runs/abl79_lower2_long_s0/final
)
args=()
for name in "v13 s0" "v13 s1" "v13 s2" "frozen s0" "frozen s1" "lower 2 frozen s0" "lower 2 frozen s1" "lower 2 frozen s2" "frozen, long stage 1 s0" "lower 2 frozen, long stage 1 s0"; do
  args+=(--model "$name=${ck[$name]}")
  [ "$mode" = video ] && args+=(--video-only "$name")
done
benches=(--bench reserved=data/mw_bench_reserved --bench g1=../shared/fixtures/g1_bottle_v21,expert)
if [ "$mode" = state ]; then
  benches=(--bench reserved=data/mw_bench_reserved --bench reserved_c2=data/mw_bench_reserved_c2 --bench seen=data/mw_bench_seen --bench g1=../shared/fixtures/g1_bottle_v21,expert)
fi
wvm eval "${benches[@]}" "${args[@]}" \
  --group "v13 recipe=v13 s0,v13 s1,v13 s2" --group "frozen stream=frozen s0,frozen s1" \
  --group "lower 2 frozen=lower 2 frozen s0,lower 2 frozen s1,lower 2 frozen s2" --out "$out"
