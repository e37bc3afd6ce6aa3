"""One process of `tests/distributed/test_fsdp.py` (run it under torchrun): one SAM / K-SAM step of
`KSAMTrainer.training_step` on a tiny BERT sharded with FSDP2's `fully_shard` (each encoder layer and
the root), on this process's 4 rows of an 8-row batch, over gloo on the CPU.

Saves to `<out>/<config>_rank<rank>.pt`: the full gradient after the step (`p.grad.full_tensor()`,
the reduce-scattered mean over the processes), whether each rank's shards came back bit for bit, and
the rows K-SAM kept; the test recomputes the step by hand on the unsharded model. `checkpoint`:
two optimizer steps, straight and through a checkpoint (`run_checkpoint`).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.fsdp_worker --out DIR sam
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.distributed import workers
from tests.testing_utils import make_case, rows

ROWS_PER_PROCESS = 4
SEED = 40
RHO = 0.05
CONFIGS = {
    "sam": dict(sam_mode="sam"),
    "top_k_ascent": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2),
    "top_k": dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2),
    "rank1_fails": dict(sam_mode="sam"),  # rank 1 raises before its step: rank 0 must not wait for ever
    "rank1_aborts_once": {},  # rank 1 dies of SIGABRT the first time (a marker beside --out): `run_abort_once`
    "checkpoint": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2),  # see `run_checkpoint`
    # Activation checkpointing (the model's own, before sharding), and bf16 parameters for the
    # forward and backward with fp32 gradients reduced (FSDP2's MixedPrecisionPolicy).
    "top_k_ascent_activation_checkpointing": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2),
    "top_k_ascent_bf16_params": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2),
}


def sharded_trainer(name: str, out: str, seed: int = SEED) -> tuple[torch.nn.Module, KSAMTrainer, dict]:
    """The tiny BERT of `make_case` (initialised from `seed`), sharded (each encoder layer and the
    root), its trainer with the optimizer created, and this process's rows of the batch of `SEED`."""
    model, _ = make_case("seqcls_single", batch_size=2 * ROWS_PER_PROCESS, seed=seed)
    _, batch = make_case("seqcls_single", batch_size=2 * ROWS_PER_PROCESS, seed=SEED)
    rank = dist.get_rank()
    mine = rows(batch, list(range(rank * ROWS_PER_PROCESS, (rank + 1) * ROWS_PER_PROCESS)))
    if name.endswith("activation_checkpointing"):
        model.gradient_checkpointing_enable()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if name.endswith("bf16_params") else MixedPrecisionPolicy()
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    args = KSAMConfig(output_dir=os.path.join(out, "trainer_" + name), report_to="none", use_cpu=True,
                      save_strategy="no", seed=0, disable_tqdm=True, sam_rho=RHO, learning_rate=1e-2,
                      **CONFIGS[name])
    trainer = KSAMTrainer(model=model, args=args)
    trainer.create_optimizer()
    return model, trainer, mine


def local_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.to_local().detach().clone() for p in model.parameters()]


def run_step(name: str, out: str) -> None:
    """One `training_step`; saves the full gradient, whether the shards came back, the kept rows."""
    model, trainer, mine = sharded_trainer(name, out)
    rank = dist.get_rank()
    if name == "rank1_fails" and rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    before = local_weights(model)
    trainer.training_step(model, mine)
    restored = all(torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before))
    grads = {n: p.grad.full_tensor().detach().clone() for n, p in model.named_parameters()}
    selected = trainer.sam_statistics.last_selected
    torch.save({"grads": grads, "restored": restored, "world_size": dist.get_world_size(),
                "kept": None if selected is None else selected.ascent.tolist(),
                "sharded": type(model.bert.encoder.layer[0].attention.self.query.weight).__name__},
               os.path.join(out, f"{name}_rank{rank}.pt"))


def optimizer_step(model: torch.nn.Module, trainer: KSAMTrainer, batch: dict) -> None:
    trainer.training_step(model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1


def run_checkpoint(out: str) -> None:
    """Two optimizer steps straight, against one step, a checkpoint (torch.distributed.checkpoint of
    the sharded model and optimizer), a fresh model and optimizer (another initialisation) loaded
    from it, and the second step: the weights must agree bit for bit, and the checkpoint must hold
    the weights the first optimizer step left (not w + e)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, trainer, mine = sharded_trainer("checkpoint", out)
    second = {k: v.flip(0) for k, v in mine.items()}  # another batch: the same rows in reverse order
    optimizer_step(model, trainer, mine)
    after_first = local_weights(model)
    optimizer_step(model, trainer, second)
    straight = local_weights(model)

    model, trainer, _ = sharded_trainer("checkpoint", out)
    optimizer_step(model, trainer, mine)
    dcp.save(dict(zip(("model", "optimizer"), get_state_dict(model, trainer.optimizer))),
             checkpoint_id=os.path.join(out, "dcp"))
    model, trainer, _ = sharded_trainer("checkpoint", out, seed=SEED + 1)
    state = dict(zip(("model", "optimizer"), get_state_dict(model, trainer.optimizer)))
    dcp.load(state, checkpoint_id=os.path.join(out, "dcp"))
    set_state_dict(model, trainer.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    loaded = local_weights(model)
    trainer.state.global_step = 1
    optimizer_step(model, trainer, second)
    resumed = local_weights(model)
    torch.save({"checkpoint_is_the_first_step": all(torch.equal(a, b) for a, b in zip(loaded, after_first)),
                "resumed_is_straight": all(torch.equal(a, b) for a, b in zip(resumed, straight)),
                "moved": any(not torch.equal(a, b) for a, b in zip(straight, after_first))},
               os.path.join(out, f"checkpoint_rank{dist.get_rank()}.pt"))


def run_abort_once(out: str) -> None:
    """Rank 1 aborts natively (as a C++ `std::terminate` would) unless the marker beside `out` says
    it has before; both ranks then save that they ran."""
    marker = os.path.join(os.path.dirname(os.path.abspath(out)), "aborted_once")
    dist.barrier()
    if dist.get_rank() == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()
    dist.barrier()
    torch.save({"ran": True}, os.path.join(out, f"rank1_aborts_once_rank{dist.get_rank()}.pt"))


def run(name: str, out: str) -> None:
    if name == "checkpoint":
        run_checkpoint(out)
    elif name == "rank1_aborts_once":
        run_abort_once(out)
    else:
        run_step(name, out)


if __name__ == "__main__":
    workers.main(CONFIGS, run)
