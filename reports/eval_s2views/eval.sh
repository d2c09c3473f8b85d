#!/usr/bin/env bash
# Row 81: stage 2 on the extra cameras too. Row 80b's stage 1 (reports/eval_v13_views/configs/stage1_views_ae.json:
# the training tasks also from jittered corner3 and topview, encoder retrained on them), then the frozen stream
# trained on those cameras' labels as well (configs/abl80c_*: row 80b's stage-2 config plus data/mw_views21 with
# "camera": "all"), and its ablations on the same data and encoder (configs/abl81_*: the stream from scratch, and
# without the video loss), beside the shipped v13 and row 80b's third seed (its seeds 0-1 were trained on an earlier machine; their
# numbers are in reports/eval_v13_views). Configs point at runs/ (untracked);
# models not trained on this machine are skipped.
# reports/eval_s2views/eval.sh OUT [THREADS]  (THREADS: torch threads, e.g. 1 beside a running training)
# runs/v13 = `git show a72e150:wvm/checkpoints/default/{config.json,model.safetensors}` (the default until v14)
set -euo pipefail
cd /work/main && source .venv/bin/activate
out=$1 threads=${2:-0}
declare -A ck=(
  ["v13 s0"]=runs/v13
  ["80b s2"]=runs/abl80b_frozen_views_ae_s2/final
  ["80c s0"]=runs/abl80c_frozen_s2views_s0/final ["80c s1"]=runs/abl80c_frozen_s2views_s1/final ["80c s2"]=runs/abl80c_frozen_s2views_s2/final
  ["from scratch s0"]=runs/abl81_scratch_s2views_s0/final ["no video loss s0"]=runs/abl81_novideo_s2views_s0/final
)
args=() groups=()
for name in "v13 s0" "80b s2" "80c s0" "80c s1" "80c s2" "from scratch s0" "no video loss s0"; do
  [ -e "${ck[$name]}" ] || { echo "skipping $name: ${ck[$name]} not trained" >&2; continue; }
  args+=(--model "$name=${ck[$name]}")
done
for r in 80b 80c; do
  members=()
  for s in 0 1 2; do if [ -e "${ck["$r s$s"]:-/nonexistent}" ]; then members+=("$r s$s"); fi; done
  if [ ${#members[@]} -ge 2 ]; then groups+=(--group "$r=$(IFS=,; echo "${members[*]}")"); fi  # a group once two seeds are trained
done
wvm eval --bench reserved=data/mw_bench_reserved --bench reserved_c2=data/mw_bench_reserved_c2 --bench seen=data/mw_bench_seen \
  --bench g1=../shared/fixtures/g1_bottle_v21,expert "${args[@]}" "${groups[@]}" --threads "$threads" --out "$out"
