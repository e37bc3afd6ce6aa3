#!/bin/bash
# The studies' grids on a lent GPU, in one device call of at most 10 minutes: a MiniLM run that
# takes 15-40 minutes on 2 CPU cores takes about a minute there.
#
# Prepare here (only the checkout travels, not ../shared; .device is ignored by git):
#   python -m studies.device_copy pack --model ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue \
#       --tasks SST-2 MRPC RTE CoLA --out .device
# Run (device tool): command `bash studies/gpu_session.sh [SPEC:CELL:SEEDS ...]`, carry [".device"],
# timeout_s 600. Default jobs: issue 39's and issue 38's pilots on the noisy SST-2 cell, seeds 1 and 2.
# Each job is a `studies.grid` call on the unpacked fp16 weights; the grid stops at the deadline
# (a run cut short leaves no row: the next call redoes it).
#
# Rows: each spec's results folder with `-gpu` appended, under $OUT (the committed rows of that
# folder are copied there first, so that the grid skips the runs already done). Copy it back
# (`cp -r <files_at>/<folder>-gpu docs/results/`) and commit. The fp16-rounded weights are another
# starting point than the CPU rows': GPU rows live in their own folder and pair only among
# themselves (`python -m studies.summarize_beyond docs/results/beyond-training-less-gpu`).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:?the device tool sets OUT}
DEADLINE=$(( $(date +%s) + ${STUDY_SECONDS:-540} ))
JOBS=("$@")
if [[ ${#JOBS[@]} == 0 ]]; then
  JOBS=(studies/specs/beyond_training_less_pilot.json:sst2-n1000-noise30:1,2
        studies/specs/lora_sam_pilot.json:sst2-n1000-noise30:1,2)
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; nproc; } > "$OUT/machine.txt"
python3 -m studies.device_copy unpack --packed .device/model_fp16 --out /tmp/minilm >> "$OUT/machine.txt" 2>&1 || exit 1
for job in "${JOBS[@]}"; do
  IFS=: read -r spec cell seeds <<< "$job"
  folder=$(python3 -c "import sys; from pathlib import Path; from studies.grid import load_spec
print(load_spec(Path(sys.argv[1]))['arguments']['results_dir'])" "$spec")-gpu
  mkdir -p "$OUT/$(basename "$folder")"
  [[ -d $folder ]] && cp -r "$folder/." "$OUT/$(basename "$folder")/"
  left=$(( DEADLINE - $(date +%s) ))
  (( left < 60 )) && { echo "deadline: $job not started" | tee -a "$OUT/progress.txt"; continue; }
  echo "$job: up to ${left}s" | tee -a "$OUT/progress.txt"
  timeout "$left" python3 -m studies.grid --spec "$spec" --cells "$cell" --seeds ${seeds//,/ } \
    --model_name_or_path /tmp/minilm --glue_dir .device/glue --results_dir "$OUT/$(basename "$folder")" \
    --runs_dir /tmp/runs 2>&1 | grep --line-buffered '^\[grid\]' | tee -a "$OUT/progress.txt"
done
rm -f "$OUT"/*/*/*.png
