#!/bin/bash
# real_programs.sh: real programs with allot preloaded, compared with the same
# runs on the system allocator. One program per invocation, so each is its
# own CTest test:
#
#   real_programs.sh python|git|sqlite|gcc <liballot.so> <work dir>
#
# Exits 0 when the outputs match, 1 on any difference or failure (showing
# what differed and the program's stderr), 77 when the program is not
# installed (CTest SKIP_RETURN_CODE).
set -u

prog=${1:?usage: real_programs.sh python|git|sqlite|gcc lib workdir}
lib=${2:?no library given}
work=${3:?no work directory given}
here=$(cd "$(dirname "$0")" && pwd)

fail() {
  echo "real_programs ($prog): FAILED: $*" >&2
  exit 1
}
skip() {
  echo "real_programs ($prog): $* -- skipped"
  exit 77
}
need() {
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || skip "$t is not installed"
  done
}

[ -f "$lib" ] || fail "no library at $lib"
lib=$(readlink -f "$lib")
rm -rf "$work"
mkdir -p "$work" || fail "cannot create $work"
cd "$work" || exit 1

# Keep the user's and the system's configuration out of the runs.
export HOME="$work" LC_ALL=C TZ=UTC
unset LD_PRELOAD

# run MODE LOG CMD...: run CMD on the system allocator (MODE=sys) or with
# allot preloaded (MODE=allot), stderr appended to LOG.
run() {
  local mode=$1 log=$2
  shift 2
  if [ "$mode" = allot ]; then
    LD_PRELOAD="$lib" "$@" 2>>"$log"
  else
    "$@" 2>>"$log"
  fi
}

# Show a failed step's stderr (allot reports corruption there) and stop.
fail_log() {
  local what=$1 log=$2
  echo "real_programs ($prog): FAILED: $what" >&2
  if [ -s "$log" ]; then
    echo "--- stderr ($log), last 30 lines:" >&2
    tail -n 30 "$log" >&2
  fi
  exit 1
}

compare() {
  local what=$1 a=$2 b=$3
  if ! cmp -s "$a" "$b"; then
    echo "real_programs ($prog): FAILED: $what differs between the system" \
      "allocator and allot:" >&2
    diff "$a" "$b" | head -n 40 >&2
    exit 1
  fi
}

# The preload must actually take effect, or every comparison is vacuous.
LD_PRELOAD="$lib" cat /proc/self/maps >maps.txt 2>&1
grep -qF "$lib" maps.txt || fail "LD_PRELOAD=$lib did not load the library"

# ---- python ----------------------------------------------------------------
python_test() {
  local py=${PYTHON3:-}
  if [ -z "$py" ]; then
    if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else
      need python3
      py=$(command -v python3)
    fi
  fi
  export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
  # PYTHONMALLOC=malloc sends even Python's small objects to malloc; the
  # last run keeps Python's own small-object allocator, as deployed.
  PYTHONMALLOC=malloc run sys sys.err "$py" "$here/alloc_heavy.py" >sys.out ||
    fail_log "python on the system allocator exited with $?" sys.err
  PYTHONMALLOC=malloc run allot allot.err "$py" "$here/alloc_heavy.py" \
    >allot.out || fail_log "python with allot exited with $?" allot.err
  run allot allot-pymalloc.err "$py" "$here/alloc_heavy.py" \
    >allot-pymalloc.out ||
    fail_log "python (pymalloc) with allot exited with $?" allot-pymalloc.err
  grep -q '^done$' sys.out || fail "the python workload did not finish"
  compare "python output" sys.out allot.out
  compare "python output (pymalloc)" sys.out allot-pymalloc.out
}

