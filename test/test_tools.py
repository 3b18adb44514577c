"""test_tools.py: tests of the `allot` command's run, doctor, record,
replay and map subcommands, run by ctest (test/tools.cmake), one group per
invocation:

    python3 test_tools.py --allot build/allot --lib build/liballot.so
        --workload W --cxx C --hijack H.so --ownmalloc O GROUP

GROUP is errors, run, doctor, record, replay or map. Prints one line per
check and "N passed, N failed"; exits 1 if a check failed.
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


def allot(opts, *args, timeout=100, cwd=None):
    return subprocess.run([sys.executable, opts.allot] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          env=env_clean(), cwd=cwd)


class Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


_module = []


def allot_forked(opts, *args):
    """allot ARGS run in a forked copy of this process, with the script
    loaded once: dozens of argument checks in a second instead of a Python
    start-up each. Should a check exec a program by mistake, that program's
    exit status shows up, and the check fails."""
    if not _module:
        import importlib.machinery
        import importlib.util
        loader = importlib.machinery.SourceFileLoader("allot_cmd", opts.allot)
        spec = importlib.util.spec_from_loader("allot_cmd", loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        _module.append(mod)
    mod = _module[0]
    outs = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(outs[0].fileno(), 1)
            os.dup2(outs[1].fileno(), 2)
            sys.stdout = os.fdopen(1, "w")
            sys.stderr = os.fdopen(2, "w")
            os.environ.clear()
            os.environ.update(env_clean())
            code = mod.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 0)
    _, status = os.waitpid(pid, 0)
    text = []
    for f in outs:
        f.seek(0)
        text.append(f.read().decode("utf-8", "replace"))
        f.close()
    return Done(os.waitstatus_to_exitcode(status), text[0], text[1])


def show(r):
    return "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (
        r.returncode, r.stdout[-2000:], r.stderr[-2000:])


# ---------------------------------------------------------------------------

def t_errors(opts, c, tmp):
    r = allot_forked(opts, "--help")
    for cmd in ("run", "doctor", "record", "replay", "map"):
        c.check(r.returncode == 0 and cmd in r.stdout,
                "allot --help lists " + cmd, show(r))
        h = allot_forked(opts, cmd, "--help")
        c.check(h.returncode == 0 and "Exit status" in h.stdout,
                "allot %s --help exits 0 and documents exit status" % cmd,
                show(h))
    trace = os.path.join(tmp, "not-a-trace")
    with open(trace, "w") as f:
        f.write("hello\n")
    cases = [
        (["run"], "no program given"),
        (["run", "--purge-delay", "-5", "true"], "--purge-delay must be"),
        (["run", "--huge-pages", "sometimes", "true"], "invalid choice"),
        (["run", "--stats-json", "x.json", "true"], "--stats-json needs"),
        (["run", "--light", "true"], "--light needs --stats"),
        (["run", "--map-signal", "NOPE", "true"], "bad signal"),
        (["run", "--lib", "/nonexistent.so", "true"], "no such file"),
        (["doctor", "/nonexistent-program"], "no such program"),
        (["doctor", "--preload-first", "/nonexistent.so"], "no such file"),
        (["record"], "no program given"),
        (["record", "-o", "/nonexistent-dir/t.trace", "true"],
         "no such directory"),
        (["record", "--allocator", "nosuch", "true"], "unknown allocator"),
        (["record", "--", "/nonexistent-program"], "no such program"),
        (["replay", "/nonexistent.trace"], "no such trace"),
        (["replay", trace], "not an allot trace"),
        (["replay"], "required"),
        (["map"], "give a program"),
        (["map", "--pid", "1", "--render", trace], "give a program"),
        (["map", "--no-exit", "true"], "--no-exit needs --signal"),
        (["map", "--pid", "999999999"], "no process"),
        (["map", "--pid", str(os.getpid())], "not started with allot run"),
        (["map", "--render", "/nonexistent"], "no such file"),
        (["map", "--render", trace], "not a heap map dump"),
    ]
    for args, want in cases:
        r = allot_forked(opts, *args)
        c.check(r.returncode == 2 and want in r.stderr,
                "allot %s: exit 2 with %r" % (" ".join(args), want), show(r))
    r = allot(opts, "run", "/nonexistent-program")
    c.check(r.returncode == 127, "allot run of a missing program exits 127",
            show(r))


def t_run(opts, c, tmp):
    r = allot(opts, "run", "--lib", opts.lib, "--purge-delay", "123",
              "--secure", "--huge-pages", "on", "--no-purge-thread",
              "--use-brk", "--debug", "--verbose", "--no-prompt-return",
              "--leak-report", "lost", "-e", "X_TEST=7", "--",
              "sh", "-c", 'echo "$ALLOT_PURGE_DELAY $ALLOT_SECURE '
              '$ALLOT_HUGE_PAGES $ALLOT_PURGE_THREAD $ALLOT_USE_BRK '
              '$ALLOT_DEBUG $ALLOT_VERBOSE $ALLOT_PROMPT_RETURN '
              '$ALLOT_LEAK_REPORT $X_TEST"')
    c.check(r.returncode == 0 and
            r.stdout.strip() == "123 1 1 0 1 1 1 0 lost 7",
            "allot run options become ALLOT_* variables", show(r))
    js = os.path.join(tmp, "stats.json")
    r = allot(opts, "run", "--lib", opts.lib, "--stats", "--stats-json", js,
              "--", opts.workload, "2", "3000")
    c.check(r.returncode == 0 and "workload: ok" in r.stdout,
            "allot run --stats runs the program", show(r))
    for want in ("in use at peak", "allocations by size", "1-64 B",
                 "\n  medium chunks ", "fragmentation at exit", "OS calls",
                 "page faults"):
        c.check(want in r.stderr, "the summary shows %r" % want, r.stderr)
    m = re.search(r"mmap (\d+), munmap (\d+), madvise (\d+), mremap (\d+): "
                  r"([\d.]+ [mu]?s)", r.stderr)
    c.check(m and int(m.group(1)) > 0,
            "the summary counts OS calls and their time", r.stderr)
    held = int(re.search(r"held=(\d+)", r.stdout).group(1))
    try:
        with open(js) as f:
            recs = json.load(f)
        a = [x for x in recs if x["comm"].startswith("tools_work")][0][
            "allot"]
    except (OSError, ValueError, IndexError, KeyError) as e:
        c.check(False, "--stats-json writes the statistics", e)
        return
    c.check(a["stats_mode"] and a["in_use"] >= held and
            a["in_use_peak"] >= a["in_use"] and a["mallocs"] > 3000,
            "the statistics agree with the program (in use %d >= held %d, "
            "peak %d)" % (a["in_use"], held, a["in_use_peak"]), a)
    c.check(a["os_time_ns"] > 0, "statistics mode measures time in OS calls",
            a.get("os_time_ns"))
    r = allot(opts, "run", "--lib", opts.lib, "--stats", "--light", "--",
              opts.workload, "1", "1000")
    c.check(r.returncode == 0 and "not counted" in r.stderr and
            "allocations by size" in r.stderr, "allot run --stats --light",
            show(r))
    r = allot(opts, "run", "--lib", opts.lib, "--stats", "sh", "-c", "exit 7")
    c.check(r.returncode == 7, "allot run --stats passes the exit status on",
            show(r))
    r = allot(opts, "run", "--lib", opts.lib, "--stats", "sh", "-c",
              "kill -TERM $$")
    c.check(r.returncode == -signal.SIGTERM,
            "allot run --stats dies of the program's signal", show(r))


def t_doctor(opts, c, tmp):
    r = allot(opts, "doctor", "--lib", opts.lib)
    c.check(r.returncode == 0, "allot doctor passes here", show(r))
    m = re.search(r"all (\d+) entry points reach allot", r.stdout)
    c.check(m and int(m.group(1)) >= 35,
            "every entry point reaches allot (C, glibc, C++)", r.stdout)
    for want in ("initial-exec", "huge pages", "setuid"):
        c.check(want in r.stdout, "doctor reports %s" % want, r.stdout)
    r = allot(opts, "doctor", "--lib", opts.lib, "--preload-first",
              opts.hijack)
    fails = set(re.findall(r"^FAIL\s+ (\S+)\s", r.stdout, re.M))
    c.check(r.returncode == 1 and fails == {"interposition", "memalign",
                                            "new[]"},
            "doctor names exactly the two hijacked entry points", show(r))
    r = allot(opts, "doctor", "--lib", opts.lib, opts.ownmalloc)
    c.check(r.returncode == 1 and "defines" in r.stdout and "malloc" in
            r.stdout, "doctor sees a program's own malloc", show(r))
    r = allot(opts, "doctor", "--lib", opts.lib, opts.workload)
    c.check(r.returncode == 0 and "allot run works on it" in r.stdout,
            "doctor accepts an ordinary program", show(r))


def replay_peak(r):
    m = re.search(r"^  allot\s.*?\s([\d.]+ [KMG]iB|\d+ B)\s*$", r.stdout,
                  re.M)
    return m.group(1) if m else None


def raw_info(opts, trace):
    """The trace's header through allot-replay info (exact numbers)."""
    replayer = os.path.join(os.path.dirname(opts.allot), "allot-replay")
    out = subprocess.run([replayer, "info", trace], capture_output=True,
                         text=True, env=env_clean()).stdout
    d = {"ops": {}}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        if k == "op":
            name, _, n = v.rpartition(" ")
            d["ops"][name] = int(n)
        else:
            d[k] = v
    return d


