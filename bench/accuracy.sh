#!/usr/bin/env bash
# Regenerates bench/results/accuracy.md and accuracy.svg: perplexity against honest bits per weight for every method
# on gutenberg-llama-20m (heldout, WikiText-2) and stories260k, through the sageptq CLI. Finished steps are cached
# in bench/results/accuracy/ (commit those); quantized models and logs go to .accuracy/ (ignored). Resumes.
#
#   bench/accuracy.sh [--build] [--bg] [options of bench/accuracy/run.py]
#     --quick                 stories260k + the first 40 windows of gutenberg heldout and val
#     --models gutenberg,stories   --configs all|baselines|reference|sage|toga|headline|NAME,...
#     --evals heldout,wikitext,val,heldout@40,...   --seeds 0,1,2 (headline rows)   --tag VARIANT
#     --jobs J --threads T    runs at a time, threads each
#     --cli PATH              default .accuracy/bin/sageptq if built (--build), else build/bin/sageptq
#     --report-only           only rewrite accuracy.md / accuracy.svg from the cache
#   --bg runs it in the background (nohup, nice), logging to .accuracy/run.log.
#   --build first compiles the CLI into .accuracy/bin/sageptq (-O3 -march=x86-64-v3, static, so it also runs on the
#   device machine), which run.py then uses by default: its evaluation is ~1.9x faster than the plain Release build.
#
# Examples: bench/accuracy.sh --quick --configs reference
#           bench/accuracy.sh --models gutenberg --configs sage --evals val --tag mychange   (tune on val only)
# Device machine (16 cores; only the working tree travels): copy what the runs read into .accuracy/dev/ (shared/
# with the same layout as ../shared, bin/sageptq from --build), carry ".accuracy/dev", and run there
#   python3 bench/accuracy/run.py --shared .accuracy/dev/shared --cli .accuracy/dev/bin/sageptq --results $OUT/res \
#           --work /tmp/work --jobs 3 --threads 5 --no-report ...   (at most 8 files come back: few runs per call)
# then here: bench/accuracy.sh --merge <the returned res folder>.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.accuracy"
if [[ ${1:-} == --build ]]; then
  shift
  mkdir -p "$root/.accuracy/bin"
  nice -n 10 g++ -std=gnu++20 -O3 -DNDEBUG -march=x86-64-v3 -static -pthread -I"$root/include" -isystem /usr/include/eigen3 \
    "$root/examples/cli/main.cpp" -o "$root/.accuracy/bin/sageptq.tmp"
  mv "$root/.accuracy/bin/sageptq.tmp" "$root/.accuracy/bin/sageptq"
fi
if [[ ${1:-} == --bg ]]; then
  shift
  nohup nice -n 10 python3 "$root/bench/accuracy/run.py" "$@" >>"$root/.accuracy/run.log" 2>&1 &
  echo "running in the background (pid $!), log: $root/.accuracy/run.log"
else
  exec nice -n 10 python3 "$root/bench/accuracy/run.py" "$@"
fi
