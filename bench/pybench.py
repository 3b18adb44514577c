"""pybench.py: the python3 workload of the allot benchmark suite.

Run by `allot bench` with Debian's /usr/bin/python3 and PYTHONMALLOC=malloc,
so every Python object, not just the large ones, comes from the allocator
under test. Each round builds and tears down the data structures typical
Python programs are made of: dicts keyed by strings, lists of tuples, class
instances forming a tree, strings joined and split, JSON encoded and
decoded, a sort. Every step's result is checked against a second way of
computing it; a mismatch prints "pybench: FAIL ..." and exits 1.

    python3 pybench.py ROUNDS
"""
import json
import sys
import zlib


def fail(msg):
    print("pybench: FAIL " + msg)
    sys.exit(1)


class Node:
    __slots__ = ("key", "left", "right", "payload")

    def __init__(self, key, payload):
        self.key = key
        self.left = None
        self.right = None
        self.payload = payload


def tree_insert(root, key, payload):
    if root is None:
        return Node(key, payload)
    node = root
    while True:
        if key < node.key:
            if node.left is None:
                node.left = Node(key, payload)
                return root
            node = node.left
        else:
            if node.right is None:
                node.right = Node(key, payload)
                return root
            node = node.right


def tree_walk(root):
    out, stack, node = [], [], root
    while stack or node is not None:
        while node is not None:
            stack.append(node)
            node = node.left
        node = stack.pop()
        out.append(node.key)
        node = node.right
    return out


def one_round(r, n):
    total = 0
    # Dicts of strings and lists.
    d = {}
    for i in range(n):
        d["key-%d-%d" % (r, i)] = [i, str(i * 7), (i, r), "x" * (i % 50)]
    if len(d) != n:
        fail("dict size")
    s = sum(v[0] for v in d.values())
    if s != n * (n - 1) // 2:
        fail("dict values")

    # Strings: join, split, replace.
    text = ",".join(v[1] for v in d.values())
    parts = text.split(",")
    if len(parts) != n or parts[-1] != str((n - 1) * 7):
        fail("split")
    up = text.replace("7", "seven")
    if up.count("seven") != text.count("7"):
        fail("replace")
    total += zlib.crc32(up.encode())

    # JSON round trip.
    items = [[k, v[0], v[1], list(v[2])] for k, v in list(d.items())[: n // 2]]
    blob = json.dumps(items)
    back = json.loads(blob)
    if back != items:
        fail("json round trip")
    total += len(blob)

    # Sort tuples by a computed key, check the order.
    pairs = sorted(((i * 7919) % 10007, i) for i in range(n))
    for a, b in zip(pairs, pairs[1:]):
        if a > b:
            fail("sort order")
    total += pairs[n // 2][0]

    # A tree of objects with payloads of varied sizes.
    root = None
    for i in range(n // 4):
        key = (i * 2654435761) % 1000003
        root = tree_insert(root, key, bytearray(16 + (i % 200)))
    keys = tree_walk(root)
    if keys != sorted(keys) or len(keys) != n // 4:
        fail("tree order")
    total += sum(keys[:100])

    # Sets and comprehension churn.
    a = {i * 3 for i in range(n)}
    b = {i * 5 for i in range(n)}
    both = a & b
    if len(both) != len(range(0, 3 * n, 15)):
        fail("set intersection")
    total += len(both)
    return total


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        sys.stderr.write("usage: pybench.py ROUNDS\n")
        sys.exit(2)
    rounds = int(sys.argv[1])
    checksum = 0
    for r in range(rounds):
        checksum = (checksum + one_round(r, 20000)) & 0xFFFFFFFFFFFFFFFF
    print("pybench: ok checksum=%016x" % checksum)


if __name__ == "__main__":
    main()