def replay_exact(opts, trace, strict):
    """allot's peak in use in a replay (statistics mode), exact."""
    replayer = os.path.join(os.path.dirname(opts.allot), "allot-replay")
    env = env_clean()
    env.update(LD_PRELOAD=opts.lib, ALLOT_STATS="1")
    r = subprocess.run([replayer, "run", trace, "page"] +
                       (["strict"] if strict else []), capture_output=True,
                       text=True, env=env, timeout=100)
    m = re.search(r"^allot_in_use_peak (\d+)", r.stdout, re.M)
    return (int(m.group(1)) if m else None), r


def round_trip(opts, c, tmp, threads, strict):
    trace = os.path.join(tmp, "w%d.trace" % threads)
    r = allot(opts, "record", "--lib", opts.lib, "-o", trace, "-e",
              "ALLOT_STATS=1", "--", opts.workload, str(threads), "6000")
    c.check(r.returncode == 0 and os.path.isfile(trace),
            "record the workload on %d thread%s" % (
                threads, "" if threads == 1 else "s"), show(r))
    if not os.path.isfile(trace):
        return
    h = raw_info(opts, trace)
    c.check(h.get("complete") == "1" and int(h.get("threads", 0)) == threads,
            "the trace is complete, with %d thread%s" % (
                threads, "" if threads == 1 else "s"), h)
    for op in ("malloc", "calloc", "realloc", "free", "posix_memalign",
               "aligned_alloc"):
        c.check(op in h["ops"], "the trace has %s calls" % op, h["ops"])
    recorded = int(h.get("recorded_allot_in_use_peak", "0"))
    c.check(recorded > 0 and h.get("recorded_allot_stats_mode") == "1",
            "the trace keeps allot's recorded peak in use", h)
    peak, r = replay_exact(opts, trace, strict)
    ok = peak is not None and recorded and abs(peak - recorded) <= \
        0.01 * recorded
    c.check(ok, "%sreplay reproduces allot's peak in use within 1 %% "
            "(recorded %d, replayed %s)" % ("strict " if strict else "",
                                            recorded, peak), show(r))
    return trace


