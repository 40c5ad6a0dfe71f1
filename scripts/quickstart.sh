#!/usr/bin/env bash
# The main job, end to end on the embedded MNIST digits (no network needed after set-up):
# train the default small ViT, evaluate it on the held-out digits, export it to TFLite
# (float32, float16, int8; each verified against Keras in LiteRT) and predict a few
# held-out digits with the exported file. Each run gets its own folder; nothing is overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh export
run="saved_models/mnist-$(date +%Y%m%d-%H%M%S)"

echo "== train: the default small ViT on the embedded MNIST digits -> $run"
keras-vit train --output "$run" "$@"

echo "== evaluate: held-out accuracy"
keras-vit evaluate "$run"

echo "== export: TFLite, each precision checked against the Keras model in LiteRT"
keras-vit export "$run" --format tflite

echo "== predict: held-out digits with the exported float32 TFLite model"
keras-vit predict "$run/export/model_float32.tflite" "$run"/export/samples/*.png
