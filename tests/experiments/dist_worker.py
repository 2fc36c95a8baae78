"""A stand-in rank for the launcher and rendezvous tests: python -m tests.experiments.dist_worker OUT MODE.

ok        meet, share rank 0's bytes, barrier, watch, write OUT/rank<R>.txt, say goodbye
die       as ok up to watch, then rank 1 exits 3 while rank 0 waits (as in a collective)
die-early rank 1 exits 3 at once; rank 0 sleeps without a rendezvous (only the launcher can stop it)
"""
import os
import sys
import time

from experiments.dist.launch import rank_from_env
from experiments.dist.rendezvous import Rendezvous


def main(out, mode):
    info = rank_from_env()
    if mode == "die-early":
        if info.rank == 1:
            sys.exit(3)
        time.sleep(60)
        return
    rv = Rendezvous(info, timeout_s=20)
    got = rv.share(b"job-id-42" if info.is_main else None)
    rv.barrier()
    rv.watch()
    if mode == "die":
        if info.rank == 1:
            os._exit(3)
        time.sleep(60)          # rank 0 "in a collective" that will never complete
    with open(os.path.join(out, f"rank{info.rank}.txt"), "w") as f:
        f.write(f"{got.decode()} {info.world_size} {info.local_rank} {info.local_world_size}\n")
    rv.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
