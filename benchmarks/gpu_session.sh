#!/bin/bash
# The GPU checks of one device-machine session, in one call (docs/performance.md, "On a GPU"):
# step times of every rule (MiniLM's shape and BERT-base's, 32 x 128, fp32), the fp16/bf16 gradient
# check (benchmarks.gpu_check), and the Trainer's FSDP2 path on one GPU (benchmarks.fsdp_check --nproc 1).
#
# Prepare here (the device gets the repository only; MiniLM's 88 MB of weights exceed what travels, and
# random weights of its shape time the same):
#   mkdir -p .device/minilm && echo /.device/ >> .git/info/exclude
#   cp ../shared/models/all-MiniLM-L6-v2/{config.json,vocab.txt,tokenizer*.json,special_tokens_map.json} .device/minilm/
#   optional, for a machine whose packages fail: pip download --no-deps -d .device/wheels transformers accelerate huggingface_hub
# Run (device tool): command `bash benchmarks/gpu_session.sh`, carry [".device"]; results under $OUT.
# `bash benchmarks/gpu_session.sh step_times`: the two step-time tables only (about 4 minutes).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch,transformers,accelerate;print('torch',torch.__version__,'transformers',transformers.__version__,'accelerate',accelerate.__version__)"
  nproc; } > $OUT/step_time_minilm_fixed_cuda.txt 2>&1
python3 - <<'PY'
import torch
from transformers import BertConfig, BertForSequenceClassification
torch.manual_seed(0)
BertForSequenceClassification(BertConfig.from_pretrained(".device/minilm", num_labels=2)).save_pretrained("/tmp/minilm")
PY
cp .device/minilm/*tok* .device/minilm/vocab.txt /tmp/minilm/
export KSAM_BENCH_MINILM=/tmp/minilm
step() {  # model, tag
  timeout 230 python3 -m benchmarks.step_time --model $1 --layers 12 --device cuda --inputs fixed --ks 0.25 \
    --variants top_k top_k_ascent --steps 30 --warmup 5 --output-dir $OUT --tag $2 --overwrite --quiet; }
if ! step minilm step_time_minilm_fixed_cuda >> $OUT/step_time_minilm_fixed_cuda.txt 2>&1; then
  echo "=== the device's packages failed; again with the carried wheels" >> $OUT/step_time_minilm_fixed_cuda.txt
  pip install -q --no-deps --target /tmp/pkgs .device/wheels/*.whl && export PYTHONPATH=$PWD:/tmp/pkgs
  step minilm step_time_minilm_fixed_cuda >> $OUT/step_time_minilm_fixed_cuda.txt 2>&1
fi
step bert-base-shaped step_time_bert-base-shaped12_fixed_cuda > $OUT/step_time_bert-base-shaped12_fixed_cuda.txt 2>&1
if [[ ${1:-all} == step_times ]]; then rm -f $OUT/*.png; tail -n 25 $OUT/*.txt; exit 0; fi
timeout 150 python3 -m benchmarks.gpu_check --output $OUT/gpu_check.json > $OUT/gpu_check.txt 2>&1; echo "rc $?" >> $OUT/gpu_check.txt
for m in ksam sam; do
  timeout 90 python3 -m benchmarks.fsdp_check --nproc 1 --sam_mode $m --output /tmp/fsdp_$m >> $OUT/gpu_check.txt 2>&1
  echo "rc $?" >> $OUT/gpu_check.txt
done
rm -f $OUT/*.png  # at most 8 files come back; each plot is in the benchmark's JSON's rows
tail -n 25 $OUT/*.txt
