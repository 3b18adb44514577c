# bench.cmake: tests of the `allot` command (tools/allot) and its `bench`
# subcommand: help, argument errors (clear message, exit status 2), the
# workload list, a tiny benchmark run that must write its files with one row
# per workload, a deliberately broken allocator that must be reported as
# failing, a program given after --, the exact peaks of --exact-rss
# (bench/peakrss), and `allot run`. The driver is
# bench/test_allot_bench.py; each test takes a few seconds at most.

find_package(Python3 COMPONENTS Interpreter)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "python3 not found: the tests of the allot command are off")
  return()
endif()
if(ALLOT_SANITIZE)
  # A sanitizer build's liballot.so cannot be LD_PRELOADed into programs.
  return()
endif()

set(_bench_src ${CMAKE_CURRENT_LIST_DIR}/../bench)
set(_bench_driver ${Python3_EXECUTABLE} ${_bench_src}/test_allot_bench.py
  --allot ${CMAKE_CURRENT_LIST_DIR}/../tools/allot)

# An allocator that works but breaks malloc's 16-byte alignment: the suite
# has to fail it rather than time it.
add_library(bench-broken-malloc SHARED ${_bench_src}/broken_malloc.c)
target_compile_options(bench-broken-malloc PRIVATE ${ALLOT_WARNINGS})
set_target_properties(bench-broken-malloc PROPERTIES
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})

set(_bench_args --broken $<TARGET_FILE:bench-broken-malloc>)
if(TARGET allot)
  list(APPEND _bench_args --lib $<TARGET_FILE:allot>)
endif()
if(ALLOT_BUILD_BENCH OR NOT DEFINED ALLOT_BUILD_BENCH)
  list(APPEND _bench_args --bench-dir ${CMAKE_BINARY_DIR}/bench)
endif()

foreach(t help badargs list quick broken program exact run)
  add_test(NAME allot-bench-${t}
    COMMAND ${_bench_driver} ${_bench_args} ${t})
  set_tests_properties(allot-bench-${t} PROPERTIES TIMEOUT 120
    LABELS bench SKIP_RETURN_CODE 77)
endforeach()
