"""Benchmarks of `KSAMTrainer`, run from the repository root as modules:

    python -m benchmarks.step_time --help    # step time and memory against AdamW and the bound
    python -m benchmarks.gpu_check --help    # fp16 / bf16 gradients against fp32, GPU step times
    python -m benchmarks.lora_step_time --help   # every rule on a causal LM with LoRA (packed: TRL's layout)
    python -m benchmarks.bound_table --help  # each rule against its pass bound, from step_time's JSON files
    python -m benchmarks.syncs --help        # host synchronisations per step, by rule
    python -m benchmarks.alone --help        # one trainer step against its bound, nothing else in memory

`common` holds what they share (models, synthetic batches, machine description, sync, quantiles).
"""
