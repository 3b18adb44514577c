# verify.cmake: verification in depth (issue 9) — hostile conditions
# (test/hostile/), the bounded fuzz run (test/fuzz/), a soak smoke run and the
# real-program checks of test/real_more.sh. docs/testing.md says what runs
# where; scripts/sanitize.sh, scripts/fuzz.sh and scripts/soak.sh are the long
# and sanitizer runs.

set(ALLOT_VERIFY_DIR ${CMAKE_CURRENT_LIST_DIR})
set(ALLOT_VERIFY_C_SOURCES ${ALLOT_SOURCES})
list(FILTER ALLOT_VERIFY_C_SOURCES INCLUDE REGEX "\\.c$")
list(TRANSFORM ALLOT_VERIFY_C_SOURCES PREPEND ${PROJECT_SOURCE_DIR}/)

# allot with the test hooks of src/os.c (make the n-th kernel call fail):
# prefixed API only, never installed, so production builds carry no hook.
add_library(allot-testhooks STATIC ${ALLOT_VERIFY_C_SOURCES})
target_include_directories(allot-testhooks PUBLIC
  ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src)
target_compile_options(allot-testhooks PRIVATE ${ALLOT_WARNINGS}
  -fvisibility=hidden -ftls-model=initial-exec)
target_compile_definitions(allot-testhooks PRIVATE ALLOT_OVERRIDE=0
  ALLOT_TEST_HOOKS=1 _GNU_SOURCE)
target_link_libraries(allot-testhooks PUBLIC Threads::Threads)

# How long the hunts for races and deadlocks run (forks, signals, seconds).
# The default build's suite runs them in full: how often they catch a lock
# held across fork or a handler that meets a half-made block grows with the
# number of rounds. A sanitizer build looks for something else, undefined
# behaviour or a bad access on the paths the rounds take, and every round
# takes the same paths (only the timing between threads differs): a few
# rounds there check what many would. scripts/test.sh runs both builds.
if(ALLOT_SANITIZE)
  set(ALLOT_FORKLOCKS_ARGS 30)
  set(ALLOT_FORKCHECK_ARGS 15)
  set(ALLOT_SIGNALS_ARGS 1000)
else()
  set(ALLOT_FORKLOCKS_ARGS 150)
  set(ALLOT_FORKCHECK_ARGS 60)
  set(ALLOT_SIGNALS_ARGS 3000)
endif()
set(ALLOT_ASLIMIT_ARGS "")
set(ALLOT_THREADS_ARGS "")

function(allot_hostile name)
  cmake_parse_arguments(arg "" "" "LIBS;DEFS" ${ARGN})
  add_executable(hostile_${name} ${ALLOT_VERIFY_DIR}/hostile/${name}.c)
  target_include_directories(hostile_${name} PRIVATE
    ${PROJECT_SOURCE_DIR}/include)
  # no builtin malloc: clang 14 assumes malloc leaves errno alone and folds
  # the ENOMEM checks away
  target_compile_options(hostile_${name} PRIVATE ${ALLOT_WARNINGS} -fno-builtin)
  target_compile_definitions(hostile_${name} PRIVATE _GNU_SOURCE ${arg_DEFS})
  target_link_libraries(hostile_${name} PRIVATE ${arg_LIBS} Threads::Threads
    ${CMAKE_DL_LIBS})
endfunction()

# Through the prefixed API only: also run under ASan and TSan.
allot_hostile(pstress LIBS allot-prefixed)
add_test(NAME hostile_pstress COMMAND hostile_pstress)
set_tests_properties(hostile_pstress PROPERTIES TIMEOUT 300
  LABELS "verify;prefixed")

allot_hostile(osfail LIBS allot-testhooks)
add_test(NAME hostile_osfail COMMAND hostile_osfail mmap)
add_test(NAME hostile_osfail_brk COMMAND hostile_osfail brk)
set_tests_properties(hostile_osfail hostile_osfail_brk PROPERTIES
  TIMEOUT 120 LABELS "verify;prefixed")

