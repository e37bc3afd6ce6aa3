#!/usr/bin/env bash
# The library's defaults against AdamW on the README's main command: run_glue.py with nothing but
# `--optimizer ksam` (or adamw), on MRPC (first 2000 training examples) and SST-2 (first 4000), at
# run_glue's default batch (8) and at batch 32; everything else run_glue's defaults (lr 5e-5,
# 3 epochs, no warm-up) but padding: to the longest example of each batch, not to 128 (the same
# result, 2-4x less compute on these short sentences).
# Usage: bash glue_scripts/defaults_check.sh [SEED [LABEL="--flag value ..." ...]]
#   With no LABEL: AdamW and K-SAM with the library's defaults. Each LABEL="FLAGS" runs a K-SAM
#   candidate with those flags instead (how the defaults were chosen; a later --optimizer replaces
#   ksam, e.g. "sam2=--optimizer sam --sam_every_n_steps 2"). TASKS="mrpc" limits the
#   tasks, BATCHES="8" the batch sizes. Finished runs are skipped: the script resumes where it stopped.
#   MODEL, GLUE_DIR, RESULTS_DIR and RUNS_DIR move the model, the data and the outputs (a GPU
#   session: defaults_check_gpu.sh).
#   -> docs/results/defaults/results.{jsonl,md}
set -e
cd "$(dirname "$0")/.."
seed=${1:-1}
shift || true
variants=("adamw=--optimizer adamw")
[[ $# == 0 ]] && variants+=("ksam=--optimizer ksam")
for candidate in "$@"; do variants+=("${candidate%%=*}=--optimizer ksam ${candidate#*=}"); done
model=${MODEL:-../shared/models/all-MiniLM-L6-v2}
glue=${GLUE_DIR:-../shared/glue}
out=${RESULTS_DIR:-docs/results/defaults}
runs=${RUNS_DIR:-runs/defaults}
mkdir -p $out $runs
for task in ${TASKS:-mrpc sst2}; do
  samples=$([[ $task == mrpc ]] && echo 2000 || echo 4000)
  for batch in ${BATCHES:-8 32}; do
    for variant in "${variants[@]}"; do
      label=${variant%%=*}
      read -ra flags <<< "${variant#*=}"
      dir=$runs/$task-b$batch-$label-seed$seed
      if grep -qF "\"run\": \"$dir\"" $out/results.jsonl 2>/dev/null; then continue; fi  # done
      python glue_scripts/run_glue.py --model_name_or_path $model --glue_dir $glue \
        --task_name $task --do_train --do_eval "${flags[@]}" --output_dir $dir --report_to none \
        --max_train_samples $samples --pad_to_max_length False --per_device_train_batch_size $batch --seed $seed \
        --overwrite_output_dir \
        --save_strategy no --logging_steps 25 --disable_tqdm True > $dir.log 2>&1 || { echo "failed: $dir"; exit 1; }
      python - "$dir" "$task" "$batch" "$label" "$seed" "${flags[*]}" >> $out/results.jsonl <<'PY'
import json, sys
from pathlib import Path
run, task, batch, label, seed, flags = sys.argv[1:]
results = json.loads((Path(run) / "all_results.json").read_text())
state = json.loads((Path(run) / "trainer_state.json").read_text())
print(json.dumps({"run": run, "task": task, "batch": int(batch), "variant": label, "flags": flags, "seed": int(seed),
                  "results": results, "curve": [log for log in state["log_history"] if "loss" in log]}))
PY
    done
  done
done
python -m glue_scripts.summarize_defaults $out $glue
