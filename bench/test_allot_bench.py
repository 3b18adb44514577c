"""test_allot_bench.py: tests of the `allot` command, run by ctest
(test/bench.cmake), one group per invocation:

    python3 test_allot_bench.py --allot tools/allot [--bench-dir DIR]
        [--lib liballot.so] [--broken libbroken.so] GROUP

GROUP is help, badargs, list, quick, broken, program, exact or run. Prints
one line per check and "N passed, N failed"; exits 1 if a check failed, 77
(skipped) when what the group needs was not built.
"""
import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

# the drivers' shared checks (test/checks.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "test"))
from checks import Checks  # noqa: E402

SKIP = 77


def run(opts, *args, timeout=100):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("ALLOT_LIB", None)
    return subprocess.run([sys.executable, opts.allot] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          env=env)


def common(opts):
    """--bench-dir and --lib as given to the driver."""
    args = []
    if opts.bench_dir:
        args += ["--bench-dir", opts.bench_dir]
    if opts.lib:
        args += ["--lib", opts.lib]
    return args


def t_help(opts, c):
    r = run(opts, "--help")
    c.check(r.returncode == 0, "allot --help exits 0", r.stderr)
    c.check("bench" in r.stdout and "run" in r.stdout,
            "allot --help lists the subcommands", r.stdout)
    r = run(opts, "bench", "--help")
    c.check(r.returncode == 0, "allot bench --help exits 0", r.stderr)
    for opt in ("--quick", "--reps", "--only", "--allocators", "--reference",
                "--out", "--install-peers", "--lib", "--list", "--pin",
                "--exact-rss"):
        c.check(opt in r.stdout, "allot bench --help documents " + opt)
    r = run(opts, "run", "--help")
    c.check(r.returncode == 0 and "LD_PRELOAD" in r.stdout,
            "allot run --help exits 0 and explains the preload", r.stderr)
    r = run(opts)
    c.check(r.returncode == 2 and "usage" in r.stderr,
            "allot with no subcommand prints usage and exits 2",
            "%d %r" % (r.returncode, r.stderr))


def t_badargs(opts, c):
    cases = [
        (["bench", "--reps", "0"], "--reps must be at least 1"),
        (["bench", "--reps", "x"], "invalid int value"),
        (["bench", "--only", "nosuch"], "unknown workload 'nosuch'"),
        (["bench", "--only", ","], "--only is empty"),
        (["bench", "--allocators", "nosuch"], "unknown allocator 'nosuch'"),
        (["bench", "--allocators", "glibc,glibc"], "given twice"),
        (["bench", "--allocators", "x=/nonexistent/lib.so"], "no such file"),
        (["bench", "--allocators", "glibc", "--reference", "jemalloc"],
         "reference 'jemalloc' is not among the allocators"),
        (["bench", "--scale", "-1"], "--scale must be greater than 0"),
        (["bench", "--threads", "0"], "--threads must be between"),
        (["bench", "--timeout", "0"], "--timeout must be greater than 0"),
        (["bench", "--exact-rss", "-1"], "--exact-rss must be 0 or more"),
        (["bench", "--lib", "/nonexistent/liballot.so"], "no such file"),
        (["bench", "--bench-dir", "/nonexistent"], "no such directory"),
        (["bench", "--frobnicate"], "unrecognized arguments"),
        (["bench", "quick"], "unrecognized arguments"),
        (["bench", "--"], "no program after --"),
        (["bench", "--only", "micro", "--", "true"], "--only does not apply"),
        (["run"], "no program given"),
        (["run", "--lib", "/nonexistent/liballot.so", "true"], "no such file"),
        (["run", "--env", "NOEQUALS", "true"], "NAME=VALUE"),
        (["frobnicate"], "invalid choice"),
    ]
    for args, message in cases:
        with tempfile.TemporaryDirectory() as out:
            extra = ["--out", out] if args[0] == "bench" and \
                "--" not in args else []
            r = run(opts, *(args[:1] + extra + args[1:]))
        what = "allot %s" % " ".join(args)
        c.check(r.returncode == 2, what + " exits 2",
                "exit %d, stderr %r" % (r.returncode, r.stderr))
        c.check(message in r.stderr and "error" in r.stderr,
                what + " says %r" % message, repr(r.stderr))


