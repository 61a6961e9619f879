#!/usr/bin/env bash
# The demo, on a CPU: set-up (first run), then
#   1. write scikit-learn's bundled 1,797 handwritten digits as PNGs in the ImageNet folder layout,
#   2. train a small ACmix ResNet (acmix_resnet_mini) in graph mode,
#   3. evaluate the best checkpoint on the held-out val split,
#   4. export a MINDIR, reload it and classify a few val images,
#   5. plot the learned ACmix rates by depth and the training curves (PNG files in the output folder).
#   bash scripts/run_demo.sh [--key value ...]      (overrides for config/demo_cpu.yaml)
set -euo pipefail
source "$(dirname "$0")/env.sh"
acmix_python
acmix_optional scikit-learn matplotlib
cd "$ACMIX_ROOT"
start=$(date +%s)
CONFIG=config/demo_cpu.yaml
OUT=$(acmix_config_value output_dir "$CONFIG" "$@")
DATA=$(acmix_config_value data_dir "$CONFIG" "$@")

echo "== 1/5 dataset"
"$PY" -m src.data.digits --out "$DATA"
echo "== 2/5 training (graph mode, CPU)"
rm -rf "$OUT/checkpoints"
"$PY" train.py --config "$CONFIG" "$@"
echo "== 3/5 evaluation of $OUT/checkpoints/best.ckpt"
"$PY" eval.py --config "$CONFIG" --checkpoint "$OUT/checkpoints/best.ckpt" "$@"
echo "== 4/5 MINDIR export, reload and prediction"
"$PY" export.py --config "$CONFIG" --checkpoint "$OUT/checkpoints/best.ckpt" --file_name "$OUT/acmix_resnet_mini" "$@"
"$PY" -m src.tools.predict --config "$CONFIG" --mindir "$OUT/acmix_resnet_mini.mindir" --topk 3 \
    $(for d in 0 3 5 8; do ls "$DATA/val/$d"/*.png | head -2; done) "$@"
echo "== 5/5 plots"
"$PY" -m src.tools.plot_rates --ckpt "$OUT/checkpoints/best.ckpt" --out "$OUT/rates.png"
"$PY" -m src.tools.plot_curves --metrics "$OUT/metrics.json" --out "$OUT/curves.png"
echo "demo finished in $(( $(date +%s) - start ))s"
