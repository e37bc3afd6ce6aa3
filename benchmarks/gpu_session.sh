#!/bin/bash
# The GPU checks of one device-machine session, in one call (docs/performance.md): issue 37's shapes
# that fill a GPU, every rule against its bound, the LoRA modes at an LLM shape, and the host
# synchronisations; then (with `all`) the fp16/bf16 gradient check and the Trainer's FSDP2 path.
#
# Prepare here (the device gets the repository only: MiniLM's 88 MB of weights exceed what travels,
# and random weights of its shape time the same; BERT-base-shaped and Qwen2-0.5B-shaped are random):
#   mkdir -p .device/minilm   # .device/ is ignored by git
#   cp ../shared/models/all-MiniLM-L6-v2/{config.json,vocab.txt,tokenizer*.json,special_tokens_map.json} .device/minilm/
# Run (device tool): command `bash benchmarks/gpu_session.sh [shapes|all]`, carry [".device"], timeout_s 600;
# results under $OUT. `shapes` (the default, about 8 minutes on an H100): the step benchmark at BERT-base
# bf16 32x128, 128x128 and 32x512, MiniLM's launch-bound 32x128, and every rule with LoRA at Qwen2-0.5B's shape
# (4 x 2048 tokens of packed sequences, TRL's padding-free layout).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch,transformers,accelerate;print('torch',torch.__version__,'transformers',transformers.__version__,'accelerate',accelerate.__version__)"
  nproc; } > $OUT/machine.txt 2>&1
python3 -m benchmarks.common random-minilm --config .device/minilm --out /tmp/minilm >> $OUT/machine.txt 2>&1
export KSAM_BENCH_MINILM=/tmp/minilm
step() {  # tag, limit, options...
  local tag=$1 limit=$2; shift 2
  timeout $limit python3 -m benchmarks.step_time --device cuda --inputs fixed --ks 0.25 --variants top_k top_k_ascent \
    --steps 20 --warmup 5 --output-dir $OUT --tag $tag --overwrite --quiet "$@" > $OUT/$tag.txt 2>&1
}
step step_time_bert-base12_bf16_32x128_cuda 100 --model bert-base-shaped --layers 12 --dtype bf16 --batch-size 32 --seq-len 128
step step_time_bert-base12_bf16_128x128_cuda 130 --model bert-base-shaped --layers 12 --dtype bf16 --batch-size 128 --seq-len 128
step step_time_bert-base12_bf16_32x512_cuda 130 --model bert-base-shaped --layers 12 --dtype bf16 --batch-size 32 --seq-len 512
step step_time_minilm_fp32_32x128_cuda 60 --model minilm --batch-size 32 --seq-len 128
timeout 150 python3 -m benchmarks.lora_step_time --shape qwen2-0.5b --device cuda --rules all --packed --steps 6 \
  --warmup 2 --output $OUT/lora_step_time_qwen2-0.5b_cuda.json > $OUT/lora_step_time_qwen2-0.5b_cuda.txt 2>&1
python3 -m benchmarks.bound_table $OUT/step_time_bert-base12_bf16_*_cuda.json > $OUT/bound_table.md 2>&1
if [[ ${1:-shapes} == all ]]; then
  timeout 150 python3 -m benchmarks.gpu_check --output $OUT/gpu_check.json > $OUT/gpu_check.txt 2>&1; echo "rc $?" >> $OUT/gpu_check.txt
  for m in ksam sam; do
    timeout 90 python3 -m benchmarks.fsdp_check --nproc 1 --sam_mode $m --output /tmp/fsdp_$m >> $OUT/gpu_check.txt 2>&1
    echo "rc $?" >> $OUT/gpu_check.txt
  done
fi
rm -f $OUT/*.png  # each plot's data is in its JSON's rows
tail -n 16 $OUT/*.txt $OUT/bound_table.md
