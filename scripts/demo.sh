#!/usr/bin/env bash
# The README's first command: build allot and run a real program on it.
# Installs what it needs (Debian), builds the library and the `allot`
# command, then runs sqlite3 on a 100 000-row workload twice — on glibc's
# malloc and on allot — and shows allot's statistics for the run: counts per
# size class, peak memory, OS calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
echo "built: $(ls build/liballot.so build/liballot.a | tr '\n' ' ')"

sql=$(mktemp)
trap 'rm -f "$sql"' EXIT
cat >"$sql" <<'SQL'
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
INSERT INTO t SELECT x, hex(randomblob(16)), (x * 7919) % 1000 FROM c;
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(score) FROM t WHERE score > 500;
SELECT count(DISTINCT substr(name, 1, 3)) FROM t;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*) FROM t;
SQL

run() { /usr/bin/time -f "  wall %e s, peak RSS %M KiB" "$@" sqlite3 :memory: <"$sql"; }
echo
echo "== sqlite3, 100 000 rows, glibc malloc"
run env
echo
echo "== the same on allot: build/allot run --stats -- sqlite3 ..."
run build/allot run --stats --
