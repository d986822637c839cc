#!/usr/bin/env bash
# One command on one GPU, under 8 minutes: the CUDA-only tests; `mtl ablate --synthetic` at the papers' sizes
# (CelebA T = 40, batch 256, 64x64; Cityscapes 256x512, batch 8; NYUv2 288x384, batch 2) for uniform, mgda-ub,
# mgda (loop and batched), upgrad and nash-mtl, in fp32 and bf16, with peak memory; a 2-minute MultiFashion
# training on the real data; then one markdown table, OUT/gpu.md (benchmarks/gpu_table.py writes it).
#
#   bash benchmarks/gpu.sh [--out DIR] [--data-dir DIR] [--fashion-source DIR]   # on the GPU (default OUT: results/gpu)
#   bash benchmarks/gpu.sh --dry [--out DIR]                # on the CPU, tiny sizes, a few seconds a part
#
# --dry is what `make test` runs (tests/integration/test_gpu_script.py), so that this script cannot rot.
# bf16 runs when the recipe accepts `train.precision` (probed below); until then its rows say why they are
# missing. Every part has a time cap (seconds, overridable: CAP_TESTS, CAP_ABLATE, CAP_TRAIN) within one BUDGET
# (450 s; the training's cap is kept for it); a part that reaches its cap is reported as timed out, one the budget
# leaves no time for as not run, and the training is stopped by SIGTERM at its cap by design. PYTHON: the
# interpreter (default: the checkout's .venv, else python3).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
DRY=0
OUT="results/gpu"
DATA_DIR="${MTL_DATA_DIR:-data}"
SOURCE=()  # --fashion-source DIR: the Fashion-MNIST IDX files, for a machine that cannot download them
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --data-dir) DATA_DIR="$2"; shift ;;
    --fashion-source) SOURCE=(--source "$2"); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "Error: unknown argument $1 (use --dry, --out DIR, --data-dir DIR, --fashion-source DIR)" >&2; exit 2 ;;
  esac
  shift
done

MTL=(env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m mtlcli)
mkdir -p "$OUT"
rm -rf "$OUT/logs" "$OUT/ablate" "$OUT/train" "$OUT/gpu.md"  # this script's own outputs, nothing else
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"

# part NAME CAP RESERVE COMMAND...: run it under a time cap, cut so that RESERVE seconds of the BUDGET stay for what
# follows; its output goes to logs/NAME.log, its exit status to logs/NAME.rc (-1: not run, the budget was spent)
START=$SECONDS
part() {
  local name="$1" cap="$2" reserve="$3"
  shift 3
  local left=$((BUDGET - (SECONDS - START) - reserve))
  [ "$left" -lt "$cap" ] && cap="$left"
  if [ "$cap" -lt 5 ]; then
    echo "not run: the ${BUDGET} s budget was spent" >"$LOGS/$name.log"
    echo -1 >"$LOGS/$name.rc"
    return
  fi
  echo "== $name (cap ${cap}s)" >&2
  timeout --signal=TERM --kill-after=10 "$cap" "$@" >"$LOGS/$name.log" 2>&1
  echo $? >"$LOGS/$name.rc"
}

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  CAP_TESTS="${CAP_TESTS:-60}" CAP_ABLATE="${CAP_ABLATE:-60}" CAP_TRAIN="${CAP_TRAIN:-60}" BUDGET="${BUDGET:-600}"
  TESTS=(tests/integration/test_cuda.py)  # collected and skipped on the CPU: the pytest call itself is checked
  STEPS=(--steps 1 --warmup 0 --block 1)
  # dataset|batch|image size|settings (tiny widths and sizes: seconds on a CPU)
  SIZES=(
    "celeba|4|32x32|--set data.size=32 --set model.width=4"
    "cityscapes|2|16x32|--set data.size=16 --set model.width=4 --set model.head_width=8 --set model.pretrained=false"
    "nyuv2|2|96x128|--set data.size=96 --set model.width=4"
  )
  TRAIN=(--epochs 1 --set train.batch_size=32)
else
  DEVICE=cuda
  CAP_TESTS="${CAP_TESTS:-90}" CAP_ABLATE="${CAP_ABLATE:-45}" CAP_TRAIN="${CAP_TRAIN:-120}" BUDGET="${BUDGET:-450}"
  TESTS=(tests -k cuda)  # every test that needs CUDA has "cuda" in its module or its name
  STEPS=(--steps 5 --warmup 2 --block 5)
  SIZES=(
    "celeba|256|64x64|--set data.size=64"
    "cityscapes|8|256x512|--set data.size=256 --set model.pretrained=false"  # timing needs no ImageNet weights (offline)
    "nyuv2|2|288x384|--set data.size=288"
  )
  TRAIN=(--epochs 100)  # stopped by SIGTERM at CAP_TRAIN seconds: the table reads the epochs it finished
fi
METHODS="uniform,mgda-ub,mgda:grads=loop,mgda:grads=batched,upgrad,nash-mtl"

# bf16 needs the recipe key train.precision (mtlcli/recipe.py); without it only fp32 runs
PRECISIONS=(fp32)
if PYTHONPATH="$REPO" "$PYTHON" -c 'import sys; from mtlcli.recipe import TrainConfig; sys.exit("precision" not in TrainConfig.model_fields)' 2>/dev/null; then
  PRECISIONS+=(bf16)
else
  echo "bf16: the recipe has no train.precision in this build, skipped" >"$LOGS/bf16-skipped.txt"
fi

(cd "$REPO" && part tests "$CAP_TESTS" "$CAP_TRAIN" env PYTHONPATH="$REPO" "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}")

for entry in "${SIZES[@]}"; do
  IFS='|' read -r dataset batch size sets <<<"$entry"
  for precision in "${PRECISIONS[@]}"; do
    if [ "$DRY" = 1 ] && [ "$precision" = bf16 ] && [ "$dataset" != cityscapes ]; then
      continue  # the dry run checks bf16 on its quickest dataset only
    fi
    echo "$size" >"$LOGS/ablate-$dataset-$precision.size"
    extra=()
    [ "$precision" = bf16 ] && extra=(--set train.precision=bf16)
    # shellcheck disable=SC2086  # $sets: several --set words
    part "ablate-$dataset-$precision" "$CAP_ABLATE" "$CAP_TRAIN" "${MTL[@]}" ablate "$REPO/recipes/$dataset.yaml" --synthetic --device "$DEVICE" \
      --batch-size "$batch" --methods "$METHODS" "${STEPS[@]}" $sets "${extra[@]}" --out "$OUT/ablate/$dataset-$precision"
  done
done

if [ "$DRY" = 0 ] && [ ! -f "$DATA_DIR/multifashion/meta.json" ]; then
  part prepare 120 "$CAP_TRAIN" "${MTL[@]}" prepare multifashion --data-dir "$DATA_DIR" "${SOURCE[@]}"
fi
part train "$CAP_TRAIN" 0 "${MTL[@]}" train "$REPO/recipes/multifashion.yaml" --device "$DEVICE" --data-dir "$DATA_DIR" \
  --out "$OUT/train" -q "${TRAIN[@]}"

PYTHONPATH="$REPO" "$PYTHON" "$REPO/benchmarks/gpu_table.py" "$OUT" --cap-train "$CAP_TRAIN" $([ "$DRY" = 1 ] && echo --dry)