# ---- git -------------------------------------------------------------------
git_test() {
  need git awk sha256sum
  export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
  export GIT_AUTHOR_NAME=allot GIT_AUTHOR_EMAIL=allot@example.com
  export GIT_COMMITTER_NAME=allot GIT_COMMITTER_EMAIL=allot@example.com
  export GIT_AUTHOR_DATE='2024-01-01T00:00:00Z'
  export GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'

  # 1000 files in 37 directories, deterministic contents
  mkdir -p files
  (cd files && mkdir -p $(seq -f 'd%02g' 0 36)) || fail "mkdir"
  awk 'BEGIN {
    for (i = 0; i < 1000; i++) {
      f = sprintf("files/d%02d/file%04d.txt", i % 37, i)
      for (j = 0; j < 5 + i % 60; j++)
        printf("line %d of file %d: %x %s\n", j, i,
               (i * 7919 + j * 104729) % 1000003,
               substr("abcdefghijklmnopqrstuvwxyz", 1 + (i + j) % 26)) > f
      close(f)
    }
  }' || fail "generating files"

  local mode
  for mode in sys allot; do
    local log=$work/$mode.err out=$work/$mode.out r=$work/repo-$mode
    : >"$log"
    cp -r files "$r" || fail "cp"
    (
      cd "$r" || exit 1
      run $mode "$log" git init -q . || exit 1
      run $mode "$log" git add -A || exit 1
      run $mode "$log" git commit -q -m first || exit 1
      # second commit: edits, deletions and renames
      for i in $(seq 0 7 999); do
        f=$(printf 'd%02d/file%04d.txt' $((i % 37)) "$i")
        echo "changed $i" >>"$f"
      done
      # shellcheck disable=SC2046 # one word per path
      run $mode "$log" git rm -q -- $(for i in 1 2 3 4 5 6 8 9 10 11; do
        printf 'd%02d/file%04d.txt\n' "$i" "$i"
      done) || exit 1
      for i in 100 200 300; do
        f=$(printf 'd%02d/file%04d.txt' $((i % 37)) "$i")
        run $mode "$log" git mv "$f" "$f.moved" || exit 1
      done
      run $mode "$log" git commit -q -a -m second || exit 1
      run $mode "$log" git gc -q || exit 1
      run $mode "$log" git repack -a -d -f -q --window=50 --depth=50 || exit 1
      run $mode "$log" git fsck --full --strict --no-progress || {
        echo "git fsck failed" >>"$log"
        exit 1
      }
      {
        run $mode "$log" git log --format='%H %T %s'
        run $mode "$log" git diff --stat HEAD~1 HEAD | tail -n 1
        run $mode "$log" git diff -M --name-status HEAD~1 HEAD | sort
        run $mode "$log" git archive --format=tar HEAD | sha256sum
        run $mode "$log" git rev-list --objects --all | sort | sha256sum
        run $mode "$log" git grep -c 'line 3 ' HEAD | wc -l
        # object counts (the pack's byte size may vary with delta threads)
        run $mode "$log" git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
      } >"$out" || exit 1
    ) || fail_log "git with $mode exited with an error" "$log"
  done
  compare "git results" sys.out allot.out
  grep -q '^count: 0$' allot.out || fail "loose objects left after git gc"
  grep -q '^garbage: 0$' allot.out || fail "git reports garbage"
  grep -q '^packs: 1$' allot.out || fail "git repack -a did not leave one pack"
  local objects
  objects=$(cd repo-allot && git rev-list --objects --all | wc -l)
  grep -q "^in-pack: $objects\$" allot.out ||
    fail "in-pack count is not the $objects reachable objects"
}

# ---- sqlite ----------------------------------------------------------------
sqlite_test() {
  need sqlite3 awk
  {
    cat <<'EOF'
PRAGMA journal_mode=WAL;
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INT, name TEXT, val REAL, blob BLOB);
BEGIN;
EOF
    # 100k single-row inserts: parsing and planning allocate per statement
    awk 'BEGIN {
      for (i = 1; i <= 100000; i++)
        printf("INSERT INTO t VALUES(%d,%d,%s,%d.%02d,zeroblob(%d));\n", i,
               (i * 7919) % 97, "'\''n" ((i * 104729) % 100003) "x" i "'\''",
               (i * 31) % 10007, i % 100, (i * 13) % 300)
    }'
    cat <<'EOF'
COMMIT;
SELECT count(*), sum(grp), total(val), sum(length(name)), sum(length(blob)) FROM t;
SELECT grp, count(*), round(avg(val), 4), min(name), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 20;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp_val ON t(grp, val);
SELECT id, name FROM t WHERE name BETWEEN 'n5000' AND 'n5010' ORDER BY name, id;
SELECT grp, count(*) FROM t WHERE val > 5000 GROUP BY grp HAVING count(*) > 500 ORDER BY grp;
DELETE FROM t WHERE id % 3 = 0;
UPDATE t SET name = upper(name) || '-' || grp WHERE id % 5 = 1;
SELECT count(*), sum(grp), total(val) FROM t;
SELECT substr(group_concat(name, ','), 1, 200) FROM (SELECT name FROM t ORDER BY val DESC, id LIMIT 500);
CREATE TABLE u AS SELECT grp, name, val FROM t WHERE id % 11 = 0;
SELECT count(*), count(DISTINCT t.grp) FROM t JOIN u ON t.grp = u.grp AND t.id % 997 = 0;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000)
  SELECT count(*), sum(length(printf('%08d-%s', x, hex(x)))) FROM c;
