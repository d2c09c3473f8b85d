#!/usr/bin/env bash
# Row 80: stage 1 on more viewpoints (configs/: stage1_views.json adds the training tasks from jittered
# corner3 and topview cameras to the 5000-step world model of row 79, same encoder), then the frozen
# stream and the lower two layers frozen on it, beside v13's recipe, row 78 and row 79; row 80b: the frozen stream
# on a stage 1 that also retrains its encoder on the extra views (configs/stage1_views_ae.json). Configs here point
# at runs/ (untracked); models not trained on this machine are skipped.
# reports/eval_v13_views/eval.sh state|video OUT (video: every model from the frames alone, reserved and G1)
# runs/v13 = `git show a72e150:wvm/checkpoints/default/{config.json,model.safetensors}` (the default until v14)
set -euo pipefail
cd /work/main && source .venv/bin/activate
mode=$1 out=$2
declare -A ck=(
  ["v13 s0"]=runs/v13 ["v13 s1"]=runs/v13r_s1/final ["v13 s2"]=runs/v13r_s2/final
  ["lower 2 frozen s0"]=runs/abl78_lower2_s0/final ["lower 2 frozen s1"]=runs/abl78_lower2_s1/final ["lower 2 frozen s2"]=runs/abl78_lower2_s2/final
  ["frozen, long stage 1 s0"]=runs/abl79_frozen_long_s0/final ["lower 2 frozen, long stage 1 s0"]=runs/abl79_lower2_long_s0/final
  ["frozen on views stage 1 s0"]=runs/abl80_frozen_views_s0/final ["frozen on views stage 1 s1"]=runs/abl80_frozen_views_s1/final
  ["frozen on views stage 1 and encoder s0"]=runs/abl80b_frozen_views_ae_s0/final ["frozen on views stage 1 and encoder s1"]=runs/abl80b_frozen_views_ae_s1/final
  ["lower 2 frozen on views stage 1 s0"]=runs/abl80_lower2_views_s0/final ["lower 2 frozen on views stage 1 s1"]=runs/abl80_lower2_views_s1/final
)
args=()
for name in "v13 s0" "v13 s1" "v13 s2" "lower 2 frozen s0" "lower 2 frozen s1" "lower 2 frozen s2" \
    "frozen, long stage 1 s0" "lower 2 frozen, long stage 1 s0" \
    "frozen on views stage 1 s0" "frozen on views stage 1 s1" "frozen on views stage 1 and encoder s0" "frozen on views stage 1 and encoder s1" "lower 2 frozen on views stage 1 s0" "lower 2 frozen on views stage 1 s1"; do
  [ -e "${ck[$name]}" ] || { echo "skipping $name: ${ck[$name]} not trained" >&2; continue; }
  args+=(--model "$name=${ck[$name]}")
  [ "$mode" = video ] && args+=(--video-only "$name")
done
groups=(--group "v13 recipe=v13 s0,v13 s1,v13 s2" --group "lower 2 frozen=lower 2 frozen s0,lower 2 frozen s1,lower 2 frozen s2")
for r in "frozen on views stage 1" "lower 2 frozen on views stage 1" "frozen on views stage 1 and encoder"; do
  if [ -e "${ck["$r s1"]}" ]; then groups+=(--group "$r=$r s0,$r s1"); fi  # a group once both seeds are trained
done
benches=(--bench reserved=data/mw_bench_reserved --bench g1=../shared/fixtures/g1_bottle_v21,expert)
if [ "$mode" = state ]; then
  benches=(--bench reserved=data/mw_bench_reserved --bench reserved_c2=data/mw_bench_reserved_c2 --bench seen=data/mw_bench_seen --bench g1=../shared/fixtures/g1_bottle_v21,expert)
fi
wvm eval "${benches[@]}" "${args[@]}" "${groups[@]}" --out "$out"
