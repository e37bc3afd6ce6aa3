#!/usr/bin/env bash
# The tuning behind docs/results/glue-full: on MRPC and CoLA, seed 1, the full protocol of
# glue_grid.sh (full training sets, 3 epochs, batch 32, group_by_length).
#   Stage 1: AdamW's learning rate from {5e-5, 1e-4, 2e-4}: the best mean dev score over the two
#            tasks is fixed for every method (written to lr.txt).
#   Stage 2: rho per method from {0.002, 0.01, 0.05} at that learning rate: the best mean dev
#            score over the two tasks (glue_scripts/pick_rho.py, which glue_grid.sh runs).
# Finished runs are skipped: rerun it to resume. Usage: bash glue_scripts/tune_glue.sh [1|2]
set -e
cd "$(dirname "$0")/.."
out=docs/results/glue-tuning
common=(--model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue --tasks mrpc cola
        --seeds 1 --num_train_epochs 3 --results_dir $out --runs_dir runs/tuning)
stage=${1:-all}
if [[ $stage == 1 || $stage == all ]]; then
  python glue_scripts/reproduce_glue.py "${common[@]}" --learning_rate 1e-4 --baseline adamw@learning_rate=1e-4 \
    --methods adamw@learning_rate=1e-4 adamw@learning_rate=5e-5 adamw@learning_rate=2e-4
  python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "results.jsonl").read_text().splitlines() if line.strip()]
scores = {}
for r in rows:
    if r["method"].startswith("adamw@learning_rate="):
        scores.setdefault(r["method"].split("=")[1], []).append(r["score"])
best = max((sum(v) / len(v), lr) for lr, v in scores.items() if len(v) == 2)[1]
(Path(sys.argv[1]) / "lr.txt").write_text(best + "\n")
print("learning rate:", best, {lr: [round(x, 4) for x in v] for lr, v in scores.items()})
PY
fi
if [[ $stage == 2 || $stage == all ]]; then
  lr=$(cat $out/lr.txt)
  base=(--learning_rate "$lr" --baseline "adamw@learning_rate=$lr")
  main=() others=()
  for rho in 0.002 0.01 0.05; do
    main+=(ksam@ksam_selection=loss_sampled@ksam_uniform_mix=0.5@sam_rho=$rho sam@sam_rho=$rho)
  done
  for rho in 0.002 0.01 0.05; do others+=(ksam@ksam_selection=top_k_ascent@sam_rho=$rho); done
  for rho in 0.002 0.01 0.05; do others+=(ksam@ksam_selection=top_k@sam_rho=$rho); done
  # The new selection and SAM on both tasks first, then the ascent-only selection and the paper's
  # rule. Adaptive k (the loss-sampled rule with a variable k) takes the loss-sampled rho.
  python glue_scripts/reproduce_glue.py "${common[@]}" "${base[@]}" --methods "adamw@learning_rate=$lr" "${main[@]}"
  python glue_scripts/reproduce_glue.py "${common[@]}" "${base[@]}" --methods "adamw@learning_rate=$lr" "${main[@]}" \
    "${others[@]}"
fi
