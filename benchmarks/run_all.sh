#!/usr/bin/env bash
# Every figure the README and the model card quote, in one run: writes benchmarks/results/DATE.txt.
# Needs the test extras (cellpose 4.2.1.1) and, for the last two lines, ../shared/data/nuclei/val.
# About 40 minutes on a 2-core machine (cellpose's ROI export and reconstruction at 4096x4096 dominate).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out="benchmarks/results/$(date +%F).txt"
mkdir -p benchmarks/results
{
    echo "# $(date -u '+%F %H:%M UTC'), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    for cmd in \
        "benchmarks/bench_model.py --arch vit_b vit_l --batch 1 --repeats 3 --attention tiny" \
        "benchmarks/bench_normalize.py --repeat 5" \
        "benchmarks/bench_infer.py --tiny --repeats 3" \
        "benchmarks/bench_reconstruct.py --sizes 2048 --repeat 3" \
        "benchmarks/bench_reconstruct.py --sizes 4096 --repeat 2" \
        "benchmarks/bench_rois.py --size 4096 --repeat 2" \
        "benchmarks/bench_stitch.py --repeat 3" \
        "benchmarks/bench_segment.py --repeat 3 --folder ../shared/data/nuclei/val/images" \
        "benchmarks/check_normalize.py ../shared/data/nuclei/val/images"; do
        echo; echo "\$ python $cmd"
        $PY $cmd 2>&1 | grep -v '^\s*$'
    done
} | tee "$out"
