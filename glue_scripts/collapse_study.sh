#!/usr/bin/env bash
# Does the paper's top-k selection alone hold a classifier at the uniform predictor, and does a model
# already past its first epoch escape it? MRPC (full) and SST-2 (first 4000 examples), seed 1, the
# protocol of glue_grid.sh (3 epochs, batch 32, lr 1e-4, group_by_length):
#   from the pretrained model: AdamW; top-k and loss_sampled at rho 0 (selection alone) and 0.01;
#   warm start: AdamW for 1 epoch, then 2 more epochs of AdamW, top-k or loss_sampled (rho 0.01).
# Results: docs/results/collapse/. Finished runs are skipped: rerun it to resume. MRPC's runs that
# the grid (glue-full) already made with exactly these settings are reused, not run again.
set -e
cd "$(dirname "$0")/.."
out=docs/results/collapse
common=(--model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue --tasks mrpc sst2
        --max_train_samples sst2=4000 --seeds 1 --learning_rate 1e-4 --num_train_epochs 3
        --results_dir $out --runs_dir runs/collapse --reuse_runs_from docs/results/glue-full/results.jsonl
        --keep_weights True)  # the warm starts load the 1-epoch AdamW model
python glue_scripts/reproduce_glue.py "${common[@]}" --methods adamw adamw@num_train_epochs=1 \
  ksam@ksam_selection=top_k@sam_rho=0 ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@sam_rho=0 \
  ksam@ksam_selection=top_k@sam_rho=0.01 ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@sam_rho=0.01
for task in mrpc sst2; do
  warm=$(python - "$task" "${common[@]}" <<'PY'
import sys
from transformers import HfArgumentParser
from glue_scripts.reproduce_glue import ReproductionArguments, run_dir
(args,) = HfArgumentParser(ReproductionArguments).parse_args_into_dataclasses(sys.argv[2:])
print(run_dir(sys.argv[1], "adamw@num_train_epochs=1", 1, args))
PY
)
  python glue_scripts/reproduce_glue.py "${common[@]}" --tasks $task --methods \
    "adamw@model_name_or_path=$warm@num_train_epochs=2" \
    "ksam@ksam_selection=top_k@sam_rho=0.01@model_name_or_path=$warm@num_train_epochs=2" \
    "ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@sam_rho=0.01@model_name_or_path=$warm@num_train_epochs=2"
done
