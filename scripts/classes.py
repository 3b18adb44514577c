#!/usr/bin/env python3
"""The size-class tables of src/page.c, derived from class_size.

  scripts/classes.py --check src/page.c   exit 1 if a table disagrees
  scripts/classes.py --write src/page.c   rewrite class_of_small and
                                          class_aligned from class_size
                                          (run clang-format after)

class_size is the one written by hand. class_of_small maps each multiple
of 16 up to SMALL_MAX to the smallest class by size that holds it, except
slot 0 and the slots that map to class 0 now (sizes just above 1 and 4 KiB,
which go to the chunk heap: docs/design.md), which stay 0. class_aligned,
for each alignment from 32 to SMALL_MAX and each class by size, gives the
first class from it on whose block size is a multiple of the alignment (0:
none). The check also holds the classes to their rules: sorted, multiples
of 16, at most 12.5 % apart above 128 bytes.
"""
import re
import sys

SMALL_MAX = 8192


def table(src, name):
    m = re.search(name + r"\[[^\]]*\](?:\[[^\]]*\])?\s*=\s*\{(.*?)\n\};", src,
                  re.S)
    if not m:
        sys.exit("classes.py: no table %s" % name)
    body = re.sub(r"/\*.*?\*/", "", m.group(1))
    return [int(x) for x in re.findall(r"\d+", body)], m.span(1)


def derive(sizes, zero_slots):
    by_size = [c for c in range(1, len(sizes)) if sizes[c] <= SMALL_MAX]
    nby = by_size[-1] + 1
    of_small = []
    for i in range(SMALL_MAX // 16 + 1):
        if i == 0 or i in zero_slots:
            of_small.append(0)
        else:
            of_small.append(min(c for c in by_size if sizes[c] >= 16 * i))
    aligned = []
    a = 32
    while a <= SMALL_MAX:
        aligned.append([next((d for d in range(max(c, 1), nby)
                              if sizes[d] % a == 0), 0) for c in range(nby)])
        a *= 2
    return of_small, aligned


def rules(sizes):
    bad = []
    by = [s for s in sizes[1:] if s <= SMALL_MAX]
    for prev, cur in zip(by, by[1:]):
        if cur <= prev or cur % 16:
            bad.append("%d after %d" % (cur, prev))
        elif prev >= 128 and cur > prev * 9 / 8:
            bad.append("%d is more than 12.5 %% above %d" % (cur, prev))
    return bad


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("--check", "--write"):
        sys.exit(__doc__)
    path = sys.argv[2]
    src = open(path).read()
    sizes, _ = table(src, "class_size")
    of_small, span_small = table(src, "class_of_small")
    zero = {i for i in range(1, len(of_small)) if of_small[i] == 0}
    want_small, want_aligned = derive(sizes, zero)
    if sys.argv[1] == "--check":
        aligned, _ = table(src, "class_aligned")
        flat = [x for row in want_aligned for x in row]
        errors = rules(sizes)
        if of_small != want_small:
            errors.append("class_of_small does not follow class_size")
        if aligned != flat:
            errors.append("class_aligned does not follow class_size")
        for e in errors:
            print("classes.py: %s: %s" % (path, e))
        print("classes.py: %d classes, %s" %
              (len(sizes), "tables agree" if not errors else "FAILED"))
        sys.exit(1 if errors else 0)
    text = "\n" + ",\n".join(
        "    " + ", ".join(str(v) for v in want_small[i:i + 19])
        for i in range(0, len(want_small), 19)) + ","
    src = src[:span_small[0]] + text + src[span_small[1]:]
    _, span_aligned = table(src, "class_aligned")
    rows = []
    a = 32
    for row in want_aligned:
        rows.append("    /* %d */ {%s}," % (a, ", ".join(map(str, row))))
        a *= 2
    src = src[:span_aligned[0]] + "\n" + "\n".join(rows) + src[span_aligned[1]:]
    open(path, "w").write(src)


if __name__ == "__main__":
    main()
