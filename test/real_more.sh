#!/usr/bin/env bash
# real_more.sh: real programs under allot, beyond test/real_programs.sh —
# Python's own regression tests and a Redis server under load — each run
# with allot preloaded and without it, the two results compared.
#
#   real_more.sh <liballot.so> python   a subset of CPython's regression
#       tests (Debian: libpython3.11-testsuite) with PYTHONMALLOC=malloc, so
#       every object goes through malloc; the same tests must pass with the
#       same summary with and without allot. REAL_MORE_PYTESTS overrides the
#       list; REAL_MORE_PYTESTS=all runs the whole suite (long, outside CI).
#   real_more.sh <liballot.so> redis    redis-server on 127.0.0.1 (a free
#       port): a scripted session whose replies must match the run without
#       allot, Lua scripts, big values, then redis-benchmark (bounded) that
#       must finish every test without errors, then a clean shutdown.
#
# Exit 0: passed; 1: failed; 77: the program or its test suite is not
# installed (CTest reports a skip).
set -u
lib=${1:?usage: real_more.sh <liballot.so> python|redis}
what=${2:?usage: real_more.sh <liballot.so> python|redis}
lib=$(readlink -f "$lib")
work=$(mktemp -d "${TMPDIR:-/tmp}/allot-real-more.XXXXXX")
[ -n "${REAL_MORE_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

say() { printf 'real_more: %s\n' "$*"; }
fail() {
  say "FAILED: $*"
  exit 1
}

# ---- Python's regression tests ---------------------------------------------
python_tests() {
  local py=/usr/bin/python3
  if [ ! -x "$py" ] || ! "$py" -c 'import test.test_list' 2>/dev/null; then
    say "skip: no Python regression tests (Debian: libpython3.11-testsuite)"
    exit 77
  fi
  # allocation-heavy and quick: a CTest run stays near 20 seconds
  local tests=${REAL_MORE_PYTESTS:-"test_list test_dict test_set test_bytes
    test_re test_json test_collections test_unicode test_long"}
  [ "$tests" = all ] && tests=""
  # allot must really be the allocator inside the preloaded interpreter
  local probe='import ctypes
c = ctypes.CDLL(None)
c.malloc.restype = ctypes.c_void_p
c.allot_owns.argtypes = [ctypes.c_void_p]
p = c.malloc(100)
print("allot" if c.allot_owns(p) == 1 else "not allot")
print(c.allot_option_get(9))  # ALLOT_OPTION_DEBUG'
  local probed who debug
  probed=$(PYTHONMALLOC=malloc LD_PRELOAD="$lib" "$py" -c "$probe" 2>/dev/null)
  who=$(printf '%s\n' "$probed" | sed -n 1p)
  debug=$(printf '%s\n' "$probed" | sed -n 2p)
  [ "$who" = allot ] || fail "malloc in the preloaded python is not allot's ($who)"
  # Debug mode (ALLOT_DEBUG=1, e.g. the whole suite run in debug mode) ends
  # every process with a leak report on stderr, and Python's test runner
  # reads its workers' and subprocesses' stderr: the summaries cannot match.
  if [ "$debug" != 0 ]; then
    say "skip: debug mode writes a leak report on every process's stderr, which Python's regression tests read as output"
    exit 77
  fi

  local mode
  for mode in plain allot; do
    local pre=""
    [ $mode = allot ] && pre=$lib
    # shellcheck disable=SC2086
    (cd "$work" && PYTHONMALLOC=malloc LD_PRELOAD=$pre \
      timeout 900 "$py" -m test -j2 --timeout 300 $tests) \
      >"$work/py-$mode.log" 2>&1
    echo $? >"$work/py-$mode.rc"
    # the verdict, the counts and the lists of skipped or failed tests
    grep -vE '^[0-9]+:[0-9]{2}:[0-9]{2} ' "$work/py-$mode.log" |
      grep -E 'Tests? result|tests? (OK|skipped|failed|altered|omitted)|^ +test_' \
        >"$work/py-$mode.sum"
  done
  local rc_plain rc_allot
  rc_plain=$(cat "$work/py-plain.rc")
  rc_allot=$(cat "$work/py-allot.rc")
  say "python regression tests: exit $rc_plain without allot, $rc_allot with it"
  if [ "$rc_allot" != "$rc_plain" ] ||
    ! cmp -s "$work/py-plain.sum" "$work/py-allot.sum"; then
    say "summary without allot:"
    cat "$work/py-plain.sum"
    say "summary with allot:"
    cat "$work/py-allot.sum"
    tail -40 "$work/py-allot.log"
    fail "python regression tests differ under allot"
  fi
  [ "$rc_plain" = 0 ] || say "(the suite fails without allot too: only the comparison counts)"
  grep -E 'Tests? result' "$work/py-allot.log" | tail -1
}

# ---- Redis -------------------------------------------------------------------
free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# A session whose replies do not depend on timing or addresses.
redis_session() {
  local cli=(redis-cli -h 127.0.0.1 -p "$1")
  {
    for i in $(seq 1 300); do
      echo "SET key:$i value-$i-$(printf '%*s' $((i * 7 % 500)) | tr ' ' x)"
      echo "RPUSH list:$((i % 7)) item-$i"
      echo "SADD set:$((i % 5)) member-$((i * 13 % 97))"
      echo "HSET hash:$((i % 3)) field-$i $i"
      echo "ZADD zset $((i * 37 % 1000)) m-$i"
      echo "INCRBY counter $i"
      echo "APPEND app:$((i % 11)) chunk-$i-"
    done
    echo "GET key:150"
    echo "STRLEN app:3"
    echo "LRANGE list:3 0 -1"
    echo "SCARD set:2"
    echo "HLEN hash:1"
    echo "ZRANGE zset 0 9 WITHSCORES"
    echo "GET counter"
    echo "DBSIZE"
    # Lua: tables and strings built inside the server
    echo "EVAL \"local t = {} for i = 1, 20000 do t[i] = tostring(i) .. 'x' end return #table.concat(t, ',')\" 0"
    echo "EVAL \"local s = '' for i = 1, 2000 do s = s .. string.rep('y', i % 50) end redis.call('SET', 'lua', s) return #s\" 0"
    echo "STRLEN lua"
    for i in $(seq 1 50); do echo "DEL key:$((i * 3))"; done
    echo "DBSIZE"
    echo "OBJECT ENCODING list:1"
  } | "${cli[@]}" 2>&1
  # a big value through stdin: 4 MiB
  head -c 4194304 /dev/zero | tr '\0' 'z' | "${cli[@]}" -x SET big 2>&1
  "${cli[@]}" STRLEN big 2>&1
  "${cli[@]}" GETRANGE big 4194300 -1 2>&1
  "${cli[@]}" DEL big 2>&1
}

redis_run() { # mode port logdir
  local mode=$1 port=$2 pre=""
  [ "$mode" = allot ] && pre=$lib
  LD_PRELOAD=$pre redis-server --port "$port" --bind 127.0.0.1 --save "" \
    --appendonly no --daemonize no --dir "$work" \
    --logfile "$work/redis-$mode.log" --protected-mode yes &
  local pid=$!
  local up=""
  for _ in $(seq 1 100); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = PONG ]; then
      up=1
      break
    fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$up" ]; then
    kill $pid 2>/dev/null
    cat "$work/redis-$mode.log"
    fail "redis-server ($mode) did not start"
  fi
  if [ "$mode" = allot ]; then
    grep -q "$(basename "$lib")" /proc/$pid/maps ||
      fail "liballot is not loaded in redis-server"
  fi
  redis_session "$port" >"$work/session-$mode.txt"
  local brc=0
  if [ "$mode" = allot ]; then # the load only matters under allot
    timeout 300 redis-benchmark -h 127.0.0.1 -p "$port" -q -n 10000 -c 20 \
      -d 200 -r 10000 \
      -t set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,lrange_100,mset \
      >"$work/bench-$mode.txt" 2>&1
    brc=$?
  else
    : >"$work/bench-$mode.txt"
  fi
  redis-cli -h 127.0.0.1 -p "$port" INFO memory >"$work/info-$mode.txt" 2>&1
  redis-cli -h 127.0.0.1 -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1
  local st=0
  wait $pid || st=$?
  [ $brc = 0 ] || {
    cat "$work/bench-$mode.txt"
    fail "redis-benchmark ($mode) exited $brc"
  }
  if grep -q ERR "$work/session-$mode.txt"; then
    grep ERR "$work/session-$mode.txt" | head
    fail "the scripted redis session ($mode) got errors"
  fi
  [ "$mode" = allot ] || {
    [ $st = 0 ] || fail "redis-server ($mode) exited with status $st"
    return
  }
  local lines
  lines=$(tr '\r' '\n' <"$work/bench-$mode.txt" | grep -cE 'requests per second')
  [ "$lines" -ge 13 ] || {
    cat "$work/bench-$mode.txt"
    fail "redis-benchmark ($mode) finished only $lines of 13 tests"
  }
  if grep -qiE 'error|crash|guru meditation' "$work/bench-$mode.txt"; then
    cat "$work/bench-$mode.txt"
    fail "redis-benchmark ($mode) reported errors"
  fi
  if grep -qiE 'crashed|guru meditation|assertion' "$work/redis-$mode.log"; then
    tail -30 "$work/redis-$mode.log"
    fail "redis-server ($mode) crashed"
  fi
  [ $st = 0 ] || fail "redis-server ($mode) exited with status $st"
}

redis_tests() {
  if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null ||
    ! command -v redis-cli >/dev/null; then
    say "skip: redis-server, redis-cli or redis-benchmark not installed"
    exit 77
  fi
  local mode
  for mode in plain allot; do
    redis_run $mode "$(free_port)"
  done
  if ! cmp -s "$work/session-plain.txt" "$work/session-allot.txt"; then
    diff "$work/session-plain.txt" "$work/session-allot.txt" | head -40
    fail "redis replies differ under allot"
  fi
  say "redis: $(wc -l <"$work/session-allot.txt") replies identical with and without allot"
  say "redis-benchmark under allot:"
  tr '\r' '\n' <"$work/bench-allot.txt" | grep -E 'requests per second' | sed 's/^/  /'
  grep -E '^used_memory_human|^mem_allocator' "$work/info-allot.txt" | sed 's/^/  /'
}

case $what in
python) python_tests ;;
redis) redis_tests ;;
*)
  echo "usage: real_more.sh <liballot.so> python|redis" >&2
  exit 2
  ;;
esac
say "passed ($what)"
