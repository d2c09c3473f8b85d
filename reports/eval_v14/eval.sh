#!/usr/bin/env bash
# v14's recipe against issue #10's ablations at three seeds each, on the same data and stage-1 encoder
# (experiment log row 83): v14 = row 81's frozen-stream recipe (seed 0 shipped, seeds 1-2 reports/eval_s2views/configs);
# the video stream from scratch and without video loss (seed 0: reports/eval_s2views/configs/abl81_*; seeds 1-2:
# configs/abl82_*, = configs/wvm_{scratch,no_video}.json with the stage-1 run at runs/stage1_views_ae); the static
# per-frame model (configs/static_s0.json, v14 data and encoder). Configs point at runs/ (untracked); models not trained here are skipped.
# scratch s1 was trained with the first, one-Gaussian latent OOD score: its Gaussians are refit
# (`wvm train --config configs/abl82_scratch_s1.json --out runs/abl82_scratch_s1_ood --refit-ood runs/abl82_scratch_s1/final`).
# reports/eval_v14/eval.sh OUT [THREADS]
set -euo pipefail
cd /work/main && source .venv/bin/activate
out=$1 threads=${2:-0}
declare -A ck=(
  ["v14 s0"]=wvm/checkpoints/default ["v14 s1"]=runs/abl80c_frozen_s2views_s1/final ["v14 s2"]=runs/abl80c_frozen_s2views_s2/final
  ["scratch s0"]=runs/abl81_scratch_s2views_s0/final ["scratch s1"]=runs/abl82_scratch_s1_ood/final ["scratch s2"]=runs/abl82_scratch_s2/final
  ["no video loss s0"]=runs/abl81_novideo_s2views_s0/final ["no video loss s1"]=runs/abl82_novideo_s1/final ["no video loss s2"]=runs/abl82_novideo_s2/final
  ["static s0"]=runs/static82_s0/final
)
args=() groups=()
for r in "v14" "scratch" "no video loss" "static"; do
  members=()
  for s in 0 1 2; do
    name="$r s$s"
    if [ -e "${ck[$name]:-/nonexistent}" ]; then args+=(--model "$name=${ck[$name]}"); members+=("$name"); fi
  done
  if [ ${#members[@]} -ge 2 ]; then groups+=(--group "$r=$(IFS=,; echo "${members[*]}")"); fi
done
wvm eval --bench reserved=data/mw_bench_reserved --bench reserved_c2=data/mw_bench_reserved_c2 --bench seen=data/mw_bench_seen \
  --bench g1=../shared/fixtures/g1_bottle_v21,expert "${args[@]}" "${groups[@]}" --threads "$threads" --out "$out"
