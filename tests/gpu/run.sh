#!/usr/bin/env bash
# GPU acceptance of the harness: what the first session with a GPU runs, sized for <= 8 minutes on one H100/H200
# from a bare machine with torch (a CUDA build) preinstalled. Never run by CI (no GPU there; tests/test_doctor.py
# checks this file with `bash -n` and runs acceptance.py's CPU-side parts). No GPU was available to the session that
# wrote it: its GPU numbers are still to be measured.
#
#   bash tests/gpu/run.sh [OUT_DIR]        (default: gpu-acceptance/; run from anywhere)
#
# Every number lands in OUT_DIR/gpu_acceptance.md (the raw files beside it). Each step runs under its own time
# limit (the sum, with the install, is 8 minutes); a step that fails or runs out of time is recorded in steps.tsv and
# the report, and the next step runs. Exit status: 0 when every step passed, else 1.
#
#   0. install   pip install --no-deps -e . and only the pure-Python requirements that are missing: torch is never
#                touched (torchvision, if missing, the release matching torch, --no-deps)
#   1. doctor    python -m methods doctor --device cuda --quick (versions, bf16/TF32, free memory; fast vs plain
#                certification in fp32 and bf16, compile + CUDA graphs, each method's training step, Triton, DDP)
#   2. tests     the CUDA tests (pytest -k cuda: the compiled Triton kernels against the chunked path, CUDA vs CPU)
#   3. certify   ResNet-110 CERTIFY at n0 + n = 100,100, fp32 with TF32 off as the configs run it: Cohen's
#                reference loop's rate, then the fast path (compiled, CUDA graphs) on the 500-image protocol
#                (measured whole if it fits, else 50-image slices, scaled)
#   4. train     each method's step with its paper model and batch at CIFAR-10 shape, reference vs fast (eager:
#                compiling ResNet-110 per method does not fit; GPU_ACCEPTANCE_TRAIN_COMPILE=1 compiles), sec/epoch
#                beside MACER's Table 3
#   5. linf      the Triton l-inf-dist layer vs the chunked path at the v2 paper's size (batch 512, 5120 x 5120)
#   6. dag       a synthetic-CIFAR-10 DAG on the GPU (tests/gpu/synthetic.yaml: 2 train + 2 certify + report jobs)
#   7. report    OUT_DIR/gpu_acceptance.md
#
# Knobs (environment): PYTHON (default python3), PIP_FLAGS (e.g. --break-system-packages), GPU_ACCEPTANCE_SKIP
# (space-separated steps to leave out, e.g. "install dag"), GPU_ACCEPTANCE_TRAIN_COMPILE=1,
# GPU_ACCEPTANCE_CERTIFY_DTYPE=auto (the certify step on the bf16 option instead of fp32).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$(mkdir -p "${1:-gpu-acceptance}" && cd "${1:-gpu-acceptance}" && pwd)"
PYTHON="${PYTHON:-python3}"
PIP_FLAGS="${PIP_FLAGS:-}"
SKIP=" ${GPU_ACCEPTANCE_SKIP:-} "
ACCEPT="$REPO/tests/gpu/acceptance.py"
cd "$REPO"
: > "$OUT/steps.tsv"
FAILED=0

# step NAME SECONDS COMMAND...: run COMMAND (a program or one of the functions below; output to OUT/NAME.txt) under
# a time limit, record its status and seconds in OUT/steps.tsv.
step() {
    local name="$1" limit="$2"
    shift 2
    if [[ "$SKIP" == *" $name "* ]]; then
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        echo "== $name: skipped (GPU_ACCEPTANCE_SKIP)"
        return 0
    fi
    echo "== $name (at most ${limit} s)"
    local start=$SECONDS status rc
    timeout --kill-after=5 "$limit" bash -c '"$@"' step "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status="timed out after ${limit} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    [[ $rc -eq 0 ]] || FAILED=1
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
    echo "   $status in $((SECONDS - start)) s; output in $OUT/$name.txt"
    tail -n 3 "$OUT/$name.txt" | sed 's/^/   | /'
}

install_project() {
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__)" \
        || { echo "torch with CUDA must be preinstalled for $PYTHON"; return 1; }
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install $PIP_FLAGS --no-deps -e "$REPO" || return 1
    local missing
    missing="$("$PYTHON" "$ACCEPT" deps)" || return 1
    if [[ -n "$missing" ]]; then
        echo "installing: $missing"
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install $PIP_FLAGS $missing || return 1
    fi
    if ! "$PYTHON" -c "import torchvision" 2> /dev/null; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install $PIP_FLAGS --no-deps "$("$PYTHON" "$ACCEPT" torchvision)" || return 1
    fi
    "$PYTHON" -c "import torch, torchvision, methods; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
}

run_doctor() {
    "$PYTHON" -m methods doctor --device cuda --quick --out "$OUT/doctor.json"
}

cuda_tests() {
    "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests | tee "$OUT/pytest.txt"
}

run_dag() {
    "$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --directory "$OUT/dag" \
        --configfile "$REPO/tests/gpu/synthetic.yaml" --cores 8
}

export REPO OUT PYTHON PIP_FLAGS ACCEPT
export -f install_project run_doctor cuda_tests run_dag

train_args=()
[[ "${GPU_ACCEPTANCE_TRAIN_COMPILE:-0}" == 1 ]] && train_args+=(--compile)

# The limits are estimates for an H100/H200 (no GPU was at hand to measure them): 475 s in all.
step install 55 install_project
step doctor 100 run_doctor
step tests 45 cuda_tests
step certify 130 "$PYTHON" "$ACCEPT" certify "$OUT" --budget 40 --dtype "${GPU_ACCEPTANCE_CERTIFY_DTYPE:-float32}"
step train 70 "$PYTHON" "$ACCEPT" train "$OUT" --steps 2 ${train_args[@]+"${train_args[@]}"}
step linf 30 "$PYTHON" "$ACCEPT" linf "$OUT"
step dag 45 run_dag
"$PYTHON" "$ACCEPT" report "$OUT" || FAILED=1
echo "numbers: $OUT/gpu_acceptance.md"
exit $FAILED
