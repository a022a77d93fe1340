#!/usr/bin/env bash
# Every GPU measurement of issue 29 in one run (< 8 min on one H100/H200), one markdown table.
#
#   benchmarks/gpu.sh [FOLDER]        # on the device machine; table and raw JSON go to FOLDER ($OUT, else ./gpu-out)
#   benchmarks/gpu.sh --dry-run [FOLDER]   # the same steps at tiny sizes on the CPU (checks the script itself)
#
# Steps (each under its own time limit, so the whole stays under 8 minutes; a step that fails or runs out
# of time is a row saying so, never a guessed figure):
#   1. dinov1 bf16, the five published distances, eager: engine vs forward-only bound (2,000 pairs)
#   2. the same with --compile on
#   3. clip_vitb32 at its published precision (fp16), the five published distances
#   4. the eval command (run.py's) end to end via --via-run on a synthetic PIPAL-size set (23,200 pairs,
#      200 references) with dinov1 bf16
#   5. CUDA golden parity: ZSIQA_TEST_DEVICE=cuda, the golden tests of dinov1 and clip_vitb32, the engine's
#      tests, the distances' tests
# Targets (issue 29): dinov1 bf16 >= 2,000 pairs/s, clip fp16 >= 4,000 pairs/s, PIPAL via the eval command < 15 s.
#
# The device machine has torch, timm, triton, pandas and scipy but no `clip` package and no network: put
# its wheels in .whl/ at the repository root beforehand (they travel with the working tree),
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl clip-anytorch ftfy wcwidth
# and this script installs them with `pip install --no-index` when `import clip` fails.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
DEST="${1:-${OUT:-./gpu-out}}"
mkdir -p "$DEST"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
START=$(date +%s)

if ! "$PY" -c "import clip" 2>/dev/null && [ -d .whl ]; then
    "$PY" -m pip install --quiet --no-index --find-links .whl clip-anytorch ftfy wcwidth > "$DEST/pip.log" 2>&1 \
        || echo "pip install from .whl failed (see pip.log)" >&2
fi

if [ $DRY = 1 ]; then   # tiny sizes on the CPU: every step runs, no figure means anything
    DEV=cpu; BF=fp32; BIG="--pairs 4 --refs 1 --size 224"; PIPAL="--pairs 6 --refs 2 --size 224"
    SMALL="--pairs 4 --refs 1 --size 224"
    ITERS="--forward-iters 1 --batch-size 8"; LIMIT=(120 60 120 150 120); TESTDEV=cpu
    TESTS=(tests/test_distances.py -k "batched_equals or golden_cases")
else
    DEV=cuda; BF=bf16; BIG="--pairs 2000 --refs 20"; PIPAL="--pairs 23200 --refs 200"; SMALL="--pairs 4000 --refs 20"
    ITERS=""; LIMIT=(60 90 60 200 120); TESTDEV=cuda
    TESTS=(tests/test_models_golden.py tests/test_engine.py tests/test_distances.py -k "dinov1 or clip_vitb32 or not golden")
fi

step() {  # step NAME LIMIT_S bench-arguments...: one bench run, its JSON in $DEST/NAME.json
    local name=$1 limit=$2; shift 2
    echo "== $name ($(( $(date +%s) - START )) s in)" >&2
    timeout "$limit" "$PY" bench.py --device $DEV --loop-pairs 0 --json "$@" > "$DEST/$name.json" 2> "$DEST/$name.err"
    echo $? > "$DEST/$name.rc"
}

step dinov1_bf16_eager "${LIMIT[0]}" -m dinov1 --precision $BF $BIG $ITERS
step dinov1_bf16_compiled "${LIMIT[1]}" -m dinov1 --precision $BF --compile on $BIG $ITERS
step clip_vitb32_published "${LIMIT[2]}" -m clip_vitb32 --precision published $SMALL $ITERS
step dinov1_bf16_pipal_via_run "${LIMIT[3]}" -m dinov1 --precision $BF --via-run $PIPAL $ITERS --data "$DEST/pipal-set"
rm -rf "$DEST/pipal-set"   # up to 6 GB of BMPs: never sent back

echo "== golden parity ($(( $(date +%s) - START )) s in)" >&2
ZSIQA_TEST_DEVICE=$TESTDEV timeout "${LIMIT[4]}" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    > "$DEST/parity.log" 2>&1
echo $? > "$DEST/parity.rc"

"$PY" benchmarks/gpu_table.py "$DEST" $( [ $DRY = 1 ] && echo --dry-run ) > "$DEST/gpu.md"
echo "total $(( $(date +%s) - START )) s" >> "$DEST/gpu.md"
cat "$DEST/gpu.md"
