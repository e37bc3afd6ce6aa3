#!/usr/bin/env bash
# The GLUE grid behind docs/results/glue: MiniLM-L6 on RTE, MRPC, CoLA, STS-B, SST-2 with AdamW, SAM,
# K-SAM (ranking in eval mode, the default) and K-SAM ranking in train mode as the paper does; and,
# on RTE, MRPC, CoLA, K-SAM ranking by previous loss. Seed by seed, so that an interrupted grid has
# the same number of seeds everywhere. Finished runs are skipped: rerun it to resume.
# Usage: bash glue_scripts/glue_grid.sh [SEED ...]   (default: 1 2 3)
set -e
cd "$(dirname "$0")/.."
seeds=("${@:-1 2 3}")
common=(--model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue
        --num_train_epochs 2 --learning_rate 1e-4
        --max_train_samples rte=1000 mrpc=1000 cola=1000 stsb=1000 sst2=1000
        --results_dir docs/results/glue --runs_dir runs/glue)
all_methods=(adamw sam ksam ksam@rank_without_dropout=False ksam@selection=previous_loss)
for seed in ${seeds[@]}; do
  python glue_scripts/reproduce_glue.py "${common[@]}" --seeds "$seed" --tasks rte mrpc cola --methods "${all_methods[@]}"
  python glue_scripts/reproduce_glue.py "${common[@]}" --seeds "$seed" --tasks stsb sst2 \
    --methods adamw sam ksam ksam@rank_without_dropout=False
done
python glue_scripts/reproduce_glue.py "${common[@]}" --seeds 1 2 3 --tasks rte mrpc cola stsb sst2 \
  --methods "${all_methods[@]}" --summarize_only