# A kernel with pages other than 4 KiB: a clear message and abort() at the
# first call (os.c); under qemu also with a real 64 KiB page (qemu's -p).
allot_hostile(pagesize LIBS allot-testhooks)
add_test(NAME hostile_pagesize COMMAND hostile_pagesize)
set_tests_properties(hostile_pagesize PROPERTIES TIMEOUT 60
  LABELS "verify;prefixed")
if(CMAKE_CROSSCOMPILING_EMULATOR MATCHES "qemu-")
  set(_emulator ${CMAKE_CROSSCOMPILING_EMULATOR})
  list(INSERT _emulator 1 -p 65536)
  add_test(NAME hostile_pagesize_64k
    COMMAND ${_emulator} $<TARGET_FILE:hostile_pagesize>)
  set_tests_properties(hostile_pagesize_64k PROPERTIES TIMEOUT 60
    LABELS "verify;prefixed" PASS_REGULAR_EXPRESSION "kernel pages of 65536")
endif()

# Checked modes: allot_check while other threads make, resize and free large
# blocks (the check read blocks being freed: a crash or a false report). Not
# under TSan: the check reads blocks other threads write as a seqlock's
# reader does (checked.c, in_flight), which TSan reports as races.
# _pause: the makers stop now and then where they hold a live large block
# not made yet and not named (the test hooks; largewalk.c says why).
if(NOT ALLOT_SANITIZE MATCHES "thread")
  allot_hostile(largewalk LIBS allot-prefixed)
  allot_hostile(largewalk_pause LIBS allot-testhooks)
  allot_hostile(adoptwalk LIBS allot-testhooks)
  foreach(mode DEBUG SECURE)
    string(TOLOWER ${mode} lower)
    add_test(NAME hostile_largewalk_${lower} COMMAND hostile_largewalk 3)
    add_test(NAME hostile_largewalk_pause_${lower}
      COMMAND hostile_largewalk_pause 2)
    set_tests_properties(hostile_largewalk_${lower}
      hostile_largewalk_pause_${lower} PROPERTIES
      ENVIRONMENT "ALLOT_${mode}=1" TIMEOUT 120 LABELS "verify;prefixed")
    # a check while threads take over the heaps others left (adoptwalk.c)
    add_test(NAME hostile_adoptwalk_${lower} COMMAND hostile_adoptwalk 2)
    set_tests_properties(hostile_adoptwalk_${lower} PROPERTIES
      ENVIRONMENT "ALLOT_${mode}=1" TIMEOUT 120 LABELS "verify;prefixed")
  endforeach()
endif()

# Fork while a given lock of allot's is held (the test hooks hold it): the
# child must get it free. forklocks finds a lock left out of the fork
# handlers only when a fork lands while it is held, which for the locks held
# a few instructions at a time it rarely does (docs/testing.md).
if(NOT ALLOT_SANITIZE MATCHES "address|thread")
  allot_hostile(forkheld LIBS allot-testhooks)
  foreach(lock spare set zero seg_list large heaps brk)
    add_test(NAME hostile_forkheld_${lock} COMMAND hostile_forkheld ${lock})
    set_tests_properties(hostile_forkheld_${lock} PROPERTIES TIMEOUT 60
      LABELS "verify;prefixed")
  endforeach()
  set_tests_properties(hostile_forkheld_brk PROPERTIES
    ENVIRONMENT ALLOT_USE_BRK=1)
endif()

