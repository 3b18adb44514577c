#!/usr/bin/env python3
"""gen_corpus.py: writes the seed corpus of fuzz_ops (test/fuzz/corpus/).

Each seed is a small scenario in fuzz_ops's input format, so the fuzzer
starts from inputs that already reach every layer: small, medium and large
blocks, the aligned allocators, reallocs across size kinds, cross-thread
frees, concurrent bursts, thread restarts with live blocks, invalid requests.
Deterministic: running it again rewrites the same files.

Input format (see fuzz_ops.c): 5 bytes per op —
  [code | thread << 4 | flag << 6] [slot] [a] [b] [c]
and a size is the two bytes (a, b): the top two bits of a choose tiny
(0..1023), small (..8392), medium (8 KiB + 64 * v) or large
(1 MiB - 4 KiB + 160 * v).

    python3 test/fuzz/gen_corpus.py [outdir]
"""
import os
import random
import sys

(MALLOC, CALLOC, REALLOC, ALIGNED, FREE, USABLE, REALLOCARRAY, CHECK, COLLECT,
 RESTART, BURST, BAD, BATCH, FREE_RANGE, MOVE, EXT) = range(16)
# EXT sub-ops (in c % 8)
(HEAP_NEW, HEAP_ALLOC, HEAP_END, HEAP_COLLECT, WALK, ALLOT_CHECK, HEAP_ALLOC2,
 OWNERSHIP) = range(8)

KIB = 1024
MIB = 1024 * 1024


