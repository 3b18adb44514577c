#!/usr/bin/env python3
"""What the heap profiler costs, for two or more builds, in one set of rounds.

  scripts/profcost.py ROUNDS "name=LIB,name=LIB" PROG [ARGS...]

Each round runs PROG under each library twice, with and without
ALLOT_PROF=1 (ALLOT_PROF_OUT=/dev/null), all in a random order, with
libgcc_s preloaded in every run (the profiler loads it otherwise, and the
loading would count as its cost). Reads each child's user + system time
from wait4. Prints, per library, the median unprofiled and profiled CPU
time and the median over the rounds of profiled / unprofiled, with a 95 %
bootstrap interval; then each library's runs over the first's, profiled
and unprofiled. `allot prof --cost N` does the first part for one library;
this compares builds (docs/tools.md, "What profiling costs"). A run that
exits non-zero stops the script.
"""
import glob
import os
import random
import statistics as st
import sys


def libgcc():
    for pat in ("/lib/*/libgcc_s.so.1", "/usr/lib/*/libgcc_s.so.1",
                "/lib64/libgcc_s.so.1"):
        found = glob.glob(pat)
        if found:
            return found[0]
    return ""


def run(prog, lib, prof, gcc):
    env = dict(os.environ)
    env["LD_PRELOAD"] = (gcc + " " + lib).strip()
    if prof:
        env["ALLOT_PROF"] = "1"
        env["ALLOT_PROF_OUT"] = os.devnull
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        try:
            os.execvpe(prog[0], prog, env)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    if status != 0:
        sys.exit("profcost: %s exited with status %d under %s%s" % (
            prog[0], status, lib, " profiled" if prof else ""))
    return ru.ru_utime + ru.ru_stime


def interval(xs):
    meds = sorted(st.median(random.choices(xs, k=len(xs)))
                  for _ in range(2000))
    return meds[50], meds[1949]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    libs = [x.split("=", 1) for x in sys.argv[2].split(",")]
    prog = sys.argv[3:]
    gcc = libgcc()
    t = {(n, p): [] for n, _ in libs for p in (0, 1)}
    for _ in range(rounds):
        jobs = [(n, lib, p) for n, lib in libs for p in (0, 1)]
        random.shuffle(jobs)
        for n, lib, p in jobs:
            t[(n, p)].append(run(prog, lib, p, gcc))
    for n, _ in libs:
        r = [a / b for a, b in zip(t[(n, 1)], t[(n, 0)])]
        lo, hi = interval(r)
        print("%-8s unprofiled %.1f ms, profiled %.1f ms: profiled / "
              "unprofiled %.4f (%.4f -- %.4f)" % (
                  n, 1000 * st.median(t[(n, 0)]), 1000 * st.median(t[(n, 1)]),
                  st.median(r), lo, hi))
    first = libs[0][0]
    for n, _ in libs[1:]:
        for p in (0, 1):
            r = [a / b for a, b in zip(t[(n, p)], t[(first, p)])]
            lo, hi = interval(r)
            print("%s / %s, %s: %.4f (%.4f -- %.4f)" % (
                n, first, "profiled" if p else "unprofiled", st.median(r),
                lo, hi))


if __name__ == "__main__":
    main()
