#!/usr/bin/env bash
# The offline demo end to end, on a fresh machine: environment, data, the four SRN stages, evaluation, export,
# and the exported pipeline on a few test scenes (their attention maps in OUTPUT_DIR/test_scenes.png).
#   bash examples/run_demo.sh                      # everything (its measured time: the README's demo block)
#   OUTPUT_DIR=... DATA_DIR=... bash examples/run_demo.sh --set stage1.epochs=1   (extra args go to the script)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export VENV=${VENV:-$repo/.venv}
output_dir=${OUTPUT_DIR:-$repo/outputs/demo}
data_dir=${DATA_DIR:-$repo/data/stamp_scenes}
start=$(date +%s)

bash "$repo/examples/setup_env.sh"                      # .venv, this package, Debian's tuxpaint stamps
export HF_HUB_OFFLINE=1                                 # nothing comes from the Hub: weights ship in a package
python=("$VENV/bin/python")

echo "== stamp scenes (generated once into $data_dir)"
"${python[@]}" -c "import sys; from srn_hf.data import load_stamp_scenes; print(load_stamp_scenes(sys.argv[1], generate=True))" "$data_dir"

echo "== the four stages (examples/configs/demo.yaml)"
resume=(); [ -d "$output_dir/checkpoints" ] && resume=(--resume)   # a second call continues an interrupted run
# (precision comes from the recipe: training.mixed_precision). On a CPU, accelerate launch gives each process one
# thread unless told: with one process, all cores (two here: stage 1 takes 65 s per epoch instead of 2 min).
"$VENV/bin/accelerate" launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process "$(nproc)" \
  "$repo/examples/train_stages.py" --config "$repo/examples/configs/demo.yaml" \
  --output-dir "$output_dir" --set "data.options={path: $data_dir}" "${resume[@]}" "$@"

echo "== the exported model on test scenes (one of each scene type): true labels, predictions, attention maps"
"${python[@]}" - "$output_dir/final" "$data_dir" "$output_dir/test_scenes.png" "$output_dir/metrics.json" <<'PY'
import json
import sys
from pathlib import Path

from datasets import load_from_disk
from transformers import pipeline

import srn_hf  # noqa: F401
from srn_hf.data import label_names
from srn_hf.report import metric_table
from srn_hf.visualize import save_scenes_figure

model_folder, data_dir, figure_path, metrics_path = sys.argv[1:]
test = load_from_disk(data_dir)["test"]
names = label_names(test)
first_of_each = sorted({scene: index for index, scene in reversed(list(enumerate(test["scene"])))}.values())
tagger = pipeline("multi-label-image-classification", model=model_folder)
scenes = []
for row in test.select(first_of_each):
    predictions = tagger(row["image"], return_attention_maps=True)
    boxes = {}
    for box in row["boxes"]:
        boxes.setdefault(names[box["label"]], []).append(box["bbox"])
    true_labels = [names[label] for label in row["labels"]]
    scenes.append({"image": row["image"], "predictions": predictions, "true_labels": true_labels, "boxes": boxes,
                   "title": f"{row['image_id']} ({row['scene']})"})
    print(f"{row['image_id']:>10}  true: {', '.join(true_labels):<32} predicted: "
          + ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions))
print(f"attention maps of these test scenes (boxes: where the objects are): {save_scenes_figure(scenes, figure_path)}")
print("\n" + metric_table(json.loads(Path(metrics_path).read_text())["stages"], "test"))
PY
echo "== done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; models, metrics.json, training_curves.png in $output_dir"
echo "== its demo page (docs/app.md): $VENV/bin/pip install -e '$repo[app]' && $VENV/bin/srn-hf demo $output_dir/final  -> http://127.0.0.1:7860/"
