#!/usr/bin/env bash
# The GLUE grid behind docs/results/glue-full: MiniLM-L6 on the full training sets of RTE, MRPC,
# CoLA and STS-B and the first 20000 examples of SST-2; 3 epochs, batch 32, 10 % warm-up,
# group_by_length; AdamW's learning rate and each method's rho picked by glue_scripts/tune_glue.sh
# (MRPC and CoLA, seed 1). Methods: AdamW, SAM, the paper's K-SAM (top-k), the ascent on the top
# k with the descent on the whole batch (the library's default rule, at the library's default rho:
# chosen on the tuning and the defaults check together, docs/selection.md), K-SAM with the
# loss-sampled selection, and adaptive k; all at k = 25 % of the batch except adaptive k (at least
# 12.5 %, the fewest examples carrying half the batch's loss).
# Seed by seed; finished runs are skipped (rerun it to resume), and seed 1 of MRPC and CoLA reuses
# the tuning's runs at the picked values (the same settings). TASKS (default: all five) runs some
# tasks only, e.g. one task at a time, all seeds, to have its intervals before the others.
# Usage: [TASKS="mrpc rte"] bash glue_scripts/glue_grid.sh [SEED ...]   (default: 1 2 3)
set -e
cd "$(dirname "$0")/.."
tuning=docs/results/glue-tuning
seeds=("${@:-1 2 3}")
lr=$(cat $tuning/lr.txt)
python -m glue_scripts.pick_rho $tuning > $tuning/rho.json
rho() { python -c "import json,sys; print(json.load(open('$tuning/rho.json'))['$1'])"; }
default_rho=$(python -c "from ksam_hf import KSAMConfig; print(KSAMConfig.sam_rho)")
methods=(adamw "sam@sam_rho=$(rho sam)" "ksam@ksam_selection=top_k@sam_rho=$(rho top_k)"
         "ksam@ksam_selection=top_k_ascent@sam_rho=$default_rho"
         "ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@sam_rho=$(rho loss_sampled)"
         "ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@ksam_k=0.125@ksam_loss_share=0.5@sam_rho=$(rho adaptive_k)")
common=(--model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue
        --num_train_epochs 3 --learning_rate "$lr" --max_train_samples sst2=20000
        --results_dir docs/results/glue-full --runs_dir runs/glue-full --reuse_runs_from $tuning/results.jsonl)
tasks=(${TASKS:-rte mrpc cola stsb sst2})
for seed in ${seeds[@]}; do
  python glue_scripts/reproduce_glue.py "${common[@]}" --seeds "$seed" --tasks "${tasks[@]}" \
    --methods "${methods[@]}"
done
python glue_scripts/reproduce_glue.py "${common[@]}" --tasks rte mrpc cola stsb sst2 --methods "${methods[@]}" \
  --summarize_only