SELECT json_group_array(id) FROM (SELECT id FROM t ORDER BY id DESC LIMIT 30);
VACUUM;
PRAGMA integrity_check;
SELECT count(*) FROM t;
EOF
  } >workload.sql || fail "generating the SQL"
  run sys sys.err sqlite3 sys.db <workload.sql >sys.out ||
    fail_log "sqlite3 on the system allocator exited with $?" sys.err
  run allot allot.err sqlite3 allot.db <workload.sql >allot.out ||
    fail_log "sqlite3 with allot exited with $?" allot.err
  # an in-memory database: the same work, all in the heap
  run allot allot-mem.err sqlite3 :memory: <workload.sql >allot-mem.out ||
    fail_log "sqlite3 :memory: with allot exited with $?" allot-mem.err
  grep -q '^ok$' sys.out || fail "integrity_check did not report ok"
  compare "sqlite3 output" sys.out allot.out
  # journal_mode prints "memory" for :memory:, everything else must match
  compare "sqlite3 output (:memory:)" <(tail -n +2 sys.out) \
    <(tail -n +2 allot-mem.out)
}

# ---- gcc -------------------------------------------------------------------
gcc_test() {
  need gcc objdump awk
  # a few hundred functions with loops, switches and local arrays
  awk 'BEGIN {
    print "#include <stdio.h>"
    print "#include <string.h>"
    n = 250
    for (k = 0; k < n; k++) {
      printf("struct s%d { int v[%d]; unsigned char c[%d]; };\n", k, k % 13 + 1, k % 29 + 3)
      printf("static unsigned f%d(unsigned x) {\n", k)
      printf("  struct s%d s; unsigned a = x * %du + 1;\n", k, 2 * k + 1)
      printf("  memset(&s, (int)(x & 0xff), sizeof s);\n")
      printf("  for (int i = 0; i < %d; i++) {\n", k % 7 + 3)
      printf("    switch ((a >> (i %% 16)) %% 6) {\n")
      printf("    case 0: a += (unsigned)i * %du; break;\n", k + 3)
      printf("    case 1: a ^= a << 3; break;\n")
      printf("    case 2: a = a * 2654435761u + %du; break;\n", k)
      printf("    case 3: s.v[i %% %d] += (int)a; a += (unsigned)s.v[0]; break;\n", k % 13 + 1)
      printf("    case 4: a -= s.c[i %% %d]; break;\n", k % 29 + 3)
      printf("    default: a = (a >> 5) | (a << 27);\n")
      printf("    }\n  }\n")
      if (k > 0) printf("  if (a %% 17 == %d) a += f%d(a >> 4);\n", k % 17, k - 1)
      printf("  return a;\n}\n")
    }
    print "int main(void) {"
    print "  unsigned acc = 12345;"
    for (k = 0; k < n; k++) printf("  acc = acc * 31u + f%d(acc);\n", k)
    print "  printf(\"%u\\n\", acc);"
    print "  return 0;"
    print "}"
  }' >big.c || fail "generating the C file"
  local mode
  for mode in sys allot; do
    : >$mode.err
    run $mode $mode.err gcc -O2 -g -frandom-seed=allot -c big.c -o big-$mode.o ||
      fail_log "gcc -c with $mode exited with $?" $mode.err
    run $mode $mode.err gcc big-$mode.o -o big-$mode ||
      fail_log "linking with $mode exited with $?" $mode.err
    run $mode $mode.err ./big-$mode >$mode.out ||
      fail_log "the compiled program ($mode) exited with $?" $mode.err
    # code and data, without the file name header
    objdump -d -r -j .text -j .data -j .rodata big-$mode.o | tail -n +4 \
      >$mode.dis || fail "objdump"
  done
  compare "the program's output" sys.out allot.out
  compare "the object code" sys.dis allot.dis
  cmp -s big-sys.o big-allot.o || fail "the object files differ"
}

case $prog in
python) python_test ;;
git) git_test ;;
sqlite) sqlite_test ;;
gcc) gcc_test ;;
*) fail "unknown program '$prog'" ;;
esac
echo "real_programs ($prog): outputs match"
exit 0