# The standard names through liballot.so: not under a sanitizer that owns
# malloc.
if(NOT ALLOT_SANITIZE MATCHES "address|thread")
  foreach(t aslimit forklocks threads signals)
    allot_hostile(${t} LIBS allot)
    string(TOUPPER ${t} upper)
    add_test(NAME hostile_${t} COMMAND hostile_${t} ${ALLOT_${upper}_ARGS})
    set_tests_properties(hostile_${t} PROPERTIES TIMEOUT 120 LABELS verify)
  endforeach()

  # Checked modes (docs/security.md): fork while other threads are in the
  # middle of making and freeing blocks, the child's heap check must not
  # take a half-made block for damage; thousands of exiting threads must not
  # keep their quarantines, guard pages or pages.
  allot_hostile(forkcheck LIBS allot)
  foreach(mode DEBUG SECURE)
    string(TOLOWER ${mode} lower)
    add_test(NAME hostile_forkcheck_${lower}
      COMMAND hostile_forkcheck ${ALLOT_FORKCHECK_ARGS})
    add_test(NAME hostile_threads_${lower} COMMAND hostile_threads)
    set_tests_properties(hostile_forkcheck_${lower} hostile_threads_${lower}
      PROPERTIES ENVIRONMENT "ALLOT_${mode}=1" TIMEOUT 120 LABELS verify)
  endforeach()

  # a library that allocates, loaded and unloaded by a program using allot
  add_library(hostile_dl MODULE ${ALLOT_VERIFY_DIR}/hostile/dlib.c)
  target_compile_options(hostile_dl PRIVATE ${ALLOT_WARNINGS})
  target_link_libraries(hostile_dl PRIVATE Threads::Threads)
  allot_hostile(dlopen LIBS allot)
  add_test(NAME hostile_dlopen
    COMMAND hostile_dlopen lib $<TARGET_FILE:hostile_dl>)
  # liballot.so itself loaded and unloaded by a program that does not use it
  add_executable(hostile_dlopen_self ${ALLOT_VERIFY_DIR}/hostile/dlopen.c)
  target_compile_options(hostile_dlopen_self PRIVATE ${ALLOT_WARNINGS})
  target_link_libraries(hostile_dlopen_self PRIVATE Threads::Threads
    ${CMAKE_DL_LIBS})
  add_test(NAME hostile_dlopen_self
    COMMAND hostile_dlopen_self allot $<TARGET_FILE:allot>)
  set_tests_properties(hostile_dlopen hostile_dlopen_self PROPERTIES
    TIMEOUT 120 LABELS verify)

  # the soak workload (scripts/soak.sh runs it for hours): a short run here
  allot_hostile(soak LIBS allot)
  add_test(NAME soak_smoke COMMAND hostile_soak 4 1 3 64)
  set_tests_properties(soak_smoke PROPERTIES TIMEOUT 120 LABELS verify)
endif()

