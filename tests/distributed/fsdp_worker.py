"""One process of `tests/distributed/test_fsdp.py` (run it under torchrun): one SAM / K-SAM step of
`KSAMTrainer.training_step` on a tiny BERT sharded with FSDP2's `fully_shard` (each encoder layer and
the root), on this process's 4 rows of an 8-row batch, over gloo on the CPU.

Saves to `<out>/<config>_rank<rank>.pt`: the full gradient after the step (`p.grad.full_tensor()`,
the reduce-scattered mean over the processes), whether each rank's shards came back bit for bit, and
the rows K-SAM kept. The test recomputes the step by hand on the unsharded model.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.fsdp_worker --out DIR sam
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.testing_utils import make_case, rows

ROWS_PER_PROCESS = 4
SEED = 40
RHO = 0.05
CONFIGS = {
    "sam": dict(sam_mode="sam"),
    "top_k_ascent": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2),
    "top_k": dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=2),
    "rank1_fails": dict(sam_mode="sam"),
    "dbg_ksam_all": dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=4),
    "dbg_sam_nograd": dict(sam_mode="sam"),  # rank 1 raises before its step: rank 0 must not wait for ever
}


def run(name: str, out: str) -> None:
    rank = dist.get_rank()
    model, batch = make_case("seqcls_single", batch_size=2 * ROWS_PER_PROCESS, seed=SEED)
    mine = rows(batch, list(range(rank * ROWS_PER_PROCESS, (rank + 1) * ROWS_PER_PROCESS)))
    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    args = KSAMConfig(output_dir=os.path.join(out, "trainer_" + name), report_to="none", use_cpu=True,
                      save_strategy="no", seed=0, disable_tqdm=True, sam_rho=RHO, **CONFIGS[name])
    trainer = KSAMTrainer(model=model, args=args)
    if name == "rank1_fails" and rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    before = [p.to_local().detach().clone() for p in model.parameters()]
    trainer.training_step(model, mine)
    restored = all(torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before))
    grads = {n: p.grad.full_tensor().detach().clone() for n, p in model.named_parameters()}
    selected = trainer.sam_statistics.last_selected
    torch.save({"grads": grads, "restored": restored, "world_size": dist.get_world_size(),
                "kept": None if selected is None else selected.ascent.tolist(),
                "sharded": type(model.bert.encoder.layer[0].attention.self.query.weight).__name__},
               os.path.join(out, f"{name}_rank{rank}.pt"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    options = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        for name in options.configs:
            run(name, options.out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
