"""checks.py: what the Python test drivers share (test/test_tools.py,
test/test_prof.py, bench/test_allot_bench.py): a counter of named checks
that prints one line per check, and an environment with no allocator
preloaded and no ALLOT_* variable set."""
import os
import sys


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   " + what)
        else:
            self.failed += 1
            print("FAIL " + what + (": " + str(detail)[-3000:]
                                    if detail else ""))
        sys.stdout.flush()
        return cond


def env_clean():
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    for k in list(env):
        if k.startswith("ALLOT_"):
            del env[k]
    return env
