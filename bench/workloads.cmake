# workloads.cmake: the benchmark suite's own workloads (one C program each,
# built into <build>/bench/) and the data files of the real-program workloads
# (python3 script, SQL script), copied beside them so the `allot bench`
# runner finds everything in one directory.
#
# The workloads link nothing of allot: the allocator under test is chosen at
# run time with LD_PRELOAD, so the same binary serves allot and every peer.

# spawn is not a workload: it is the runner's process launcher (it measures
# a command's peak RSS, which a child of the Python runner cannot); nor is
# peakrss, which counts a program's peak RSS exactly, for
# scripts/peakrss.sh (docs/memory.md).
set(ALLOT_BENCH_WORKLOADS
  micro bignum logicmin larson prodcons cache-scratch cache-thrash pareto
  gens large realloc aligned threadchurn frag spawn peakrss)
set(ALLOT_BENCH_DATA pybench.py sqlite.sql)

find_package(Threads REQUIRED)
set(ALLOT_BENCH_TARGETS "")
foreach(w ${ALLOT_BENCH_WORKLOADS})
  add_executable(bench-${w} ${CMAKE_CURRENT_LIST_DIR}/${w}.c)
  set_target_properties(bench-${w} PROPERTIES
    OUTPUT_NAME ${w}
    RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  # -O2 whatever the build type: a Debug build of the project should still
  # time the allocator, not unoptimised workload loops.
  target_compile_options(bench-${w} PRIVATE ${ALLOT_WARNINGS} -O2)
  target_link_libraries(bench-${w} PRIVATE Threads::Threads m)
  list(APPEND ALLOT_BENCH_TARGETS bench-${w})
endforeach()

foreach(f ${ALLOT_BENCH_DATA})
  configure_file(${CMAKE_CURRENT_LIST_DIR}/${f} ${CMAKE_CURRENT_BINARY_DIR}/${f}
    COPYONLY)
endforeach()

# Where the runner looks for workloads: set here so tools/ and test/ agree.
set(ALLOT_BENCH_BUILD_DIR ${CMAKE_CURRENT_BINARY_DIR}
  CACHE INTERNAL "directory of the built benchmark workloads")

# Installed beside the `allot` command's other files, so an installed
# `allot bench` runs the suite too.
install(TARGETS ${ALLOT_BENCH_TARGETS}
  RUNTIME DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/allot/bench)
list(TRANSFORM ALLOT_BENCH_DATA PREPEND ${CMAKE_CURRENT_LIST_DIR}/
  OUTPUT_VARIABLE ALLOT_BENCH_DATA_FILES)
install(FILES ${ALLOT_BENCH_DATA_FILES}
  DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/allot/bench)
