"""One process of the multi-process tests in `tests/distributed/test_ddp.py` (run it under torchrun).

For each configuration named on the command line, every process trains a tiny model (dropout off,
`tests/testing_utils.py`) with `KSAMTrainer.train()` for one optimizer step and saves, with
`torch.save`, to `<out>/<config>_rank<rank>.pt`:

- `seen`: the micro-batches the training loop handed to this process's `training_step`;
- `grads`: `p.grad` at `on_pre_optimizer_step` (after DDP's all-reduce, before the update);
- `before` / `after`: the weights before `train()` and after the step;
- `log_history`, `world_size`, `distributed_type`, `wrapped` (the class the Trainer trained).

The test process recomputes the expected gradients by hand from `seen`. The optimizer is plain SGD
at a constant learning rate, so `after = before - lr * grads` can be checked as well.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.ddp_worker --out DIR ksam sam_ga2
"""

from __future__ import annotations

import os

import torch

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.distributed import workers
from tests.testing_utils import GradientAtStep, TwoHeadClassifier, bert_config, make_case, recording, stack

PER_DEVICE_BATCH = 4
DATASET_SIZE = 16
LEARNING_RATE = 0.1

CONFIGS = {
    # name: (tiny_models case, seed, KSAMConfig fields)
    "ksam": ("seqcls_single", 21, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, gradient_accumulation_steps=1)),
    "ksam_ga2": ("causal_lm", 22, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, gradient_accumulation_steps=2)),
    "sam_ga2": ("seqcls_single", 23, dict(sam_mode="sam", gradient_accumulation_steps=2)),
    "ksam_sync": ("seqcls_single", 24, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, sam_sync_ascent=True,
                                            gradient_accumulation_steps=1)),
    "ksam_sync_ga2": ("token", 25, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, sam_sync_ascent=True,
                                        gradient_accumulation_steps=2)),
    # Rank 1's micro-batch has no labelled token (sequential sampling: rank 0 gets rows 0-3, rank 1 rows 4-7).
    "unlabelled_rank": ("token", 26, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, gradient_accumulation_steps=1,
                                          train_sampling_strategy="sequential")),
    "unlabelled_rank_ksam_sync": ("token", 28, dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2, sam_sync_ascent=True,
                                                    gradient_accumulation_steps=1,
                                                    train_sampling_strategy="sequential")),
    # Rank 1's rows use a second head that rank 0's leave without a gradient: the synced ascent
    # gradient must still be the mean over one tensor per parameter on every process.
    "sync_unused_params": ("two_heads", 29, dict(sam_mode="sam", sam_sync_ascent=True, gradient_accumulation_steps=1,
                                                 train_sampling_strategy="sequential",
                                                 ddp_find_unused_parameters=True)),
    "unlabelled_rank_sam_sync": ("token", 27, dict(sam_mode="sam", sam_sync_ascent=True,
                                                   gradient_accumulation_steps=1,
                                                   train_sampling_strategy="sequential")),
    # SAM schedules, 4 and 6 optimizer steps of 2 micro-batches on each process: every process and
    # every micro-batch must decide alike (each step's logged share of perturbed micro-batches).
    "scheduled_ga2": ("seqcls_single", 30, dict(sam_mode="sam", sam_every_n_steps=2, sam_start_fraction=0.25,
                                                gradient_accumulation_steps=2, max_steps=4)),
    "step_share_ga2": ("seqcls_single", 31, dict(sam_mode="random_direction", sam_step_share=0.5,
                                                 gradient_accumulation_steps=2, max_steps=6)),
    # m-SAM: each micro-batch of 4 in two groups of 2, each its own perturbation; the groups' descents
    # are taken without sync but the last one's, whose backward syncs what the step accumulated.
    "sam_groups_ga2": ("seqcls_single", 32, dict(sam_mode="sam", sam_group_size=2, gradient_accumulation_steps=2)),
    # Bi-LoRA on a LoRA model: the auxiliary adapter's ascent gradient is averaged across processes.
    "bi_lora": ("lora", 33, dict(sam_mode="bi_lora", gradient_accumulation_steps=1, learning_rate=1e-2)),
}


def dataset_for(name: str):
    case, seed, _ = CONFIGS[name]
    if case == "two_heads":
        _, batch = make_case("seqcls_single", batch_size=DATASET_SIZE, seed=seed)
        torch.manual_seed(seed)
        model = TwoHeadClassifier(bert_config(num_labels=3))
        batch["use_second"] = (torch.arange(DATASET_SIZE) // PER_DEVICE_BATCH % 2).float()
        return model, [{k: v[i] for k, v in batch.items()} for i in range(DATASET_SIZE)]
    if case == "lora":
        from peft import LoraConfig, get_peft_model

        model, batch = make_case("seqcls_single", batch_size=DATASET_SIZE, seed=seed)
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
        return model, [{k: v[i] for k, v in batch.items()} for i in range(DATASET_SIZE)]
    model, batch = make_case(case, batch_size=DATASET_SIZE, seed=seed)
    if name.startswith("unlabelled_rank"):
        batch["labels"][PER_DEVICE_BATCH:] = -100
    return model, [{k: v[i] for k, v in batch.items()} for i in range(DATASET_SIZE)]


RecordingTrainer = recording(KSAMTrainer)


def run(name: str, out: str) -> None:
    _, _, sam = CONFIGS[name]
    model, dataset = dataset_for(name)
    callback = GradientAtStep()
    settings = dict(output_dir=os.path.join(out, "trainer_" + name), report_to="none", use_cpu=True,
                    max_steps=1, per_device_train_batch_size=PER_DEVICE_BATCH, max_grad_norm=0.0,
                    optim="sgd", learning_rate=LEARNING_RATE, lr_scheduler_type="constant", weight_decay=0.0,
                    logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, sam_rho=0.05)
    args = KSAMConfig(**{**settings, **sam})
    trainer = RecordingTrainer(model=model, args=args, train_dataset=dataset, data_collator=stack,
                               callbacks=[callback])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    rank = trainer.args.process_index
    torch.save({
        "seen": trainer.seen,
        "grads": callback.grads,
        "before": before,
        "after": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        "log_history": trainer.state.log_history,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "auxiliary": None if trainer.lora_sam is None else [p.detach().clone() for p in trainer.lora_sam.parameters()],
    }, os.path.join(out, f"{name}_rank{rank}.pt"))


if __name__ == "__main__":
    workers.main(CONFIGS, run)
