#!/usr/bin/env python3
"""Paired benchmark of tug against runc and crun: run of /bin/true, create/start/delete,
100 sequential runs, 50 concurrent runs, peak RSS, binary size.

Run by bench/runtime/run.sh (which builds tug and sets up a private mount namespace where
crun accepts this hybrid cgroup host). Prints a markdown report.
"""
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "100"))


LAUNCHER = None  # bench/runtime/maxrss.c, built by run.sh
RSS_FILE = None


def spawn_wait(argv):
    """Runs argv under the launcher; returns (exit status, wall s, CPU s of it and its
    waited-for children, peak RSS KiB as the launcher saw it)."""
    argv = [LAUNCHER, RSS_FILE, *argv]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    with open(RSS_FILE) as f:
        rss = int(f.read().strip() or 0)
    return os.waitstatus_to_exitcode(status), wall, ru.ru_utime + ru.ru_stime, rss


def make_bundle(dir, args):
    rootfs = os.path.join(dir, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in ("true", "sleep", "sh"):
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    # One config for all three: runc's default spec, with the program changed.
    subprocess.run(["runc", "spec", "-b", dir], check=True)
    path = os.path.join(dir, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    with open(path, "w") as f:
        json.dump(spec, f)


class Runtime:
    def __init__(self, name, binary, state):
        self.name, self.binary, self.state = name, binary, state

    def argv(self, *args):
        return [self.binary, "--root", self.state, *args]

    def run(self, bundle, cid):
        return spawn_wait(self.argv("run", "--bundle", bundle, cid))

    def cmd(self, *args):
        return spawn_wait(self.argv(*args))

    def status(self, cid):
        out = subprocess.run(self.argv("state", cid), capture_output=True, text=True)
        return json.loads(out.stdout)["status"] if out.returncode == 0 else None


def round_order(rts, i):
    """The runtimes in round i's order: shuffled (seeded, so runs repeat). A rotation put
    each runtime after the same one in most rounds, and what a runtime leaves behind (runc's
    delete: the kernel still tearing its cgroups down) slowed whoever came next."""
    order = list(rts)
    random.Random(i).shuffle(order)
    return order


def med(xs):
    return statistics.median(xs)


def ms(x):
    return f"{x * 1000:.2f}"


def paired(a, b):
    """Median of the per-round ratios a[i]/b[i]."""
    return med([x / y for x, y in zip(a, b) if y > 0])


def main():
    global LAUNCHER, RSS_FILE
    tug, LAUNCHER = sys.argv[1], sys.argv[2]
    work = tempfile.mkdtemp(prefix="tugbench")
    # State where each runtime keeps it by default: /run (a tmpfs on most hosts; on the
    # machine of BENCHMARKS.md it is the root ext4, the same for every runtime).
    state = tempfile.mkdtemp(prefix="tugbench", dir="/run")
    RSS_FILE = f"{work}/maxrss"
    try:
        rts = [Runtime("tug", tug, f"{state}/tug"),
               Runtime("crun", shutil.which("crun"), f"{state}/crun"),
               Runtime("runc", shutil.which("runc"), f"{state}/runc")]
        if len(sys.argv) > 3:
            label = os.environ.get("STATIC_LABEL", "tug-static")
            rts.append(Runtime(label, sys.argv[3], f"{state}/{label}"))
        true_b, sleep_b = f"{work}/true", f"{work}/sleep"
        make_bundle(true_b, ["/bin/true"])
        make_bundle(sleep_b, ["/bin/sleep", "1000"])
        report(rts, true_b, sleep_b)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def check(rc, what):
    if rc != 0:
        sys.exit(f"{what} exited {rc}")


def report(rts, true_b, sleep_b):
    n = ROUNDS
    # 1. run of /bin/true, rounds in a shuffled order.
    wall = {r.name: [] for r in rts}
    cpu = {r.name: [] for r in rts}
    rss = {r.name: [] for r in rts}
    for i in range(n):
        order = round_order(rts, i)
        for r in order:
            rc, w, c, m = r.run(true_b, f"tb{os.getpid()}-{i}")
            check(rc, f"{r.name} run")
            wall[r.name].append(w)
            cpu[r.name].append(c)
            rss[r.name].append(m)
    print(f"### `run` of /bin/true ({n} paired rounds)\n")
    print("| runtime | wall median ms | CPU median ms | peak RSS median KiB | peak RSS max KiB |")
    print("|---|---|---|---|---|")
    for r in rts:
        print(f"| {r.name} | {ms(med(wall[r.name]))} | {ms(med(cpu[r.name]))} | "
              f"{med(rss[r.name]):.0f} | {max(rss[r.name])} |")
    print()
    for ours in [r.name for r in rts if r.name.startswith("tug")]:
        for other in ("crun", "runc"):
            print(f"- {ours} / {other}, paired median ratio: "
                  f"wall {paired(wall[ours], wall[other]):.2f}, "
                  f"CPU {paired(cpu[ours], cpu[other]):.2f}, "
                  f"peak RSS {paired(rss[ours], rss[other]):.2f}")
    print()

    # 2. create, start, delete, each timed.
    steps = {(r.name, s): [] for r in rts for s in ("create", "start", "delete")}
    m = max(n // 2, 10)
    for i in range(m):
        order = round_order(rts, i)
        for r in order:
            cid = f"tc{os.getpid()}-{i}"
            rc, w, _, _ = r.cmd("create", "--bundle", true_b, cid)
            check(rc, f"{r.name} create")
            steps[(r.name, "create")].append(w)
            rc, w, _, _ = r.cmd("start", cid)
            check(rc, f"{r.name} start")
            steps[(r.name, "start")].append(w)
            deadline = time.time() + 10
            while r.status(cid) != "stopped":
                if time.time() > deadline:
                    sys.exit(f"{r.name}: {cid} never stopped")
                time.sleep(0.002)
            rc, w, _, _ = r.cmd("delete", cid)
            check(rc, f"{r.name} delete")
            steps[(r.name, "delete")].append(w)
    print(f"### create / start / delete of /bin/true ({m} paired rounds, wall median ms)\n")
    print("| runtime | create | start | delete |")
    print("|---|---|---|---|")
    for r in rts:
        print(f"| {r.name} | " + " | ".join(ms(med(steps[(r.name, s)]))
                                          for s in ("create", "start", "delete")) + " |")
    print()
    for s in ("create", "start", "delete"):
        print(f"- {s}: tug / crun {paired(steps[('tug', s)], steps[('crun', s)]):.2f}, "
              f"tug / runc {paired(steps[('tug', s)], steps[('runc', s)]):.2f}")
    print()

    # 3. 100 sequential runs; 4. 50 concurrent runs. Five paired rounds each.
    seq = {r.name: [] for r in rts}
    conc = {r.name: [] for r in rts}
    for i in range(5):
        order = round_order(rts, i)
        for r in order:
            t0 = time.perf_counter()
            for j in range(100):
                rc, _, _, _ = r.run(true_b, f"ts{os.getpid()}-{i}-{j}")
                check(rc, f"{r.name} run")
            seq[r.name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            procs = [subprocess.Popen(r.argv("run", "--bundle", true_b, f"tp{os.getpid()}-{i}-{j}"),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for j in range(50)]
            codes = [p.wait() for p in procs]
            conc[r.name].append(time.perf_counter() - t0)
            if any(codes):
                sys.exit(f"{r.name}: concurrent runs failed: {codes}")
    print("### 100 sequential runs and 50 concurrent runs (5 paired rounds, median s)\n")
    print("| runtime | 100 sequential | 50 concurrent |")
    print("|---|---|---|")
    for r in rts:
        print(f"| {r.name} | {med(seq[r.name]):.3f} | {med(conc[r.name]):.3f} |")
    print()
    for other in ("crun", "runc"):
        print(f"- tug / {other}: sequential {paired(seq['tug'], seq[other]):.2f}, "
              f"concurrent {paired(conc['tug'], conc[other]):.2f}")
    print()

    rc, _, _, floor = spawn_wait(["/bin/busybox", "true"])
    print(f"Peak RSS is the launcher's wait4 figure for the runtime process and the processes it "
          f"waited for (runc's `runc init` is one); busybox `true` alone reads {floor} KiB there.\n")
    print("### Binary size\n")
    print("| runtime | bytes |")
    print("|---|---|")
    for r in rts:
        print(f"| {r.name} | {os.stat(r.binary).st_size:,} |")


if __name__ == "__main__":
    main()
