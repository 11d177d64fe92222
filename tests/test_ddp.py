"""Our additions under torch.distributed: per-rank lists are gathered before metrics are computed.

nnU-Net's DDP itself needs CUDA (NCCL); the gathering we add runs on any backend, so it is checked
here with two CPU processes and gloo."""
from __future__ import annotations

import os

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_multitask.trainer import _gather, subtype_scores


def _worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        targets = [0, 1] if rank == 0 else [2, 2]
        predictions = [0, 2] if rank == 0 else [2, 1]
        gathered_targets, gathered_predictions = _gather(targets), _gather(predictions)
        results[rank] = (gathered_targets, gathered_predictions,
                         subtype_scores(np.array(gathered_targets), np.array(gathered_predictions)))
    finally:
        dist.destroy_process_group()


def test_gather_and_scores_see_every_rank():
    port = 29500 + os.getpid() % 1000
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
        results = dict(results)
    assert results[0][:2] == results[1][:2] == ([0, 1, 2, 2], [0, 2, 2, 1])
    expected = subtype_scores(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert results[0][2] == results[1][2] == expected
    assert expected["accuracy"] == 0.5 and expected["recall_2"] == 0.5


def test_gather_without_ddp_is_identity():
    assert _gather([3, 4]) == [3, 4]
