#!/usr/bin/env python3
"""layout_check.py LIB HOT_LIST: every function that cmake/hot-functions.txt
names starts in the first 64 KiB of liballot.so's code, with room for its
first instructions (cmake/layout.cmake).

The kernel maps a file's pages by the 64 KiB window around a fault, so the
code the default mode runs must fit in the first window: a function pushed
past it makes the next window resident too (64 kB more in every process).
mem.footprint sees that only for what runs before main returns; the exit
destructors, last in the list, run after it. Session 9 found them pushed
past the window by 352 bytes of new code: micro-pair's peak RSS 1748 ->
1936 kB. This reads the symbol table (nm) instead, so it also covers the
exit path. Exit 77 (skipped) without nm or a symbol table."""
import shutil
import subprocess
import sys

WINDOW = 0x10000
ROOM = 32  # bytes of a destructor's entry that the default mode runs


def main():
    lib, hot_list = sys.argv[1], sys.argv[2]
    if not shutil.which("nm"):
        print("SKIPPED: no nm")
        return 77
    names = []
    with open(hot_list) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and not line.startswith(
                    "file "):
                names.append(line)
    out = subprocess.run(["nm", "-n", lib], capture_output=True, text=True)
    syms = {}
    text_lo = None
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) != 3 or f[1] not in "tT":
            continue
        addr = int(f[0], 16)
        syms.setdefault(f[2], addr)
        if text_lo is None or addr < text_lo:
            text_lo = addr
    if text_lo is None:
        print("SKIPPED: no symbol table in %s" % lib)
        return 77
    start = text_lo & ~(WINDOW - 1)
    end = start + WINDOW
    late = [(n, syms[n]) for n in names
            if n in syms and syms[n] + ROOM > end]
    found = sum(1 for n in names if n in syms)
    if found < len(names) // 2:
        print("FAILED: only %d of the %d listed functions found in %s" %
              (found, len(names), lib))
        return 1
    last = max(syms[n] for n in names if n in syms)
    if late:
        for n, a in late:
            print("FAILED: %s at %#x, past the first code window "
                  "[%#x, %#x) (less %d bytes)" % (n, a, start, end, ROOM))
        return 1
    print("ok: %d listed functions in [%#x, %#x), the last at %#x (%d bytes "
          "to spare)" % (found, start, end, last, end - ROOM - last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