# ---- fuzzing (test/fuzz/fuzz_ops.c) ------------------------------------------
# The seed corpus replayed by fuzz_ops built as a plain program: any compiler,
# any configuration (through the prefixed API, so also under ASan and TSan).
add_executable(fuzz_replay ${ALLOT_VERIFY_DIR}/fuzz/fuzz_ops.c)
target_include_directories(fuzz_replay PRIVATE ${PROJECT_SOURCE_DIR}/include)
target_compile_options(fuzz_replay PRIVATE ${ALLOT_WARNINGS})
target_compile_definitions(fuzz_replay PRIVATE FUZZ_STANDALONE _GNU_SOURCE)
target_link_libraries(fuzz_replay PRIVATE allot-prefixed Threads::Threads)
file(GLOB ALLOT_FUZZ_SEEDS ${ALLOT_VERIFY_DIR}/fuzz/corpus/*)
add_test(NAME fuzz_corpus COMMAND fuzz_replay ${ALLOT_FUZZ_SEEDS})
set_tests_properties(fuzz_corpus PROPERTIES TIMEOUT 120
  LABELS "verify;prefixed")

# The libFuzzer target needs clang's -fsanitize=fuzzer (Debian:
# libclang-rt-14-dev), whatever compiles the rest: it is built by a custom
# command straight from the allot sources (prefixed, ALLOT_OVERRIDE=0) with
# UBSan, so the fast paths are what gets fuzzed (under ASan allot turns to its
# checked mode: scripts/fuzz.sh runs that configuration too).
find_program(ALLOT_CLANG NAMES clang clang-16 clang-15 clang-14)
if(CMAKE_CROSSCOMPILING)
  # the host's clang would build a fuzzer for the host, not the target
  set(ALLOT_HAVE_LIBFUZZER OFF)
endif()
if(ALLOT_CLANG AND NOT DEFINED ALLOT_HAVE_LIBFUZZER)
  set(probe_dir ${CMAKE_CURRENT_BINARY_DIR}/fuzz-probe)
  file(MAKE_DIRECTORY ${probe_dir})
  file(WRITE ${probe_dir}/probe.c
    "#include <stddef.h>\n#include <stdint.h>\n"
    "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) "
    "{ (void)d; (void)n; return 0; }\n")
  execute_process(COMMAND ${ALLOT_CLANG} -fsanitize=fuzzer,undefined
    ${probe_dir}/probe.c -o ${probe_dir}/probe
    RESULT_VARIABLE probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(probe_rc EQUAL 0)
    set(ALLOT_HAVE_LIBFUZZER ON CACHE INTERNAL "clang can link libFuzzer")
  else()
    set(ALLOT_HAVE_LIBFUZZER OFF CACHE INTERNAL "clang can link libFuzzer")
  endif()
endif()
# (Under ALLOT_SANITIZE the bounded run would repeat the default build's.)
if(ALLOT_HAVE_LIBFUZZER AND NOT ALLOT_SANITIZE)
  set(fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz_ops)
  file(GLOB fuzz_headers ${PROJECT_SOURCE_DIR}/src/*.h
    ${PROJECT_SOURCE_DIR}/include/*.h)
  add_custom_command(OUTPUT ${fuzz_bin}
    COMMAND ${ALLOT_CLANG} -O1 -g -fsanitize=fuzzer,undefined
      -fno-sanitize-recover=all -DALLOT_OVERRIDE=0 -D_GNU_SOURCE
      -ftls-model=initial-exec -I${PROJECT_SOURCE_DIR}/include
      -I${PROJECT_SOURCE_DIR}/src ${ALLOT_VERIFY_C_SOURCES}
      ${ALLOT_VERIFY_DIR}/fuzz/fuzz_ops.c -o ${fuzz_bin} -lpthread
    DEPENDS ${ALLOT_VERIFY_C_SOURCES} ${ALLOT_VERIFY_DIR}/fuzz/fuzz_ops.c
      ${fuzz_headers}
    COMMENT "Building the libFuzzer target fuzz_ops with clang")
  add_custom_target(fuzz_ops ALL DEPENDS ${fuzz_bin})
  # A bounded run: new inputs go to a scratch directory, never the corpus;
  # a crashing input is saved as fuzz-crash-* in the build's test directory.
  add_test(NAME fuzz_ops_bounded
    COMMAND sh -c "rm -rf fuzz-work && mkdir fuzz-work && exec \"$0\" -runs=20000 -max_total_time=20 -timeout=60 -print_final_stats=1 -artifact_prefix=fuzz- fuzz-work \"$1\""
      ${fuzz_bin} ${ALLOT_VERIFY_DIR}/fuzz/corpus
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(fuzz_ops_bounded PROPERTIES TIMEOUT 180
    LABELS "verify;prefixed")
elseif(NOT ALLOT_HAVE_LIBFUZZER)
  message(STATUS "fuzz_ops: no clang with libFuzzer, bounded fuzz run skipped")
endif()

# ---- real programs beyond test/real_programs.sh -----------------------------
if(NOT ALLOT_SANITIZE MATCHES "address|thread")
  foreach(prog python redis)
    add_test(NAME real_more_${prog}
      COMMAND ${ALLOT_VERIFY_DIR}/real_more.sh $<TARGET_FILE:allot> ${prog})
    set_tests_properties(real_more_${prog} PROPERTIES TIMEOUT 300
      SKIP_RETURN_CODE 77 LABELS "verify;real")
  endforeach()
endif()