def t_list(opts, c):
    r = run(opts, "bench", "--list", *common(opts))
    c.check(r.returncode == 0, "allot bench --list exits 0", r.stderr)
    names = ["micro-pair", "micro-batch", "micro-prodcons", "bignum",
             "logicmin", "larson", "prodcons", "cache-scratch", "cache-thrash",
             "pareto", "gens", "large", "realloc", "aligned", "threadchurn",
             "frag", "python", "sqlite", "redis", "gcc"]
    listed = [l.split()[0] for l in r.stdout.splitlines()
              if l.startswith("  ") and l.split()]
    for n in names:
        c.check(n in listed, "--list shows workload " + n)
    own = [n for n in names if n not in ("python", "sqlite", "redis", "gcc")]
    c.check(len(own) >= 12, "at least 12 workloads of our own")
    c.check("glibc" in listed, "--list shows glibc among the allocators")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def svg_ok(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return False, str(e)
    return root.tag.endswith("svg"), root.tag


def t_quick(opts, c):
    if not opts.bench_dir:
        return SKIP
    workloads = ["micro-pair", "frag", "sqlite", "logicmin"]
    allocs = ["glibc"] + (["allot"] if opts.lib else [])
    paired = 1 if opts.lib else 0  # allot against glibc
    with tempfile.TemporaryDirectory() as out:
        r = run(opts, "bench", "--quick", "--reps", "1", "--scale", "0.02",
                "--only", ",".join(workloads), "--allocators",
                ",".join(allocs), "--out", out, *common(opts))
        print(r.stdout)
        print(r.stderr)
        c.check(r.returncode == 0, "a tiny quick run exits 0",
                "exit %d" % r.returncode)
        for f in ("results.md", "results.csv", "runs.csv", "paired.csv",
                  "time.svg", "rss.svg", "frag-rss.svg"):
            c.check(os.path.isfile(os.path.join(out, f)), "it writes " + f)
        for f in ("time.svg", "rss.svg", "frag-rss.svg"):
            ok, why = svg_ok(os.path.join(out, f))
            c.check(ok, f + " is well-formed SVG", why)
        c.check(not os.path.exists(os.path.join(out, "exact.csv")),
                "no exact.csv without --exact-rss")
        if not os.path.isfile(os.path.join(out, "results.csv")):
            return
        rows = read_csv(os.path.join(out, "results.csv"))
        got = [row["workload"] for row in rows if row["workload"] != "geomean"]
        c.check(sorted(set(got)) == sorted(workloads),
                "results.csv has exactly the workloads run", repr(got))
        for w in workloads:
            cells = {row["allocator"]: row for row in rows
                     if row["workload"] == w}
            c.check(sorted(cells) == sorted(allocs),
                    "results.csv: %s has one row per allocator" % w,
                    repr(sorted(cells)))
            for a, row in cells.items():
                fine = row["status"] == "ok" or (
                    w == "sqlite" and row["status"] == "skipped")
                c.check(fine and (row["status"] != "ok" or
                                  float(row["time_median_s"]) > 0),
                        "results.csv: %s under %s passed with a time" % (w, a),
                        repr(row))
        geo = [row for row in rows if row["workload"] == "geomean"]
        c.check(len(geo) == len(allocs), "results.csv has a geomean row per "
                "allocator")
        ref = [row for row in rows if row["allocator"] == "glibc" and
               row["status"] == "ok"]
        c.check(all(abs(float(row["time_ratio"]) - 1) < 1e-9 for row in ref),
                "the reference's ratios are 1")
        with open(os.path.join(out, "results.md")) as f:
            sections = f.read().split("\n## ")
        tables = [sec for sec in sections
                  if sec.startswith(("Time", "Peak RSS"))]
        c.check(len(tables) == 2 + paired,
                "results.md has a time and an RSS table%s" % (
                    ", and the paired table" if paired else ""))
        for sec in tables:
            rows = [l.split("|")[1].strip() for l in sec.splitlines()
                    if l.startswith("| ")][1:]
            c.check(rows == workloads + ["**geomean**"],
                    "results.md: the rows of the %s table are the workloads "
                    "run, then geomean" % sec.split(":")[0], repr(rows))
        lines = r.stdout.splitlines()
        for w in workloads + ["geomean"]:
            c.check(sum(1 for l in lines if l.split()[:1] == [w]) ==
                    2 + paired, "the terminal tables have a row for " + w)
        header = [l for l in lines if l.startswith("workload")]
        c.check(len(header) == 2 + paired and header[0].split()[1:] == allocs,
                "the terminal tables have a column per allocator",
                repr(header))
        pairs = read_csv(os.path.join(out, "paired.csv"))
        if paired:
            c.check(header[2].split()[1:] == ["vs", "glibc", "fastest",
                                              "other", "vs", "fastest"],
                    "the paired table compares allot with glibc",
                    repr(header[2]))
            c.check(sorted(row["workload"] for row in pairs) ==
                    sorted(workloads) and
                    all(row["allocator"] == "allot" and
                        row["other"] == "glibc" and
                        (row["rounds"] == "1") == (row["time_ratio_paired"]
                                                   != "") for row in pairs),
                    "paired.csv: allot against glibc on each workload, a "
                    "ratio where both ran", repr(pairs))
        else:
            c.check(pairs == [], "paired.csv is empty with no allocator "
                    "under test", repr(pairs))
        runs = read_csv(os.path.join(out, "runs.csv"))
        c.check(len(runs) == len(workloads) * len(allocs) or any(
            row["workload"] == "sqlite" for row in rows
            if row["status"] == "skipped"),
                "runs.csv has one row per run", str(len(runs)))
        if len(os.sched_getaffinity(0)) > 1:
            cpu = str(min(os.sched_getaffinity(0)))
            c.check(all(row["cpu"] == cpu for row in runs),
                    "the single-threaded workloads' first round is pinned "
                    "to the first CPU (--pin auto)", repr(runs))


def t_broken(opts, c):
    if not opts.bench_dir or not opts.broken:
        return SKIP
    with tempfile.TemporaryDirectory() as out:
        r = run(opts, "bench", "--reps", "1", "--scale", "0.01", "--only",
                "micro-pair,bignum", "--allocators",
                "glibc,broken=" + opts.broken, "--out", out,
                *common(opts))
        print(r.stdout)
        print(r.stderr)
        c.check(r.returncode == 1, "a broken allocator makes allot bench "
                "exit 1", "exit %d" % r.returncode)
        rows = {(row["workload"], row["allocator"]): row
                for row in read_csv(os.path.join(out, "results.csv"))}
        c.check(rows[("micro-pair", "broken")]["status"] == "FAIL",
                "micro-pair fails the misaligning allocator")
        c.check("16-byte aligned" in rows[("micro-pair", "broken")]["message"],
                "the failure says why",
                rows[("micro-pair", "broken")]["message"])
        c.check(rows[("micro-pair", "glibc")]["status"] == "ok",
                "micro-pair passes under glibc")
        c.check(rows[("bignum", "broken")]["status"] == "ok",
                "a workload the bug does not affect still runs")
        c.check(os.path.isfile(os.path.join(out, "logs",
                                            "micro-pair-broken-1.log")),
                "the failed run's output is kept in logs/")
        c.check("FAIL" in r.stdout, "the table shows FAIL")


def t_program(opts, c):
    if not opts.bench_dir:
        return SKIP
    prog = os.path.join(opts.bench_dir, "bignum")
    allocs = ["glibc"] + (["allot"] if opts.lib else [])
    with tempfile.TemporaryDirectory() as out:
        r = run(opts, "bench", "--reps", "2", "--allocators", ",".join(allocs),
                "--out", out, *common(opts), "--", prog, "200")
        print(r.stdout)
        print(r.stderr)
        c.check(r.returncode == 0, "allot bench -- PROG exits 0",
                "exit %d" % r.returncode)
        rows = read_csv(os.path.join(out, "results.csv"))
        c.check(sorted({row["workload"] for row in rows}) ==
                ["bignum", "geomean"], "the program is the only row")
        c.check(all(row["status"] == "ok" and row["runs"] == "2"
                    for row in rows if row["workload"] == "bignum"),
                "it ran twice under each allocator")
        c.check(all(int(row["rss_median_kib"]) > 0 for row in rows
                    if row["workload"] == "bignum"),
                "its peak RSS is measured")
        if opts.lib:
            runs = read_csv(os.path.join(out, "runs.csv"))
            t = {(row["allocator"], row["rep"]): float(row["time_s"])
                 for row in runs}
            ratios = sorted(t[("allot", k)] / t[("glibc", k)]
                            for k in ("1", "2"))
            pairs = read_csv(os.path.join(out, "paired.csv"))
            got = float(pairs[0]["time_ratio_paired"]) if pairs else 0
            want = (ratios[0] + ratios[1]) / 2
            c.check(len(pairs) == 1 and pairs[0]["rounds"] == "2" and
                    abs(got - want) <= 1e-4 * want + 1e-4,
                    "paired.csv: the median of the two rounds' time ratios",
                    repr((pairs, ratios)))
        r = run(opts, "bench", "--reps", "1", "--allocators", "glibc",
                "--out", out, *common(opts), "--", "false")
        c.check(r.returncode == 1, "a program that fails makes allot bench "
                "exit 1", "exit %d" % r.returncode)
        r = run(opts, "bench", "--reps", "1", "--allocators", "glibc",
                "--out", out, *common(opts), "--", "/nonexistent/prog")
        c.check("no such program" in r.stderr, "a missing program is named",
                r.stderr)
        pin_checks(opts, c, out)


def pin_checks(opts, c, out):
    """--pin: the program reports the CPUs it may run on, run by run."""
    cpus = sorted(os.sched_getaffinity(0))
    with open("/proc/self/status") as f:
        mine = [l.split(":", 1)[1].strip() for l in f
                if l.startswith("Cpus_allowed_list")][0]
    allocs = ["glibc"] + (["allot"] if opts.lib else [])
    seen = os.path.join(out, "cpus.txt")
    prog = ["sh", "-c", "grep Cpus_allowed_list /proc/self/status >> " + seen]
    for mode in ("rounds", "off", "auto"):
        if os.path.exists(seen):
            os.unlink(seen)
        r = run(opts, "bench", "--reps", "3", "--allocators",
                ",".join(allocs), "--pin", mode, "--out", out, *common(opts),
                "--", *prog)
        c.check(r.returncode == 0, "--pin %s: the run exits 0" % mode,
                r.stderr)
        try:
            with open(seen) as f:
                got = [l.split(":", 1)[1].strip() for l in f]
        except OSError:
            got = []
        col = [row["cpu"] for row in read_csv(os.path.join(out, "runs.csv"))]
        c.check(len(got) == 3 * len(allocs), "--pin %s: every run reported"
                % mode, repr(got))
        if mode != "rounds" or len(cpus) < 2:
            c.check(all(g == mine for g in got) and all(x == "" for x in col),
                    "--pin %s: a program after -- is not pinned" % mode,
                    repr((mine, got, col)))
            continue
        want = [str(cpus[k % len(cpus)]) for k in range(3) for _ in allocs]
        c.check(got == want, "--pin rounds: every run of a round on one "
                "CPU, the CPUs in turn", repr(got))
        c.check(sorted(col) == sorted(want), "runs.csv names each run's CPU",
                repr(col))


def t_run(opts, c):
    lib = opts.lib or opts.broken
    if not lib:
        return SKIP
    r = run(opts, "run", "--lib", lib, "-e", "ALLOT_TEST=yes", "--", "sh",
            "-c", 'echo "$LD_PRELOAD|$ALLOT_TEST"')
    c.check(r.returncode == 0, "allot run exits with the program's status",
            r.stderr)
    c.check(r.stdout.strip() == os.path.abspath(lib) + "|yes",
            "allot run preloads the library and sets --env variables",
            repr(r.stdout))
    r = run(opts, "run", "--lib", lib, "sh", "-c", "exit 3")
    c.check(r.returncode == 3, "allot run passes the exit status on",
            str(r.returncode))
    if opts.lib and opts.bench_dir:
        r = run(opts, "run", "--lib", opts.lib, os.path.join(
            opts.bench_dir, "micro"), "pair", "100000")
        c.check(r.returncode == 0 and "micro pair: ok" in r.stdout,
                "a workload runs under allot run", r.stdout + r.stderr)


def t_exact(opts, c):
    """--exact-rss: a fourth table and exact.csv, from bench/peakrss."""
    if not opts.bench_dir:
        return SKIP
    allocs = ["glibc"] + (["allot"] if opts.lib else [])
    with tempfile.TemporaryDirectory() as out:
        r = run(opts, "bench", "--quick", "--reps", "1", "--scale", "0.05",
                "--only", "bignum,sqlite,gcc,redis", "--allocators",
                ",".join(allocs), "--exact-rss", "2", "--out", out,
                *common(opts))
        print(r.stdout)
        print(r.stderr)
        with open(os.path.join(out, "results.md")) as f:
            md = f.read()
        if "cannot trace here" in md:
            return SKIP  # ptrace of a child refused (a container's policy)
        c.check(r.returncode == 0, "allot bench --exact-rss 2 exits 0",
                "exit %d" % r.returncode)
        rows = {(row["workload"], row["allocator"]): row
                for row in read_csv(os.path.join(out, "exact.csv"))}
        # sqlite (one process), gcc (the driver and the processes it
        # starts) and redis (the server, beside its client) where installed
        ran = {row["workload"] for row in
               read_csv(os.path.join(out, "results.csv"))
               if row["status"] == "ok"}
        for a in allocs:
            for w in ("bignum", "sqlite", "gcc", "redis"):
                if w not in ran:
                    continue
                row = rows.get((w, a), {})
                ok = row.get("runs") == "2" and row.get("peak_median_kib", "")
                c.check(bool(ok) and int(row["peak_median_kib"]) > 0 and
                        int(row["anon_kib"]) + int(row["file_kib"]) ==
                        int(row["peak_median_kib"]),
                        "exact.csv: %s under %s, two runs, a peak that is "
                        "its anonymous and file-backed parts" % (w, a),
                        repr(row))
        c.check(rows[("bignum", "glibc")]["ratio"] == "1.0000",
                "the reference's exact ratio is 1")
        if opts.lib:
            got = float(rows[("geomean", "allot")]["ratio"])
            terms = [float(rows[(w, "allot")]["ratio"])
                     for w in ("bignum", "sqlite", "gcc", "redis")
                     if w in ran]
            want = math.exp(sum(map(math.log, terms)) / len(terms))
            c.check(abs(got - want) < 2e-4,
                    "the exact geomean is over the workloads measured",
                    repr((got, terms)))
        sec = [s for s in md.split("\n## ") if s.startswith("Peak RSS, exact")]
        names = [l.split("|")[1].strip() for l in
                 (sec[0].splitlines() if sec else []) if l.startswith("| ")]
        c.check(names[1:] == ["bignum", "sqlite", "gcc", "redis",
                              "**geomean**"],
                "results.md has the exact table, a row per workload",
                repr(names))
        # a shell whose child writes 64 MiB: the exact peak, the largest of
        # the processes the command starts, holds them
        r = run(opts, "bench", "--reps", "1", "--allocators", "glibc",
                "--exact-rss", "1", "--out", out, *common(opts), "--",
                "sh", "-c", "%s -c \"b = b'x' * (64 << 20)\"; true"
                % sys.executable)
        rows = read_csv(os.path.join(out, "exact.csv"))
        kib = [int(row["peak_median_kib"]) for row in rows
               if row["allocator"] == "glibc" and row["workload"] != "geomean"
               and row["peak_median_kib"]]
        c.check(r.returncode == 0 and len(kib) == 1 and
                65536 <= kib[0] < 65536 + 40000,
                "a child that writes 64 MiB peaks at 64 MiB and a little "
                "more", repr((r.returncode, kib)))


GROUPS = {"help": t_help, "badargs": t_badargs, "list": t_list,
          "quick": t_quick, "broken": t_broken, "program": t_program,
          "exact": t_exact, "run": t_run}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--allot", required=True)
    p.add_argument("--bench-dir")
    p.add_argument("--lib")
    p.add_argument("--broken")
    p.add_argument("group", choices=sorted(GROUPS))
    opts = p.parse_args()
    if opts.bench_dir and not os.path.isfile(
            os.path.join(opts.bench_dir, "micro")):
        opts.bench_dir = None
    if opts.lib and not os.path.isfile(opts.lib):
        opts.lib = None
    c = Checks()
    if GROUPS[opts.group](opts, c) == SKIP:
        print("skipped: what this group needs was not built")
        return SKIP
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
