"""test_prof.py: tests of `allot prof` and of the heap profiler in
liballot.so (src/prof.c), run by ctest (test/tools.cmake):

    python3 test_prof.py --allot build/allot --lib build/liballot.so
        --sites test_prof_sites

test_prof_sites (test/test_prof_sites.c) holds known live sizes at known
sites: at the peak site_a 30 MiB, site_a2 12 MiB, site_b 10 MiB, site_e
8 MiB, site_c 2 MiB, site_d none (churn); at exit the same without site_a.
Prints one line per check and "N passed, N failed"; exits 1 if one failed.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from checks import Checks, env_clean

MIB = 1 << 20
TRUTH = {"site_a": 30 * MIB, "site_a2": 12 * MIB, "site_b": 10 * MIB,
         "site_e": 8 * MIB, "site_c": 2 * MIB}


def allot(opts, *args, timeout=120):
    return subprocess.run([sys.executable, opts.allot] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          env=env_clean())


def show(r):
    return "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (
        r.returncode, r.stdout[-2000:], r.stderr[-3000:])


UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def sections(text):
    """{"peak": [(bytes, samples, function)], "exit": [...]} from the
    report: rows in the order printed."""
    out = {}
    cur = None
    for line in text.split("\n"):
        if line.startswith("live at the peak:"):
            cur = out.setdefault("peak", [])
        elif line.startswith("live at exit:"):
            cur = out.setdefault("exit", [])
        elif cur is not None:
            m = re.match(r"\s+([\d.]+) (B|KiB|MiB|GiB)\s+[\d.]+%\s+"
                         r"(\d[\d ]*?)\s\s(\S+)", line)
            if m:
                cur.append((float(m.group(1)) * UNITS[m.group(2)],
                            int(m.group(3).replace(" ", "")), m.group(4)))
            elif line and not line.startswith(" "):
                cur = None
    return out


def t_errors(opts, c, tmp):
    r = allot(opts, "--help")
    c.check(r.returncode == 0 and "prof" in r.stdout,
            "allot --help lists prof", show(r))
    r = allot(opts, "prof", "--help")
    c.check(r.returncode == 0 and "Exit status" in r.stdout,
            "allot prof --help exits 0 and documents exit status", show(r))
    junk = os.path.join(tmp, "not-a-profile")
    with open(junk, "w") as f:
        f.write("hello\n")
    cases = [
        (["prof"], "no program given"),
        (["prof", "--top", "0", "true"], "--top must be at least 1"),
        (["prof", "--rate", "0", "true"], "--rate must be a size"),
        (["prof", "--rate", "lots", "true"], "--rate must be a size"),
        (["prof", "-o", "/nonexistent-dir/p.svg", "true"],
         "no such directory"),
        (["prof", "--raw", "/nonexistent-dir/p.raw", "true"],
         "no such directory"),
        (["prof", "--", "/nonexistent-program"], "no such program"),
        (["prof", "--lib", "/nonexistent.so", "true"], "no such file"),
        (["prof", "-e", "NOEQUALS", "true"], "NAME=VALUE"),
        (["prof", "--render", "/nonexistent"], "no such file"),
        (["prof", "--render", junk], "not an allot profile"),
        (["prof", "--render", junk, "true"], "not both"),
        (["prof", "--cost", "0", "true"], "--cost must be at least 1"),
    ]
    for args, want in cases:
        r = allot(opts, *args)
        c.check(r.returncode == 2 and want in r.stderr,
                "allot %s: exit 2 with %r" % (" ".join(args), want), show(r))


def t_profile(opts, c, tmp):
    # the default rate: the heaviest site on top at the peak; what was freed
    # before exit is not at exit
    svg = os.path.join(tmp, "p.svg")
    raw = os.path.join(tmp, "p.raw")
    r = allot(opts, "prof", "--lib", opts.lib, "-o", svg, "--raw", raw,
              "--", opts.sites, "3")
    s = sections(r.stderr)
    peak, ex = s.get("peak", []), s.get("exit", [])
    c.check(r.returncode == 3, "the program's exit status is passed on",
            show(r))
    c.check(peak and peak[0][2] == "site_a",
            "site_a, the heaviest at the peak, comes out on top", show(r))
    c.check(all(row[2] != "site_a" for row in ex) and len(ex) >= 3,
            "site_a, freed before exit, is not among the sites at exit",
            show(r))
    c.check({"site_a2", "site_b", "site_e"} <= {row[2] for row in ex},
            "the sites still live at exit are listed at exit", show(r))
    # (the estimate's maximum may fall while one churn sample is live: when
    # site_c's one block was not sampled, 1.8 % of runs)
    c.check(sum(row[0] for row in peak if row[2] == "site_d") < MIB,
            "site_d's churn (300 MiB allocated, nothing kept) holds at most "
            "one sample at the peak", show(r))
    m = re.search(r"(\d[\d ]*) samples, .* in the sampling code \(([\d.]+) %"
                  r" of the run\)", r.stderr)
    c.check(m and int(m.group(1).replace(" ", "")) > 50,
            "the report says how many samples and what they cost", show(r))
    try:
        root = ET.parse(svg).getroot()
        texts = " ".join(t.text or "" for t in root.iter(
            "{http://www.w3.org/2000/svg}text"))
        ok = "live at the peak" in texts and "site_a" in texts and \
            "live at exit" in texts
    except (OSError, ET.ParseError) as e:
        ok, texts = False, str(e)
    c.check(ok, "the flame graph SVG is valid and names the sites", texts)
    c.check(open(raw).read(12) == "allot-prof 1", "--raw keeps the profile")
    r2 = allot(opts, "prof", "--render", raw, "--text", "--top", "2")
    s2 = sections(r2.stderr)
    c.check(r2.returncode == 0 and s2.get("peak", [None])[0] == peak[0] and
            len(s2["peak"]) == 2, "--render reports on a kept profile "
            "(--top 2: two rows)", show(r2))

    # many samples (one per 16 KiB): every site's estimate near its truth,
    # site_a2 too, whose blocks alternate with site_a's in the same class
    r = allot(opts, "prof", "--lib", opts.lib, "--text", "--rate", "16K",
              "--", opts.sites)
    got = {row[2]: row[0] for row in sections(r.stderr).get("peak", [])}
    for site, truth in sorted(TRUTH.items()):
        est = got.get(site, 0)
        c.check(abs(est - truth) <= 0.25 * truth,
                "--rate 16K: %s at the peak %.1f MiB, truth %.0f MiB "
                "(within 25 %%)" % (site, est / MIB, truth / MIB), show(r))

    # sampled blocks keep malloc's contract with most blocks sampled, and
    # every sample's free is seen: misc frees all it allocates, so no
    # sample of its own is live at exit (libc's may be: the other thread's
    # TLS block, which glibc keeps with the thread's stack)
    misc_raw = os.path.join(tmp, "misc.raw")
    r = allot(opts, "prof", "--lib", opts.lib, "--text", "--rate", "1K",
              "--raw", misc_raw, "--", opts.sites, "misc")
    info = profile_info(misc_raw)
    s = sections(r.stderr)
    mine = [row for row in s.get("exit", []) if row[2] == "misc"]
    c.check(r.returncode == 0 and int(info.get("samples", 0)) > 10000 and
            any(row[2] == "misc" for row in s.get("peak", [])) and not mine,
            "one sample per KiB (%s samples): usable sizes, realloc, "
            "free_sized, alignment, frees by another thread and allot_check "
            "hold, and none of misc's samples is live at exit (%s)" % (
                info.get("samples"), mine), show(r))

    # a sampled block freed twice aborts, a small one and a medium one
    for kind in ("small", "medium"):
        env = dict(env_clean(), LD_PRELOAD=opts.lib, ALLOT_PROF="1",
                   ALLOT_PROF_RATE="1", ALLOT_PROF_OUT=os.devnull)
        p = subprocess.run([opts.sites, "double", kind], env=env,
                           capture_output=True, text=True, timeout=60)
        c.check(p.returncode == -signal.SIGABRT and
                re.search(r"allot: free(\(\))?: double free", p.stderr),
                "every block sampled: a %s block freed twice aborts with "
                "allot's message" % kind, p.stderr)

    t_cuts(opts, c, tmp)
    t_in_use(opts, c, tmp)

    # the cached unwinder (x86-64) against libgcc's, frame for frame, on
    # this program and on a Python interpreter
    for what, cmd in (("test_prof_sites", [opts.sites]),
                      ("python", [sys.executable, "-c",
                                  "import json\nfor i in range(2000): "
                                  "json.loads(json.dumps({'k': list("
                                  "range(i))}))"])):
        raw = os.path.join(tmp, "check.raw")
        r = allot(opts, "prof", "--lib", opts.lib, "--text", "--rate", "8K",
                  "--raw", raw, "-e", "ALLOT_PROF_CHECK=1", "-e",
                  "PYTHONMALLOC=malloc", "--", *cmd)
        info = {}
        if os.path.isfile(raw):
            for line in open(raw).read().split("\n")[:20]:
                k, _, v = line.partition(" ")
                info[k] = v
        c.check(r.returncode == 0 and int(info.get("samples", 0)) > 100 and
                info.get("unwind_mismatches") == "0",
                "%s: every backtrace the same as libgcc's (%s samples, %s "
                "mismatches, %s handed to libgcc)" % (
                    what, info.get("samples"), info.get("unwind_mismatches"),
                    info.get("unwind_fallbacks")), show(r))

    # off unless asked for; refused in statistics mode
    out = os.path.join(tmp, "none.%p")
    env = dict(env_clean(), LD_PRELOAD=opts.lib, ALLOT_PROF_OUT=out)
    p = subprocess.run([opts.sites], env=env, capture_output=True, text=True)
    c.check(p.returncode == 0 and not [f for f in os.listdir(tmp)
                                       if f.startswith("none.")],
            "without ALLOT_PROF=1 nothing is sampled or written",
            p.stderr)
    r = allot(opts, "prof", "--lib", opts.lib, "--text", "-e",
              "ALLOT_STATS=1", "--", opts.sites)
    c.check(r.returncode == 125 and "ALLOT_PROF ignored" in r.stderr and
            "no profile was written" in r.stderr,
            "statistics mode: the library says it does not profile, the "
            "command exits 125", show(r))
    r = allot(opts, "prof", "--lib", opts.lib, "--cost", "1", "--",
              opts.sites)
    c.check(r.returncode == 0 and "ratio" in r.stderr and
            "samples per run" in r.stderr, "--cost compares the run times",
            show(r))


def profile_info(path):
    info = {}
    if os.path.isfile(path):
        for line in open(path).read().split("\n"):
            if line == "maps":
                break
            k, _, v = line.partition(" ")
            info[k] = v
    return info


def t_cuts(opts, c, tmp):
    """The lists that a small sample's cut sets aside on a page's
    cross-thread list come back whole (prof.c: cut, prof_collect_xfree,
    prof_uncut): when the sample's malloc comes, after what other threads
    freed into the page meanwhile (prodcons, larson), and when a thread
    exits with a sample still due (threadchurn) or the heap is collected
    (malloc_trim). Each program checks its blocks' contents; allot aborts on
    a list or count that does not add up."""
    bench = os.path.join(os.path.dirname(os.path.abspath(opts.allot)),
                         "bench")
    runs = [["threadchurn", "100"], ["prodcons", "20000"],
            ["larson", "10", "20000"]]
    for argv in runs:
        prog = os.path.join(bench, argv[0])
        if not os.path.isfile(prog):
            print("skip %s: not built (ALLOT_BUILD_BENCH=OFF)" % argv[0])
            continue
        out = os.path.join(tmp, "cuts-" + argv[0])
        env = dict(env_clean(), LD_PRELOAD=opts.lib, ALLOT_PROF="1",
                   ALLOT_PROF_RATE="64K", ALLOT_PROF_OUT=out)
        p = subprocess.run([prog] + argv[1:], env=env, capture_output=True,
                           text=True, timeout=60)
        info = profile_info(out)
        cuts = int(info.get("cut_lists", 0))
        whole = int(info.get("cut_lists_whole", 0))
        c.check(p.returncode == 0 and int(info.get("samples", 0)) > 500 and
                cuts > 100 and whole >= cuts // 2,
                "%s, one sample per 64 KiB: the blocks stay right; %d of "
                "%d cut lists came back whole (at least half)" % (
                    " ".join(argv), whole, cuts),
                "exit %d\n%s\n%s" % (p.returncode, p.stderr[-2000:], info))
    # malloc_trim (heap_collect_pages) while samples are due
    script = ("import ctypes\nlibc = ctypes.CDLL(None)\nkeep = []\n"
              "for i in range(3000):\n"
              "    keep.append([str(j) * (i % 50) for j in range(40)])\n"
              "    if len(keep) > 200: keep = keep[100:]\n"
              "    if i % 10 == 0: libc.malloc_trim(0)\n")
    out = os.path.join(tmp, "trim")
    env = dict(env_clean(), LD_PRELOAD=opts.lib, ALLOT_PROF="1",
               ALLOT_PROF_RATE="16K", ALLOT_PROF_OUT=out,
               PYTHONMALLOC="malloc")
    p = subprocess.run([sys.executable, "-S", "-c", script], env=env,
                       capture_output=True, text=True, timeout=60)
    info = profile_info(out)
    c.check(p.returncode == 0 and int(info.get("samples", 0)) > 100 and
            int(info.get("cut_lists", 0)) > 10,
            "python calling malloc_trim(0) with samples due: %s samples, %s "
            "cut lists, %s back whole" % (info.get("samples"),
                                          info.get("cut_lists"),
                                          info.get("cut_lists_whole")),
            "exit %d\n%s\n%s" % (p.returncode, p.stderr[-2000:], info))


def t_in_use(opts, c, tmp):
    """A sampled small block is the block its page gave the malloc (prof.c:
    sample_small): the profiler allocates nothing in the program's heap,
    and a program that frees all it allocated ends with the same bytes in
    use profiled as not, but for the loader's records of libgcc_s, which
    the unwinder loads (4 224 bytes here; none with libgcc_s preloaded in
    both runs). (Until session 19 a sample took a chunk of a heap of the
    profiler's and held its page's block until the chunk was freed; this
    test then checked that the held blocks went back.)"""
    prog = os.path.join(os.path.dirname(os.path.abspath(opts.allot)),
                        "bench", "aligned")
    inspect = os.path.join(os.path.dirname(os.path.abspath(opts.lib)),
                           "liballot-inspect.so")
    if not os.path.isfile(prog) or not os.path.isfile(inspect):
        print("skip in use at exit: bench/aligned or liballot-inspect.so not "
              "built")
        return
    used = {}
    for prof in ("0", "1"):
        stats = os.path.join(tmp, "in-use-stats-" + prof)
        env = dict(env_clean(), LD_PRELOAD=opts.lib + " " + inspect,
                   ALLOT_STATS_FILE=stats, ALLOT_MAP_AT_EXIT="0",
                   ALLOT_PROF=prof, ALLOT_PROF_RATE="16K",
                   ALLOT_PROF_OUT=os.path.join(tmp, "in-use-prof"))
        p = subprocess.run([prog, "60000"], env=env, capture_output=True,
                           text=True, timeout=60)
        try:
            with open(stats) as f:
                used[prof] = (p.returncode,
                              json.load(f)["allot"]["in_use"])
        except (OSError, ValueError, KeyError) as e:
            used[prof] = (p.returncode, None)
            print("in use at exit: no statistics (%s): %s" % (
                e, p.stderr[-500:]))
    info = profile_info(os.path.join(tmp, "in-use-prof"))
    ok = all(v[0] == 0 and v[1] is not None for v in used.values())
    c.check(ok and int(info.get("samples", 0)) > 1000 and
            0 <= used["1"][1] - used["0"][1] <= (16 << 10),
            "aligned 60000, one sample per 16 KiB (%s samples): in use at "
            "exit %s bytes profiled, %s not" % (
                info.get("samples"), used.get("1", (0, None))[1],
                used.get("0", (0, None))[1]), str(used))


def main():
    p = argparse.ArgumentParser()
    for opt in ("--allot", "--lib", "--sites"):
        p.add_argument(opt, required=True)
    p.add_argument("group", choices=["errors", "profile"])
    opts = p.parse_args()
    c = Checks()
    tmp = tempfile.mkdtemp(prefix="allot-prof-test-")
    try:
        {"errors": t_errors, "profile": t_profile}[opts.group](opts, c, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