def size_bytes(s):
    """The (a, b) bytes that decode to size s (nearest representable)."""
    if s < 1024:
        return (s >> 8) & 3, s & 255
    if s < 8 * KIB + 200:
        return 0x40 | ((s >> 8) & 63), s & 255
    if s < MIB - 4 * KIB:
        v = min((s - 8 * KIB) // 64, 0x3FFF)
        return 0x80 | (v >> 8), v & 255
    v = min((s - (MIB - 4 * KIB)) // 160, 0x3FFF)
    return 0xC0 | (v >> 8), v & 255


def op(code, thread=0, slot=0, size=None, a=0, b=0, c=0, flag=0):
    if size is not None:
        a, b = size_bytes(size)
    return bytes([code | (thread << 4) | (flag << 6), slot, a, b, c])


def small_churn(rng):
    out = b""
    for i in range(60):
        out += op(MALLOC, 0, rng.randrange(64), rng.choice([0, 1, 8, 16, 24, 100, 128, 129, 500, 1024, 4000, 8192]))
        if i % 3 == 0:
            out += op(FREE, 0, rng.randrange(64), flag=rng.randrange(4))
    return out


def every_class():
    out = b""
    for i, s in enumerate(list(range(0, 129, 16)) + [144, 256, 288, 512, 1024, 2048, 4096, 7680, 8192, 8193]):
        out += op(MALLOC, i % 4, i, s) + op(USABLE, (i + 1) % 4, i)
    return out


def medium_mix(rng):
    out = b""
    for i in range(30):
        out += op(MALLOC, rng.randrange(4), i, rng.randrange(8 * KIB + 1, MIB))
    for i in range(0, 30, 2):
        out += op(FREE, rng.randrange(4), i, flag=rng.randrange(4))
    for i in range(30):
        out += op(MALLOC, rng.randrange(4), 30 + i, rng.randrange(9 * KIB, 200 * KIB))
    return out


def large_realloc():
    out = op(MALLOC, 0, 1, 2 * MIB)
    for s in [3 * MIB, 1536 * KIB, 3 * MIB + 500 * KIB, 900 * KIB, 100, 2 * MIB]:
        out += op(REALLOC, 1, 1, s) + op(CHECK, 2, 1)
    return out + op(FREE, 3, 1)


def realloc_ladder(thread_hop):
    out = op(MALLOC, 0, 5, 1)
    sizes = [1, 17, 100, 1000, 8000, 8192, 8193, 20000, 500 * KIB, MIB, MIB + 4097, 3 * MIB,
             64 * KIB, 900, 16, 0]
    for i, s in enumerate(sizes):
        out += op(REALLOC, (i % 4) if thread_hop else 0, 5, s)
    return out


def aligned_sweep(api):
    out = b""
    for k in range(24):
        s = [1, 100, 5000, 70000, 1200000][k % 5]
        a, b = size_bytes(s)
        out += op(ALIGNED, k % 4, k, a=a, b=b, c=k, flag=api)
    for k in range(24):
        out += op(FREE, (k + 2) % 4, k, flag=2)
    return out


def cross_thread(rng):
    out = b""
    for i in range(64):
        out += op(MALLOC, i % 4, i, rng.choice([16, 48, 300, 3000, 20000, 300000]))
    for i in range(64):
        out += op(FREE, (i + 1) % 4, i)
    return out


def bursts(rng):
    out = b""
    for r in range(4):
        body = b""
        for i in range(31):
            code = rng.choice([MALLOC, MALLOC, FREE, REALLOC, CALLOC, ALIGNED, USABLE, CHECK])
            body += op(code, 0, rng.randrange(64), rng.choice([0, 32, 200, 4000, 9000, 70000, 1200000]),
                       flag=rng.randrange(4))
        out += op(BURST, 0, 0, a=31) + body
    return out


def restart_with_live_blocks():
    out = b""
    for t in (1, 2, 3):
        for i in range(12):
            out += op(MALLOC, t, t * 16 + i, [32, 1000, 50000][i % 3])
        out += op(RESTART, t)
    for t in (1, 2, 3):
        for i in range(0, 12, 2):
            out += op(FREE, 0, t * 16 + i)
        out += op(BATCH, t, t * 16, size=64, c=15)
    return out + op(COLLECT, 1) + op(COLLECT, 0)


def bad_requests():
    out = op(MALLOC, 0, 3, 5000) + op(MALLOC, 1, 4, 2 * MIB)
    for w in range(7):
        out += op(BAD, w % 4, 3 + (w & 1), a=w)
    return out + op(CHECK, 2, 3) + op(CHECK, 3, 4)


def calloc_kinds():
    out = b""
    for i, s in enumerate([0, 1, 16, 1000, 8192, 9000, 300000, MIB + 10, 3 * MIB]):
        a, b = size_bytes(s)
        out += op(CALLOC, i % 4, i, a=a, b=b, c=i)
    return out


def reallocarray_mix():
    out = b""
    for i, s in enumerate([4, 100, 2000, 60000]):
        a, b = size_bytes(s)
        out += op(REALLOCARRAY, i % 4, 7, a=a & 0x7F, b=b, c=i + 1)
    return out + op(REALLOCARRAY, 1, 7, c=0)


def moves(rng):
    out = b""
    for i in range(40):
        out += op(MALLOC, i % 4, i, rng.choice([24, 600, 12000]))
        out += op(MOVE, (i + 2) % 4, i, a=rng.randrange(64), flag=rng.randrange(4))
    return out + op(FREE_RANGE, 3, 0, c=31) + op(FREE_RANGE, 2, 32, c=31)


def zero_sizes():
    out = b""
    for i in range(20):
        out += op(MALLOC, i % 4, i, 0)
    for i in range(20):
        out += op(REALLOC, (i + 1) % 4, i, 0 if i % 2 else 32)
    return out


def ext(sub, thread=0, slot=0, size=None, k=0, flag=0, align_log=0):
    """An EXT op; k picks the thread's heap 0 or 1 (top bit of the slot
    byte), flag the allocation call or destroy/delete."""
    return op(EXT, thread, (slot % 64) | (k << 6), size,
              c=sub | (align_log << 3), flag=flag)


def heap_life():
    out = b""
    for t in range(4):
        out += ext(HEAP_NEW, t, k=t & 1)
        for i in range(10):
            out += ext(HEAP_ALLOC, t, t * 16 + i, [24, 700, 9000, 200000, 2 * MIB][i % 5],
                       k=t & 1, flag=i % 4, align_log=i % 13)
        out += ext(HEAP_COLLECT, t, k=t & 1)
    out += ext(WALK) + ext(ALLOT_CHECK, 1) + ext(OWNERSHIP, 2)
    # other threads free and realloc some heap blocks
    for i in range(0, 40, 3):
        out += op(FREE, (i + 1) % 4, i) + op(REALLOC, (i + 2) % 4, i + 1, 5000)
    out += ext(HEAP_ALLOC, 0, 50, 300, flag=3) + ext(HEAP_ALLOC, 0, 50, 30000, flag=3)
    out += ext(OWNERSHIP, 3)
    for t in range(4):
        out += ext(HEAP_END, t, k=t & 1, flag=2 if t % 2 else 0)
    return out + ext(WALK, 1) + ext(ALLOT_CHECK) + ext(ALLOT_CHECK, 3)


def heap_after_restart():
    """A thread exits leaving blocks; a first-class heap must not take over
    its pages: destroying the heap would free them."""
    out = b""
    for i in range(12):
        out += op(MALLOC, 1, 16 + i, 48)
    out += op(RESTART, 1) + ext(HEAP_NEW, 0)
    for i in range(8):
        out += ext(HEAP_ALLOC, 0, 40 + i, 48)
    out += ext(HEAP_END, 0, flag=0)
    for i in range(12):
        out += op(CHECK, 2, 16 + i)
    return out + ext(WALK, 3) + ext(OWNERSHIP, 0)


def random_seed(rng, n):
    return bytes(rng.randrange(256) for _ in range(n))


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(outdir, exist_ok=True)
    rng = random.Random(20240901)
    seeds = {
        "small_churn": small_churn(rng),
        "every_class": every_class(),
        "medium_mix": medium_mix(rng),
        "large_realloc": large_realloc(),
        "realloc_ladder": realloc_ladder(False),
        "realloc_ladder_threads": realloc_ladder(True),
        "cross_thread": cross_thread(rng),
        "bursts": bursts(rng),
        "restart_live": restart_with_live_blocks(),
        "bad_requests": bad_requests(),
        "calloc_kinds": calloc_kinds(),
        "reallocarray": reallocarray_mix(),
        "moves": moves(rng),
        "zero_sizes": zero_sizes(),
        "heap_life": heap_life(),
        "heap_after_restart": heap_after_restart(),
    }
    for api in range(4):
        seeds["aligned_api%d" % api] = aligned_sweep(api)
    for k in range(12):
        seeds["random%02d" % k] = random_seed(rng, 40 + 37 * k)
    for name, data in seeds.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds), outdir))


if __name__ == "__main__":
    main()
