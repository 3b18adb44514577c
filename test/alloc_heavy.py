"""alloc_heavy.py: an allocation-heavy, deterministic Python workload for
real_programs.sh, which runs it with and without allot preloaded and
compares the output. Dicts, lists, strings, bytes, bignums, object graphs
with cycles, and a few threads; prints one digest per part."""

import collections
import gc
import hashlib
import json
import random
import re
import sys
import threading


def digest(obj):
    if not isinstance(obj, (bytes, bytearray)):
        obj = repr(obj).encode()
    return hashlib.sha256(obj).hexdigest()[:16]


def dicts(rng):
    d = {}
    for i in range(200000):
        d["k%d_%x" % (i, rng.getrandbits(20))] = i * i
    for k in list(d)[::2]:
        del d[k]
    d2 = {v: k for k, v in d.items()}
    nested = {i: {j: str(j) * (j % 7) for j in range(i % 50)} for i in range(3000)}
    counter = collections.Counter(k[-2:] for k in d)
    return digest((sum(d.values()), len(d2), sorted(counter.items())[:20],
                   sum(len(v) for v in nested.values())))


def lists(rng):
    xs = [rng.random() for _ in range(300000)]
    xs.sort()
    ys = [(int(x * 1000), -i) for i, x in enumerate(xs)]
    ys.sort()
    grid = [[i * j for j in range(200)] for i in range(500)]
    flat = [v for row in grid for v in row if v % 3]
    dq = collections.deque()
    for i in range(200000):
        dq.append(i)
        if i % 3 == 0:
            dq.popleft()
    chunks = [flat[i:i + 77] for i in range(0, len(flat), 77)]
    return digest((ys[:50], ys[-50:], len(flat), sum(len(c) for c in chunks),
                   len(dq), dq[0]))


def strings(rng):
    words = ["".join(chr(97 + rng.randrange(26)) for _ in range(rng.randrange(1, 12)))
             for _ in range(60000)]
    text = " ".join(words)
    up = text.upper().replace("A", "<a>").split()
    fmt = ["{:>10}|{:<8}|{:08x}".format(w, len(w), i) for i, w in enumerate(words)]
    found = re.findall(r"\b[a-e]{2,4}\b", text)
    buf = bytearray()
    for w in words:
        buf += w.encode() * 3
    js = json.loads(json.dumps({"w": words[:20000], "n": list(range(20000))}))
    s = ""
    for i in range(20000):
        s += str(i)  # grows one string through many reallocs
    return digest((len(up), digest("".join(fmt)), len(found), digest(bytes(buf)),
                   len(js["w"]), len(s)))


def bignums(rng):
    f = 1
    for i in range(2, 4000):
        f *= i
    p = pow(3, 40000) - pow(7, 15000)
    a, b = 0, 1
    for _ in range(20000):
        a, b = b, a + b
    q, r = divmod(p, f // 7919 + 1)
    nums = [rng.getrandbits(2048) for _ in range(2000)]
    prod = 1
    for n in nums[:300]:
        prod = prod * n % (1 << 9000)
    def to_bytes(n):
        return n.to_bytes((n.bit_length() + 7) // 8, "little")
    return digest(b"".join(to_bytes(x) for x in (f, p, a, q, r, prod, sum(nums))))


class Node:
    def __init__(self, val):
        self.val = val
        self.children = []
        self.parent = None


class Slot:
    __slots__ = ("a", "b", "c")

    def __init__(self, a, b, c):
        self.a, self.b, self.c = a, b, c


def objects(rng):
    total = 0
    for round_ in range(8):
        nodes = [Node(i) for i in range(20000)]
        for i, n in enumerate(nodes[1:], 1):
            parent = nodes[rng.randrange(i)]
            n.parent = parent  # cycles: parent <-> child
            parent.children.append(n)
        total += sum(len(n.children) for n in nodes)
        del nodes
        total += gc.collect() >= 0
        slots = [Slot(i, str(i), [i]) for i in range(30000)]
        total += sum(s.a for s in slots[::100])
    sets = [frozenset(range(i % 100)) for i in range(5000)]
    return digest((total, len(set(sets))))


def threaded():
    results = [None] * 4

    def work(k):
        rng = random.Random(1000 + k)
        d = {}
        for i in range(50000):
            d[i] = [rng.random()] * (i % 9)
            if i % 4 == 0:
                d.pop(i // 2, None)
        results[k] = digest(sorted((k2, len(v)) for k2, v in d.items()))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return digest(results)


def main():
    parts = [("dicts", dicts), ("lists", lists), ("strings", strings),
             ("bignums", bignums), ("objects", objects)]
    for name, fn in parts:
        print(name, fn(random.Random(name)))
    print("threads", threaded())
    print("done")


if __name__ == "__main__":
    sys.exit(main())
