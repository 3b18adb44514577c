#!/usr/bin/env python3
"""Interleaved CPU-time comparison of allocators on one program.

  scripts/cputime.py ROUNDS "name=LIB,name=LIB,glibc=" PROG [ARGS...]

Each round runs PROG once under each library (LD_PRELOAD=LIB; an empty LIB
is glibc's malloc), in a random order, and reads the child's user + system
time and ru_maxrss from wait4. Prints the median CPU time of each library
with its ratio to the first one, the median of its per-round ratios to the
first one ("paired": each round's runs are close in time, so the machine's
drifts in speed cancel), the median wall time and peak RSS, and the range
of the CPU times. The peak RSS is ru_maxrss, which Linux carries
across fork and exec, so it is at least this script's own (about 10 MB):
bench/spawn measures small programs' peaks. Standard output of PROG is discarded; a run that
exits non-zero stops the script. On a shared machine, CPU time moves less
with the load than wall time does; still, compare only runs of one call.
"""
import os
import random
import statistics as st
import sys
import time


def run(prog, lib):
    env = dict(os.environ)
    if lib:
        env["LD_PRELOAD"] = lib
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.execve(prog[0], prog, env)
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    if status != 0:
        sys.exit("cputime: %s exited with status %#x under %r" %
                 (prog[0], status, lib))
    return (ru.ru_utime + ru.ru_stime) * 1000, wall * 1000, ru.ru_maxrss


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip().split("\n\n")[1])
    rounds = int(sys.argv[1])
    libs = [x.split("=", 1) for x in sys.argv[2].split(",")]
    prog = sys.argv[3:]
    res = {n: [] for n, _ in libs}
    for _ in range(rounds):
        order = list(libs)
        random.shuffle(order)
        for n, lib in order:
            res[n].append(run(prog, lib))
    first = [r[0] for r in res[libs[0][0]]]
    base = st.median(first)
    for n, _ in libs:
        cpu = [r[0] for r in res[n]]
        m = st.median(cpu)
        paired = st.median(c / f for c, f in zip(cpu, first))
        print("%-10s cpu %8.1f ms (%.3fx, paired %.3fx)  wall %8.1f ms  "
              "rss %d kB  cpu range %.1f-%.1f" %
              (n, m, m / base, paired, st.median(r[1] for r in res[n]),
               st.median(r[2] for r in res[n]), min(cpu), max(cpu)))


if __name__ == "__main__":
    main()
