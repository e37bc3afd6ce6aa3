"""Benchmarks of `KSAMTrainer`, run from the repository root as modules:

    python -m benchmarks.step_time --help    # step time and memory against AdamW and the bound
    python -m benchmarks.gpu_check --help    # fp16 / bf16 gradients against fp32, GPU step times

`common` holds what both share (models, synthetic batches, machine description, sync, quantiles).
"""
