#!/usr/bin/env python3
"""layout_check.py LIB HOT_LIST: liballot.so's code is laid out in the tiers
of cmake/hot-functions.txt (cmake/layout.cmake): every listed function lies
in its own tier, each tier fits the size it is given there ("tier NAME
KiB"), and the IFUNC resolver sits outside the tiers, in the segment that
the loader faults first.

The kernel maps a file's pages by the 64 KiB window around a fault, clamped
to the mapping, and os_code_tiers (src/os.c) makes each tier a mapping of its
own at start-up: a tier is resident whole once any of it runs, and a
function listed in the wrong tier, or one that grew a tier past its size,
makes every program that runs it pay the difference. This reads the symbol
table (nm), so it covers what runs at exit too (session 9 found the exit
destructors pushed past the hot window: micro-pair's peak RSS 1748 -> 1936
kB), which mem.footprint, measuring before exit, cannot see. Exit 77
(skipped) without nm or a symbol table."""
import shutil
import subprocess
import sys

PAGE = 0x1000
BOOT = ("heap_empty_fill", "os_code_tiers")


def read_tiers(path):
    tiers = []  # (name, KiB, [functions])
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("file "):
                continue
            if line.startswith("tier "):
                words = line.split()
                tiers.append((words[1], int(words[2]), []))
            else:
                tiers[-1][2].append(line)
    return tiers


def main():
    lib, hot_list = sys.argv[1], sys.argv[2]
    if not shutil.which("nm"):
        print("SKIPPED: no nm")
        return 77
    tiers = read_tiers(hot_list)
    out = subprocess.run(["nm", "-n", lib], capture_output=True, text=True)
    syms = {}
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in "tT":
            syms.setdefault(f[2], int(f[0], 16))
    if not syms:
        print("SKIPPED: no symbol table in %s" % lib)
        return 77
    # the tiers' bounds: the code's start, then each later tier's marker
    marks = ["_init"] + ["os_tier_" + t[0] for t in tiers[1:]] + ["os_tier_cold"]
    missing = [m for m in marks if m not in syms]
    if missing:
        print("FAILED: no %s in %s" % (", ".join(missing), lib))
        return 1
    bounds = [syms[m] for m in marks]
    bad = 0
    for b in bounds[1:]:
        if b % PAGE:
            print("FAILED: a tier starts at %#x, not on a page" % b)
            bad += 1
    found = 0
    for i, (name, kib, fns) in enumerate(tiers):
        lo, hi = bounds[i], bounds[i + 1]
        size = hi - lo
        if size > kib * 1024:
            print("FAILED: tier %s is %d bytes, more than its %d KiB "
                  "(cmake/hot-functions.txt)" % (name, size, kib))
            bad += 1
        for fn in fns:
            if fn not in syms:
                continue
            found += 1
            if not lo <= syms[fn] < hi:
                print("FAILED: %s at %#x, outside tier %s [%#x, %#x)" %
                      (fn, syms[fn], name, lo, hi))
                bad += 1
        print("tier %-8s [%#x, %#x) %5d bytes of %d KiB" %
              (name, lo, hi, size, kib))
    listed = sum(len(t[2]) for t in tiers)
    if found < listed // 2:
        print("FAILED: only %d of the %d listed functions found in %s" %
              (found, listed, lib))
        bad += 1
    for fn in BOOT:
        if fn in syms and bounds[0] <= syms[fn] < bounds[-1]:
            print("FAILED: %s at %#x, inside the tiers: it must run from a "
                  "segment of its own" % (fn, syms[fn]))
            bad += 1
    if bad:
        return 1
    print("ok: %d listed functions, each in its tier" % found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