def t_record(opts, c, tmp):
    round_trip(opts, c, tmp, 1, False)
    round_trip(opts, c, tmp, 3, True)
    # C++: every operator, and a bad_alloc through the recorder
    trace = os.path.join(tmp, "cxx.trace")
    r = allot(opts, "record", "--lib", opts.lib, "-o", trace, "-e",
              "ALLOT_STATS=1", "--", opts.cxx)
    c.check(r.returncode == 0 and "cxx: ok" in r.stdout,
            "a C++ program runs under the recorder (bad_alloc unwinds "
            "through it)", show(r))
    r = allot(opts, "replay", "--info", trace)
    for op in ("new ", "new[] ", "new_aligned ", "new[]_aligned_nothrow ",
               "delete_sized ", "delete[] ", "delete_sized_aligned ",
               "new_nothrow "):
        c.check(op in r.stdout, "the C++ trace has %s calls" % op.strip(),
                r.stdout)
    recorded = int(raw_info(opts, trace).get("recorded_allot_in_use_peak",
                                              "0"))
    peak, r = replay_exact(opts, trace, False)
    c.check(recorded and peak and abs(peak - recorded) <= 0.01 * recorded,
            "the C++ replay reproduces allot's peak in use within 1 %% "
            "(recorded %d, replayed %s)" % (recorded, peak), show(r))
    # a trace made under glibc replays under allot
    trace = os.path.join(tmp, "glibc.trace")
    r = allot(opts, "record", "--allocator", "glibc", "-o", trace, "--",
              opts.workload, "2", "2000")
    c.check(r.returncode == 0, "record under glibc", show(r))
    # children
    trace = os.path.join(tmp, "sh.trace")
    r = allot(opts, "record", "--lib", opts.lib, "--children", "-o", trace,
              "--", "sh", "-c", "%s 1 500; %s 1 500" % (opts.workload,
                                                        opts.workload))
    kids = [f for f in os.listdir(tmp) if f.startswith("sh.trace.")]
    c.check(r.returncode == 0 and os.path.isfile(trace) and len(kids) >= 2,
            "--children keeps a trace per process", show(r) + str(kids))
    r = allot(opts, "record", "--lib", opts.lib, "-o", trace, "--", "sh",
              "-c", "exit 5")
    c.check(r.returncode == 5, "record passes the exit status on", show(r))


