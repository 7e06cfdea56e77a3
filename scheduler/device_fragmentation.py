"""How fragmented a node's free devices are: the tie-breaker of intra-node placement.

Two placements of equal topology quality are told apart by what they leave behind. The measure is
a pair compared lexicographically, lower is better:

1. ``rail_loss``: for every free GPU, how much worse its nearest *free* NIC is than its nearest NIC
   on the empty node; and for every free NIC, the same towards free GPUs. It is zero when every
   free GPU still has its own rail next to it. A NIC that loses every free GPU counts one step past
   CROSS_SOCKET. Taking a GPU without its NIC (or a NIC without its GPU) strands the partner, so
   this term keeps GPU+NIC rails together.
2. ``spread``: the sum of GPU-GPU tiers over all pairs of free GPUs. With the number of free GPUs
   fixed by the request, a smaller sum means the free GPUs sit in fewer, fuller switches / NUMA
   nodes / sockets, so later multi-GPU pods find close sets. E.g. on a 2x4 box with 4 + 2 free,
   a 1-GPU pod should go to the side with 2 free: leaving 4 + 1 costs 28, leaving 3 + 2 costs 32.

Both terms only read the tier matrices, so they work for non-hierarchical (NVLink) topologies.
"""

from __future__ import annotations

from functools import lru_cache

from scheduler.topology import NO_DEVICE, CompactTopology, bits


@lru_cache(maxsize=1 << 16)
def device_fragmentation(topo: CompactTopology, free_gpus: int, free_nics: int) -> tuple[int, int]:
    """(rail_loss, spread) of the free devices left on a node; lower is less fragmented."""
    gpus = bits(free_gpus)
    nics = bits(free_nics)
    rail_loss = 0
    if topo.n_nics and topo.n_gpus:
        gn = topo.gpu_nic
        for i in gpus:
            row = gn[i]
            best = min((row[k] for k in nics), default=NO_DEVICE)
            rail_loss += best - topo.gpu_best_nic[i]
        for k in nics:
            best = min((gn[i][k] for i in gpus), default=NO_DEVICE)
            rail_loss += best - topo.nic_best_gpu[k]
    spread = 0
    gg = topo.gpu_gpu
    for pos, i in enumerate(gpus):
        row = gg[i]
        for j in gpus[pos + 1 :]:
            spread += row[j]
    return rail_loss, spread
