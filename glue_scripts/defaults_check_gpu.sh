#!/usr/bin/env bash
# defaults_check.sh on a lent GPU machine (the device tool), its four (task, batch) cells at once.
# MiniLM's 88 MB of fp32 weights exceed what travels: they go rounded to fp16 (45 MB) and are cast
# back to fp32 there, so AdamW and every candidate start from the same, slightly rounded, weights.
# The machine lacks `datasets`: its wheels travel too.
#
# Prepare here, once (in the repository's root):
#   echo /.device/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   mkdir -p .device/minilm_fp16 .device/glue/MRPC .device/glue/SST-2
#   cp ../shared/models/all-MiniLM-L6-v2/{config.json,vocab.txt,tokenizer*.json,special_tokens_map.json} .device/minilm_fp16/
#   python -c "from safetensors.torch import load_file as l, save_file as s; w = l('../shared/models/all-MiniLM-L6-v2/model.safetensors'); s({k: v.half() if v.is_floating_point() else v for k, v in w.items()}, '.device/minilm_fp16/model.safetensors', metadata={'format': 'pt'})"
#   for t in MRPC SST-2; do cp ../shared/glue/$t/{train,dev}.tsv .device/glue/$t/; done
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# Run (device tool): command `bash glue_scripts/defaults_check_gpu.sh SEED [LABEL="FLAGS" ...]`,
# carry [".device/minilm_fp16", ".device/glue", ".whl"]; rows and table under $OUT/defaults.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/bin && rm -f /tmp/bin/python && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_CACHE=/tmp/hf_datasets PYTHONUNBUFFERED=1
mkdir -p /tmp/minilm && cp .device/minilm_fp16/*.json .device/minilm_fp16/vocab.txt /tmp/minilm/
python3 - <<'PY' || exit 1
from safetensors.torch import load_file, save_file
weights = load_file(".device/minilm_fp16/model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, "/tmp/minilm/model.safetensors",
          metadata={"format": "pt"})
PY
export MODEL=/tmp/minilm GLUE_DIR=.device/glue RESULTS_DIR=$OUT/defaults RUNS_DIR=/tmp/runs
mkdir -p "$RESULTS_DIR"
echo "one $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) (the device tool), torch" \
     "$(python3 -c 'import torch; print(torch.__version__)'), four runs at a time; MiniLM's weights rounded to fp16" \
     "to travel and trained in fp32" > "$RESULTS_DIR/machine.txt"
for task in mrpc sst2; do
  for batch in 8 32; do
    TASKS=$task BATCHES=$batch bash glue_scripts/defaults_check.sh "$@" > "$RESULTS_DIR/$task-b$batch.log" 2>&1 &
  done
done
wait
python3 -m glue_scripts.summarize_defaults "$RESULTS_DIR" "$GLUE_DIR"