def t_replay(opts, c, tmp):
    trace = os.path.join(tmp, "r.trace")
    r = allot(opts, "record", "--lib", opts.lib, "-q", "-o", trace, "--",
              opts.workload, "2", "3000")
    if not c.check(r.returncode == 0, "record a trace", show(r)):
        return
    r = allot(opts, "replay", "--lib", opts.lib, trace)
    c.check(r.returncode == 0 and re.search(r"^  allot\s+\S+ [mu]?s", r.stdout,
                                             re.M),
            "replay under allot reports its time", show(r))
    r = allot(opts, "replay", "--lib", opts.lib, "--stats", "--touch", "all",
              trace)
    c.check(r.returncode == 0 and replay_peak(r),
            "replay --stats reports allot's peak in use", show(r))
    r = allot(opts, "replay", "--lib", opts.lib, "--vs", "allot,glibc",
              "--reps", "2", trace)
    rows = re.findall(r"^  (allot|glibc)\s+\S+ [mu]?s", r.stdout, re.M)
    c.check(r.returncode == 0 and rows == ["allot", "glibc"] and
            "time x" in r.stdout, "replay --vs compares allocators", show(r))
    r = allot(opts, "replay", "--lib", opts.lib, "--strict", trace)
    c.check(r.returncode == 0, "replay --strict", show(r))
    cx = os.path.join(tmp, "cxx.trace")
    allot(opts, "record", "--lib", opts.lib, "-q", "-o", cx, "--", opts.cxx)
    r = allot(opts, "replay", "--lib", opts.lib, "--vs", "allot,glibc", cx)
    c.check(r.returncode == 0 and "FAILED" not in r.stdout,
            "a C++ trace replays under allot and glibc", show(r))
    gl = os.path.join(tmp, "g.trace")
    allot(opts, "record", "--allocator", "glibc", "-q", "-o", gl, "--",
          opts.workload, "2", "2000")
    r = allot(opts, "replay", "--lib", opts.lib, gl)
    c.check(r.returncode == 0, "a trace recorded under glibc replays under "
            "allot", show(r))
    r = allot(opts, "replay", "--lib", opts.lib, "--vs", "allot", trace)
    c.check(r.returncode == 2, "--vs with one allocator is an error", show(r))
    # a damaged trace: cut in the middle of its events
    bad = os.path.join(tmp, "cut.trace")
    with open(trace, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    r = allot(opts, "replay", "--lib", opts.lib, bad)
    c.check(r.returncode == 1 and "FAILED" in r.stdout,
            "a damaged trace fails the replay (exit 1)", show(r))


def svg_ok(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return False, str(e)
    texts = " ".join(t.text or "" for t in root.iter(
        "{http://www.w3.org/2000/svg}text"))
    rects = len(list(root.iter("{http://www.w3.org/2000/svg}rect")))
    return ("allot heap map" in texts and rects > 50), texts[:300]


def t_map(opts, c, tmp):
    out = os.path.join(tmp, "heap.svg")
    dump = os.path.join(tmp, "heap.dump")
    png = shutil.which("rsvg-convert") or shutil.which("convert")
    r = allot(opts, "map", "--lib", opts.lib, "-o", out, "--dump", dump,
              *(["--png"] if png else []), "--", opts.workload, "2", "3000")
    ok, why = svg_ok(out)
    c.check(r.returncode == 0 and ok, "allot map draws the heap at exit",
            show(r) + why)
    if png:
        c.check(os.path.getsize(os.path.join(tmp, "heap.png")) > 1000,
                "--png converts it")
    c.check(os.path.isfile(dump) and open(dump).read().startswith(
        "allot-map 1"), "--dump keeps the dump")
    out2 = os.path.join(tmp, "again.svg")
    r = allot(opts, "map", "--render", dump, "-o", out2)
    c.check(r.returncode == 0 and svg_ok(out2)[0], "--render draws a dump",
            show(r))
    # on a signal: the shell signals itself, then becomes the workload
    out3 = os.path.join(tmp, "sig.svg")
    dump3 = os.path.join(tmp, "sigdump")
    r = allot(opts, "map", "--lib", opts.lib, "-o", out3, "--signal", "USR2",
              "--dump", dump3, "--", "sh", "-c",
              "kill -USR2 $$; sleep 1; exec %s 1 2000" % opts.workload)
    c.check(r.returncode == 0 and os.path.isfile(
        os.path.join(tmp, "sig-1.svg")) and svg_ok(out3)[0],
        "--signal takes a map on the signal, and one at exit", show(r))
    c.check(os.path.isfile(dump3 + "-1") and
            open(dump3 + "-1").read().startswith("allot-map 1"),
            "--dump names a signal's dump FILE-1 (no .svg added)", show(r))
    # from a running program
    prog = [sys.executable, "-c", "import time; x = [bytes(100) for i in "
            "range(20000)]; print('ready', flush=True); time.sleep(30)"]
    env = env_clean()
    p = subprocess.Popen([sys.executable, opts.allot, "run", "--lib",
                          opts.lib, "--map-signal", "USR2", "--map-dir", tmp,
                          "--"] + prog, stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        line = p.stdout.readline()
        out4 = os.path.join(tmp, "live.svg")
        r = allot(opts, "map", "--pid", str(p.pid), "-o", out4)
        c.check(line.startswith("ready") and r.returncode == 0 and
                svg_ok(out4)[0], "--pid takes a map from a running program",
                show(r))
    finally:
        p.kill()
        p.wait()


GROUPS = {"errors": t_errors, "run": t_run, "doctor": t_doctor,
          "record": t_record, "replay": t_replay, "map": t_map}


def main():
    p = argparse.ArgumentParser()
    for opt in ("--allot", "--lib", "--workload", "--cxx", "--hijack",
                "--ownmalloc"):
        p.add_argument(opt, required=True)
    p.add_argument("group", choices=sorted(GROUPS))
    opts = p.parse_args()
    c = Checks()
    tmp = tempfile.mkdtemp(prefix="allot-tools-test-")
    try:
        GROUPS[opts.group](opts, c, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
