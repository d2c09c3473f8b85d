#!/usr/bin/env bash
# v13's recipe, its three video-stream ablations and a frozen random stream, two seeds each (row 77).
# runs/eval_s12.sh state OUT | runs/eval_s12.sh video OUT (every model scored from the frames alone, reserved and G1 only)
# runs/v13 = `git show a72e150:wvm/checkpoints/default/{config.json,model.safetensors}` (the default until v14)
set -euo pipefail
cd /work/main && source .venv/bin/activate
mode=$1 out=$2
declare -A ck=(
  ["v13 s0"]=runs/v13 ["v13 s1"]=runs/v13r_s1/final
  ["no video loss s0"]=runs/abl74_novideo_s0/final ["no video loss s1"]=runs/abl74_novideo_s1/final
  ["from scratch s0"]=runs/abl74_scratch_s0/final ["from scratch s1"]=runs/abl74_scratch_s1/final
  ["frozen s0"]=runs/abl74_frozen_s0/final ["frozen s1"]=runs/abl74_frozen_s1/final
  ["frozen random s0"]=runs/abl77_frozenrand_s0/final ["frozen random s1"]=runs/abl77_frozenrand_s1/final
)
args=()
for name in "v13 s0" "v13 s1" "no video loss s0" "no video loss s1" "from scratch s0" "from scratch s1" "frozen s0" "frozen s1" "frozen random s0" "frozen random s1"; do
  args+=(--model "$name=${ck[$name]}")
  [ "$mode" = video ] && args+=(--video-only "$name")
done
benches=(--bench reserved=data/mw_bench_reserved --bench g1=../shared/fixtures/g1_bottle_v21,expert)
if [ "$mode" = state ]; then
  benches=(--bench reserved=data/mw_bench_reserved --bench reserved_c2=data/mw_bench_reserved_c2 --bench seen=data/mw_bench_seen --bench g1=../shared/fixtures/g1_bottle_v21,expert)
fi
wvm eval "${benches[@]}" "${args[@]}" \
  --group "v13 recipe=v13 s0,v13 s1" --group "no video loss=no video loss s0,no video loss s1" \
  --group "from scratch=from scratch s0,from scratch s1" --group "frozen stream=frozen s0,frozen s1" --group "frozen random stream=frozen random s0,frozen random s1" \
  --out "$out"
