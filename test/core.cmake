# core.cmake: the core test suite -- allot as a complete, thread-safe,
# drop-in malloc. Conformance of every entry point (through the standard
# names and, separately, the allot_* names), size-class edges, multi-thread
# stress, fork, allocation before main and at exit, and real programs run
# with allot preloaded. All tests carry the label "core".
#
# Every test program also builds against the system malloc, to check the test
# itself: compile it alone with the flags below, without TEST_ALLOT (and, for
# conformance.c, with -DGLIBC_REFERENCE to skip the allot-only checks).

# The compiler must not treat the allocation functions as builtins: it would
# fold or drop calls whose results the tests inspect (clang, for one, deletes
# an unused malloc and then assumes it succeeded).
set(ALLOT_CORE_TEST_FLAGS -Wall -Wextra -Werror -fno-builtin-malloc
  -fno-builtin-calloc -fno-builtin-realloc -fno-builtin-free
  -fno-builtin-aligned_alloc -fno-builtin-posix_memalign
  -fno-builtin-memalign -fno-builtin-valloc -fno-builtin-pvalloc
  -fno-builtin-reallocarray -fno-builtin-strdup)

# allot_core_test(<target> <source> [USE_PREFIX]): an executable linked
# against liballot.so (which replaces malloc), or with USE_PREFIX against
# allot-prefixed, calling the allot_* names.
function(allot_core_test target source)
  add_executable(${target} ${CMAKE_CURRENT_LIST_DIR}/${source})
  target_compile_options(${target} PRIVATE ${ALLOT_CORE_TEST_FLAGS})
  if("USE_PREFIX" IN_LIST ARGN)
    target_link_libraries(${target} PRIVATE allot-prefixed Threads::Threads)
    target_compile_definitions(${target} PRIVATE USE_PREFIX=1 TEST_ALLOT=1)
  else()
    target_link_libraries(${target} PRIVATE allot Threads::Threads)
    target_compile_definitions(${target} PRIVATE TEST_ALLOT=1)
  endif()
endfunction()

# allot_core_add(<name> <timeout> <command...>)
function(allot_core_add name timeout)
  add_test(NAME ${name} COMMAND ${ARGN})
  set_tests_properties(${name} PROPERTIES TIMEOUT ${timeout} LABELS core)
endfunction()

# Through the allot_* names: these also run in sanitizer builds (under
# thread, the stress runs check allot's cross-thread paths for races).
allot_core_test(core_conformance_prefixed conformance.c USE_PREFIX)
allot_core_test(core_stress_prefixed stress.c USE_PREFIX)
allot_core_add(core.conformance_prefixed 60 core_conformance_prefixed)
allot_core_add(core.stress.rings_prefixed 120 core_stress_prefixed rings 8
  50000)
allot_core_add(core.stress.churn_prefixed 120 core_stress_prefixed churn 512)

# The size-class tables follow class_size, and the classes their rules
# (scripts/classes.py).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_FOUND)
  allot_core_add(core.class_tables 60 ${Python3_EXECUTABLE}
    ${PROJECT_SOURCE_DIR}/scripts/classes.py --check
    ${PROJECT_SOURCE_DIR}/src/page.c)
endif()

# Under address and thread the sanitizer owns malloc: nothing that replaces
# it can run there.
if(NOT ALLOT_SANITIZE MATCHES "^(address|thread)$")
  allot_core_test(core_conformance conformance.c)
  allot_core_test(core_unit_sizes unit_sizes.c)
  allot_core_test(core_stress stress.c)
  allot_core_test(core_fork fork.c)
  allot_core_test(core_early early.c)
  allot_core_test(core_fork_lazy fork_lazy.c)
  # its __register_atfork must be the one liballot.so's calls reach
  target_link_options(core_fork_lazy PRIVATE -rdynamic)
  target_link_libraries(core_fork_lazy PRIVATE ${CMAKE_DL_LIBS})

  allot_core_add(core.conformance 60 core_conformance)
  allot_core_add(core.unit_sizes 60 core_unit_sizes)
  allot_core_add(core.stress.rings 120 core_stress rings 8 400000)
  allot_core_add(core.stress.rings16 120 core_stress rings 16 100000)
  allot_core_add(core.stress.churn 120 core_stress churn 2048)
  allot_core_add(core.fork 120 core_fork)
  allot_core_add(core.fork_lazy 120 core_fork_lazy)
  allot_core_add(core.fork_lazy_single 120 core_fork_lazy single)
  set_tests_properties(core.fork_lazy_single PROPERTIES
    ENVIRONMENT ALLOT_PURGE_THREAD=0)
  allot_core_add(core.early.exit 60 core_early exit)
  allot_core_add(core.early.pthread_exit 60 core_early pthread-exit)

  # Real programs with allot preloaded, compared with the system allocator.
  # Exit code 77 (program not installed) is a skip.
  foreach(program python git sqlite gcc)
    set(name core.real.${program})
    allot_core_add(${name} 180 bash ${CMAKE_CURRENT_LIST_DIR}/real_programs.sh
      ${program} $<TARGET_FILE:allot>
      ${CMAKE_CURRENT_BINARY_DIR}/real-${program})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77
      LABELS "core;real")
  endforeach()
endif()
