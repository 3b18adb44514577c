"""heap-map-demo.py: the Python program behind docs/heap-map.svg.

It builds 12 000 JSON documents of mixed sizes, serialises and parses them,
keeps a third, and then asks for a heap map of itself (SIGUSR2, which
`allot map --signal USR2` turns into a map) while that third is still live:

    PYTHONMALLOC=malloc allot map -o docs/heap-map.svg --png \\
        --signal USR2 --no-exit -- python3 tools/heap-map-demo.py

(the map is written as docs/heap-map-1.svg: rename it). PYTHONMALLOC=malloc
sends every object to malloc instead of Python's own small-object arenas,
so the picture shows allot holding Python's objects.
"""
import json
import os
import random
import signal
import time

random.seed(1)
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
docs = [{"id": i,
         "name": "-".join(random.choice(WORDS) for _ in range(i % 7 + 1)),
         "tags": [random.choice(WORDS) for _ in range(i % 5)],
         "blob": "x" * random.choice([10, 100, 1000, 5000, 20000])}
        for i in range(12000)]
text = json.dumps(docs)
back = json.loads(text)
keep = [d for d in back if d["id"] % 3 == 0]
del docs, back
os.kill(os.getpid(), signal.SIGUSR2)
time.sleep(2)  # the map is drawn by a helper thread meanwhile
print(len(text), len(keep))
