"""A sweep of @smt_logged calls run by a process pool, as users write it.

    python pool_sweep.py LAUNCHER CALLS WORKERS

LAUNCHER: futures-spawn, futures-fork, mp-pool (fork) or joblib (loky). Prints the calls' labels on
one line, "labels [...]" (JSON), written at once: the workers share stdout and print as they like.
"""

import json
import sys

from smtlock import current_label, smt_logged


@smt_logged(tags=["pool"])
def simulate(x, scale=2.0):
    print(f"x={x}")
    return current_label()


def sweep(launcher: str, calls: int, workers: int) -> list:
    xs = list(range(calls))
    if launcher.startswith("futures-"):
        import concurrent.futures
        import multiprocessing
        context = multiprocessing.get_context(launcher.split("-")[1])
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(simulate, xs))
    if launcher == "mp-pool":
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(simulate, xs)
    if launcher == "joblib":
        from joblib import Parallel, delayed
        return Parallel(n_jobs=workers)(delayed(simulate)(x) for x in xs)
    raise SystemExit(f"unknown launcher {launcher}")


if __name__ == "__main__":
    launcher, calls, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("labels " + json.dumps(sweep(launcher, calls, workers)), flush=True)
