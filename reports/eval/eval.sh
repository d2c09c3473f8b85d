#!/usr/bin/env bash
# The shipped report: the default checkpoint beside the previous one (v13: `git show a72e150:wvm/checkpoints/default/...`
# into PREVIOUS), each with the benches' robot states and from the frames alone, on every bench the README renders.
# reports/eval/eval.sh OUT PREVIOUS [THREADS]
set -euo pipefail
out=$1 previous=$2 threads=${3:-0}
wvm eval --bench reserved=data/mw_bench_reserved --bench reserved_fd=data/mw_bench_reserved_fd --bench seen=data/mw_bench_seen \
  --bench reserved_c2=data/mw_bench_reserved_c2 --bench reserved_jit=data/mw_bench_reserved_jit \
  --bench fixture=../shared/fixtures/metaworld_mini --bench g1=../shared/fixtures/g1_bottle_v21,expert \
  --model WVM=wvm/checkpoints/default --model "v13 (previous)=$previous" \
  --model "WVM, video only=wvm/checkpoints/default" --model "v13, video only=$previous" \
  --video-only "WVM, video only" --video-only "v13, video only" --threads "$threads" --out "$out"
