#!/usr/bin/env bash
# Writes the machine the figures of README.md and docs/ were measured on, one file a machine.
# Usage (repository root, its virtual environment active): bash docs/machines/describe.sh docs/machines/DATE-CPU.txt
set -e
out=${1:?give the output file, e.g. docs/machines/$(date -u +%F)-cpu.txt}
cd "$(dirname "$0")/../.."
{
  echo "# Written by bash docs/machines/describe.sh on $(date -u +%F)"
  lscpu | grep -E "^(Architecture|CPU\(s\)|Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)):"
  echo "AVX-512 / AMX flags: $(grep -m1 -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "Memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "GPU: $(command -v nvidia-smi >/dev/null && nvidia-smi -L | head -1 || echo none, no nvidia-smi)"
  python -c "import platform, torch, transformers, accelerate; print('Python', platform.python_version(), '| torch', \
torch.__version__, '| torch threads', torch.get_num_threads(), '| CUDA available', torch.cuda.is_available(), \
'| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"
} > "$out"
cat "$out"
