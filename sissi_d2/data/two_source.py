"""Mixed batches of exactly ``n`` source + ``n`` target images ("balanced gradient contribution").

Detectron2's ``build_batch_data_loader`` lets each worker collate whole batches from an
index-ordered sampler, so mixing two domains in one sampler turns "2+2" into "4+0" / "0+4" once
there are workers. Here each domain has its own loader (one process per worker, whole batches of
one domain) and the two are zipped: every iteration holds exactly the configured numbers, for
any worker count and any number of processes.

Sampling is organised by epoch (one pass over the target set): the order of epoch ``e`` is a
function of (seed, e) only, so a run resumed at iteration ``i`` draws the same images as an
uninterrupted one. Loaders are finite, one epoch long, and rebuilt at each epoch boundary,
which is also when the target labels and the cloning state may change.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

__all__ = ["EpochIndexSampler", "build_domain_loader", "TwoSourceLoader", "iters_per_epoch", "per_rank_batch"]


def per_rank_batch(total: int, world_size: int, what: str) -> int:
    if total <= 0 or total % world_size != 0:
        raise ValueError(
            f"{what}={total} must be a positive multiple of the number of processes ({world_size})"
        )
    return total // world_size


def iters_per_epoch(num_target_images: int, target_batch_total: int) -> int:
    """Iterations in one pass over the target set (the last batch is topped up)."""
    if num_target_images <= 0:
        raise ValueError("the target training set is empty: SISSI needs target images")
    return math.ceil(num_target_images / target_batch_total)


class EpochIndexSampler(torchdata.Sampler):
    """The indices one rank draws in epoch ``epoch``, starting at batch ``start_batch``.

    The global order of an epoch is ``permutation(size)`` seeded by (seed, epoch), cycled with
    further permutations until it covers ``num_batches * global_batch`` draws. Global batch ``b``
    is ``order[b*G:(b+1)*G]``; rank ``r`` takes its slice ``[r*n:(r+1)*n]`` of it.
    """

    def __init__(self, size: int, global_batch: int, num_batches: int, seed: int, epoch: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.global_batch, self.num_batches = size, global_batch, num_batches
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.rank, self.world_size = rank, world_size
        self.local_batch = per_rank_batch(global_batch, world_size, "global batch")

    def global_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        needed = self.num_batches * self.global_batch
        parts, have = [], 0
        while have < needed:
            parts.append(rng.permutation(self.size))
            have += self.size
        return np.concatenate(parts)[:needed]

    def __iter__(self):
        """Yields (dataset index, draw seed): the seed makes each draw's augmentation a function
        of (seed, epoch, position) only, whatever the worker count or a resume."""
        order = self.global_order().reshape(self.num_batches, self.global_batch)
        lo = self.rank * self.local_batch
        for b in range(self.start_batch, self.num_batches):
            for j, index in enumerate(order[b, lo : lo + self.local_batch].tolist()):
                position = b * self.global_batch + lo + j
                yield index, int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])

    def __len__(self):
        return (self.num_batches - self.start_batch) * self.local_batch


def _trivial_batch_collator(batch):
    return batch


class SeededMapDataset(torchdata.Dataset):
    """Maps record ``index`` with the global RNGs seeded by the draw's seed: Detectron2
    augmentations draw from numpy's global RNG, which would otherwise depend on the worker."""

    def __init__(self, records, mapper):
        self._records = DatasetFromList(records, copy=False, serialize=True)
        self._mapper = mapper

    def __len__(self):
        return len(self._records)

    def __getitem__(self, item):
        index, seed = item
        np.random.seed(seed)
        random.seed(seed)
        return self._mapper(self._records[index])


def build_domain_loader(records, mapper, sampler: EpochIndexSampler, num_workers: int):
    """A finite loader of whole per-rank batches of one domain."""
    batch_sampler = torchdata.BatchSampler(sampler, sampler.local_batch, drop_last=True)
    return torchdata.DataLoader(
        SeededMapDataset(records, mapper), batch_sampler=batch_sampler, num_workers=num_workers,
        collate_fn=_trivial_batch_collator, persistent_workers=False,
    )


class TwoSourceLoader:
    """Zip of a source and a target loader: each item is ``source_batch + target_batch``."""

    def __init__(self, source_loader, target_loader, epoch: int, start_batch: int):
        self.source_loader = source_loader
        self.target_loader = target_loader
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self):
        return min(len(self.source_loader), len(self.target_loader))

    def __iter__(self):
        for source_batch, target_batch in zip(self.source_loader, self.target_loader):
            yield list(source_batch) + list(target_batch)

    @classmethod
    def for_epoch(cls, source_records, target_records, source_mapper, target_mapper, *,
                  source_batch_total: int, target_batch_total: int, seed: int, epoch: int,
                  start_batch: int = 0, num_workers: int = 0):
        world, rank = comm.get_world_size(), comm.get_rank()
        num_batches = iters_per_epoch(len(target_records), target_batch_total)
        samplers = [
            EpochIndexSampler(len(recs), total, num_batches, seed + offset, epoch, start_batch, rank, world)
            for recs, total, offset in (
                (source_records, source_batch_total, 7919), (target_records, target_batch_total, 0)
            )
        ]
        # Split the workers between the two domains; each domain gets at least one if any.
        src_workers = num_workers - num_workers // 2
        tgt_workers = num_workers // 2 if num_workers > 1 else num_workers
        return cls(
            build_domain_loader(source_records, source_mapper, samplers[0], src_workers),
            build_domain_loader(target_records, target_mapper, samplers[1], tgt_workers),
            epoch, start_batch,
        )
