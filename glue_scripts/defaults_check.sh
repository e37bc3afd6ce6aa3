#!/usr/bin/env bash
# The library's defaults against AdamW on the README's main command: run_glue.py with nothing but
# `--optimizer ksam` (or adamw), on MRPC (first 2000 training examples) and SST-2 (first 4000), at
# run_glue's default batch (8) and at batch 32, seed 1; everything else run_glue's defaults (lr
# 5e-5, 3 epochs, no warm-up, dynamic padding off as in the Transformers example).
# Usage: bash glue_scripts/defaults_check.sh [SEED]   -> docs/results/defaults/results.{jsonl,md}
set -e
cd "$(dirname "$0")/.."
seed=${1:-1}
out=docs/results/defaults
mkdir -p $out runs/defaults
for task in mrpc sst2; do
  samples=$([[ $task == mrpc ]] && echo 2000 || echo 4000)
  for batch in 8 32; do
    for optimizer in adamw ksam; do
      dir=runs/defaults/$task-b$batch-$optimizer-seed$seed
      if grep -qF "\"run\": \"$dir\"" $out/results.jsonl 2>/dev/null; then continue; fi  # done
      python glue_scripts/run_glue.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue \
        --task_name $task --do_train --do_eval --optimizer $optimizer --output_dir $dir --report_to none \
        --max_train_samples $samples --per_device_train_batch_size $batch --seed $seed --overwrite_output_dir \
        --save_strategy no --logging_steps 25 --disable_tqdm True > $dir.log 2>&1 || { echo "failed: $dir"; exit 1; }
      python - "$dir" "$task" "$batch" "$optimizer" "$seed" >> $out/results.jsonl <<'PY'
import json, sys
from pathlib import Path
run, task, batch, optimizer, seed = sys.argv[1:]
results = json.loads((Path(run) / "all_results.json").read_text())
state = json.loads((Path(run) / "trainer_state.json").read_text())
print(json.dumps({"run": run, "task": task, "batch": int(batch), "optimizer": optimizer, "seed": int(seed),
                  "results": results, "curve": [log for log in state["log_history"] if "loss" in log]}))
PY
    done
  done
done
python - $out <<'PY'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
metric = {"mrpc": "eval_combined_score", "sst2": "eval_accuracy"}
lines = ["| task | batch | seed | AdamW score | K-SAM score | K-SAM - AdamW | AdamW eval_loss | K-SAM eval_loss | "
         "K-SAM settings | K-SAM median step / AdamW |", "|---|---|---|---|---|---|---|---|---|---|"]
cells = {(r["task"], r["batch"], r["seed"], r["optimizer"]): r["results"] for r in rows}
for (task, batch, seed, optimizer), k in sorted(cells.items()):
    if optimizer != "ksam" or (task, batch, seed, "adamw") not in cells:
        continue
    a = cells[task, batch, seed, "adamw"]
    settings = ", ".join(f"{name}={k[name]}" for name in ("ksam_selection", "sam_rho", "ksam_k") if name in k)
    lines.append(f"| {task} | {batch} | {seed} | {100 * a[metric[task]]:.1f} | {100 * k[metric[task]]:.1f} | "
                 f"{100 * (k[metric[task]] - a[metric[task]]):+.1f} | {a['eval_loss']:.3f} | {k['eval_loss']:.3f} | "
                 f"{settings} | {k['train_median_step_time'] / a['train_median_step_time']:.2f} |")
(out / "results.md").write_text(
    "`bash glue_scripts/defaults_check.sh`: run_glue.py's defaults plus `--optimizer`, the library's defaults "
    f"for K-SAM; ln 2 = {math.log(2):.3f}.\n\n" + "\n".join(lines) + "\n")
print("\n".join(lines))
PY
