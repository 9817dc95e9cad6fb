"""PostgreSQL across real hosts (network namespaces, as root): two hosts x 24 jobs x 4 records; the
time a host cut off while holding the lock keeps the other host waiting, measured 3 times; and a server
restarted in the middle of a 32 x 6 burst.

    python benchmarks/hosts.py        (writes benchmarks/hosts.json)
"""
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from pgserver import Cluster  # noqa: E402

from smtlock._harness.burst import JOB_SCRIPT, make_project, run_burst, start_together  # noqa: E402
from smtlock._harness.census import recount, verify  # noqa: E402
from smtlock._harness.hosts import NetworkHosts  # noqa: E402

MAKE = ("import sys; from pathlib import Path; from smtlock._harness.burst import make_project; "
        "print(make_project(Path(sys.argv[1]), sys.argv[2]))")
CENSUS = ("import json, sys; from smtlock._harness.census import census; "
          "print(json.dumps(census(sys.argv[1], sys.argv[2])))")
HOLD = ("import smtlock, sys\nlock = smtlock.SMTLock(sys.argv[1]); lock.acquire()\n"
        "print('held', flush=True)\nsys.stdin.read()\n")
WAIT = ("import smtlock, sys, time\nlock = smtlock.SMTLock(sys.argv[1])\nsys.stdin.readline()\n"
        "start = time.time()\nlock.acquire(timeout=300)\nprint(round(time.time() - start, 2), flush=True)\n")


def on_host(hosts, host, code, *args):
    done = subprocess.run(hosts.command(host, [sys.executable, "-c", code, *args]), capture_output=True, text=True,
                          check=True)
    return done.stdout


@contextlib.contextmanager
def hosts_with_server(base: Path):
    """Two hosts and a server in its own namespace, and a project on each host: (hosts, uris, projects)."""
    with NetworkHosts(2) as hosts:
        cluster = Cluster(listen=",".join(hosts.server_addresses), prefix=["ip", "netns", "exec", hosts.server_ns])
        try:
            cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
            cluster.sql("CREATE DATABASE shared OWNER smt")
            uris = [cluster.uri("smt", "s3cret", "shared", host=a) for a in hosts.server_addresses]
            yield hosts, uris, [on_host(hosts, h, MAKE, str(base / hosts.names[h]), uris[h]).strip() for h in range(2)]
        finally:
            cluster.stop()


def network(base: Path, jobs: int, records: int, cuts: int) -> dict:
    result = {}
    with hosts_with_server(base) as (hosts, uris, projects):
        commands = [hosts.command(h, [sys.executable, JOB_SCRIPT, "locked", projects[h], str(jobs * h + j),
                                      str(records), "{ready}", "{go}", str(base / f"{h}-{j}.json")])
                    for h in range(2) for j in range(jobs)]
        burst = start_together(commands, [base / f"{i}.log" for i in range(len(commands))])
        counted = json.loads(on_host(hosts, 0, CENSUS, uris[0], projects[0]))
        result["two_hosts"] = {**verify(counted["records"], 2 * jobs, records),
                               "failed_jobs": sum(1 for c in burst["codes"].values() if c),
                               "duplicate_rows": counted["duplicate_rows"], "wall_s": round(burst["wall_s"], 1)}
    result["dead_host_release_s"] = [cut_once(base / f"cut{i}") for i in range(cuts)]
    return result


def cut_once(base: Path) -> float:
    """A host holding the lock is cut off; how long the other host waits for it."""
    with hosts_with_server(base) as (hosts, uris, projects):
        holder = subprocess.Popen(hosts.command(0, [sys.executable, "-c", HOLD, projects[0]]),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        waiter = subprocess.Popen(hosts.command(1, [sys.executable, "-c", WAIT, projects[1]]),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            hosts.cut(0)
            waiter.stdin.write("go\n")
            waiter.stdin.flush()
            return float(waiter.stdout.readline())
        finally:
            for proc in (holder, waiter):
                proc.kill()
                proc.wait()


def restart(base: Path, jobs: int, records: int) -> dict:
    cluster = Cluster()
    try:
        cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        cluster.sql("CREATE DATABASE restart OWNER smt")
        uri = cluster.uri("smt", "s3cret", "restart")
        project = make_project(base / "project", uri)
        burst = {}
        thread = threading.Thread(target=lambda: burst.update(run_burst(project, "locked", jobs, records, base / "j")))
        thread.start()

        def written() -> int:
            try:
                return cluster.sql("SELECT count(*) FROM django_store_record", db="restart")[0][0]
            except Exception:
                return 0
        while thread.is_alive() and written() < jobs * records // 4:
            time.sleep(0.05)
        at = written()
        cluster.restart()
        thread.join()
        counted = recount(uri, project)
    finally:
        cluster.stop()
    return {**verify(counted["records"], jobs, records), "restarted_after_records": at,
            "failed_jobs": sum(1 for c in burst["codes"].values() if c), "wall_s": round(burst["wall_s"], 1)}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="smtlock-hosts-") as tmp:
        figures = network(Path(tmp) / "net", 24, 4, 3)
        figures["restart"] = restart(Path(tmp) / "restart", 32, 6)
    figures["command"] = "python benchmarks/hosts.py"
    (ROOT / "benchmarks" / "hosts.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
