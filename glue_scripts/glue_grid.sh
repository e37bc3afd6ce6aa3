#!/usr/bin/env bash
# The GLUE grid of docs/results/glue, in two parts (the previous-loss variant on RTE, MRPC, CoLA only).
set -e
common=(--model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue --seeds 1 2 3
        --num_train_epochs 2 --learning_rate 1e-4
        --max_train_samples rte=1000 mrpc=1000 cola=1000 stsb=1000 sst2=1000
        --results_dir docs/results/glue --runs_dir runs/glue)
python glue_scripts/reproduce_glue.py "${common[@]}" --tasks rte mrpc cola --methods adamw sam ksam ksam@selection=previous_loss
python glue_scripts/reproduce_glue.py "${common[@]}" --tasks stsb sst2 --methods adamw sam ksam
python glue_scripts/reproduce_glue.py "${common[@]}" --tasks rte mrpc cola stsb sst2 --methods adamw sam ksam ksam@selection=previous_loss --summarize_only
