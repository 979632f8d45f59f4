#!/usr/bin/env bash
# Everything issue 20 asks of a GPU, in one run: the whole suite on the GPU machine, the two
# benchmarks against torchvision (fp32 and fp16 autocast, with and without CUDA graphs), and the
# GPU quickstart's wall time. Made for a lent machine that has torch, torchvision, OpenCV and
# matplotlib but no network (see /work/.library/device/README.md in the development workplace).
#
#   benchmarks/gpu_session.sh fetch        # here, with network: wheels of the other
#                                          # runtime packages into .whl/ (git-ignored)
#   benchmarks/gpu_session.sh run OUTDIR   # there: install .whl/, then run everything,
#                                          # logs and a summary under OUTDIR
#
# `run` stops nothing on a failure: each step's exit status goes into OUTDIR/summary.txt. Steps
# can be chosen with STEPS="suite bench demo" (all by default).
set -u -o pipefail
cd "$(dirname "$0")/.."

# Runtime packages the GPU image lacks (pure-Python or manylinux wheels for Python 3.12).
# Not the `typing` backport that cityscapesscripts names: on PYTHONPATH it would shadow the
# standard library's typing.
WHEELS="fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0
pycocotools==2.0.11 faster-coco-eval==1.8.0 omegaconf==2.4.0 cityscapesscripts==2.3.0
coloredlogs==15.0.1 humanfriendly==10.0 pyquaternion==0.9.9 appdirs==1.4.4"

fetch() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for spec in $WHEELS; do
        python3 -m pip download --quiet --no-deps --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform any -d .whl "$spec" \
            || { echo "could not fetch $spec" >&2; return 1; }
    done
    # Packages published only as source (fvcore, iopath): build their pure-Python wheels here.
    for sdist in .whl/*.tar.gz; do
        [ -e "$sdist" ] || continue
        python3 -m pip wheel --quiet --no-deps -w .whl "$sdist" && rm "$sdist" || return 1
    done
    du -sh .whl
}

step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, record status and minutes
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$OUTDIR/summary.txt"
    "$@" > "$OUTDIR/$name.log" 2>&1
    local status=$?
    echo "   exit $status after $((SECONDS - start)) s" | tee -a "$OUTDIR/summary.txt"
    tail -n 25 "$OUTDIR/$name.log"
}

run() {
    OUTDIR=${1:?give an output folder}
    mkdir -p "$OUTDIR"
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site:$PWD
    else
        export PYTHONPATH=$PWD
    fi
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
    python3 -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__,
torch.cuda.get_device_name(0))' >> "$OUTDIR/gpu.txt" 2>&1
    cat "$OUTDIR/gpu.txt"
    local steps=${STEPS:-suite bench demo}
    if [[ " $steps " == *" suite "* ]]; then
        step cuda_tests python3 -m pytest -q -rfEs -p no:cacheprovider tests/cuda
        step suite python3 -m pytest -q -rfE -p no:cacheprovider -n 8 --dist worksteal tests
    fi
    if [[ " $steps " == *" bench "* ]]; then
        step inference_fp32 python3 benchmarks/inference.py --device cuda --repeats 20
        step inference_amp python3 benchmarks/inference.py --device cuda --amp --repeats 20 --compile
        step train_fp32 python3 benchmarks/train_step.py --device cuda --repeats 10
        step train_amp python3 benchmarks/train_step.py --device cuda --amp --repeats 10 --compile
    fi
    if [[ " $steps " == *" demo "* ]]; then
        step demo python3 train_net.py --config-file configs/Shapes/mask_rcnn_R_18_FPN_demo.yaml \
            OUTPUT_DIR /tmp/gpu_demo $(python3 tools/demo_device.py)
    fi
}

case "${1:-}" in
    fetch) fetch ;;
    run) run "${2:-}" ;;
    *) echo "usage: $0 fetch | run OUTDIR" >&2; exit 2 ;;
esac
