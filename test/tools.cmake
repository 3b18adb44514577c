# tools.cmake: tests of the `allot` command's subcommands other than bench
# (test/bench.cmake has those): run (options, --stats summary), doctor
# (interposition of every entry point, a library that hijacks two of them,
# a program with its own malloc), record and replay (round trips whose
# replay reproduces allot's recorded peak in use within 1 %, one thread and
# several, C++ operators, traces recorded under glibc, --vs), map (at exit,
# on a signal, from a running process, --render) and every subcommand's
# argument errors. The driver is test/test_tools.py, one group per test; the
# whole set takes well under a minute.

find_package(Python3 COMPONENTS Interpreter)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "python3 not found: the tests of the allot command are off")
  return()
endif()
if(ALLOT_SANITIZE OR NOT TARGET liballot-inspect)
  # A sanitizer build's libraries cannot be preloaded into programs, and it
  # builds no helpers (tools/CMakeLists.txt).
  return()
endif()

# Test programs: plain C and C++ on the standard API, run under LD_PRELOAD.
# Frame pointers and no allocation elision, so what they call is what runs.
add_executable(tools_workload ${CMAKE_CURRENT_LIST_DIR}/test_tools_workload.c)
target_compile_options(tools_workload PRIVATE ${ALLOT_WARNINGS} -O1 -g
  -fno-omit-frame-pointer -fno-builtin-malloc -fno-builtin-calloc
  -fno-builtin-realloc -fno-builtin-free)
target_link_libraries(tools_workload PRIVATE Threads::Threads)

add_executable(tools_cxx ${CMAKE_CURRENT_LIST_DIR}/test_tools_cxx.cpp)
target_compile_options(tools_cxx PRIVATE -Wall -Wextra -Werror -O1
  -fsized-deallocation $<$<CXX_COMPILER_ID:GNU>:-fno-allocation-dce>)

add_library(tools_hijack SHARED ${CMAKE_CURRENT_LIST_DIR}/test_tools_hijack.c)
target_compile_options(tools_hijack PRIVATE ${ALLOT_WARNINGS})
set_target_properties(tools_hijack PROPERTIES
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})

add_executable(tools_ownmalloc ${CMAKE_CURRENT_LIST_DIR}/test_tools_ownmalloc.c)
target_compile_options(tools_ownmalloc PRIVATE ${ALLOT_WARNINGS}
  -fno-builtin)

set(_tools_driver ${Python3_EXECUTABLE}
  ${CMAKE_CURRENT_LIST_DIR}/test_tools.py
  --allot ${CMAKE_BINARY_DIR}/allot
  --lib $<TARGET_FILE:allot>
  --workload $<TARGET_FILE:tools_workload>
  --cxx $<TARGET_FILE:tools_cxx>
  --hijack $<TARGET_FILE:tools_hijack>
  --ownmalloc $<TARGET_FILE:tools_ownmalloc>)

foreach(group errors run doctor record replay map)
  add_test(NAME tools.${group} COMMAND ${_tools_driver} ${group})
  set_tests_properties(tools.${group} PROPERTIES TIMEOUT 120 LABELS tools
    SKIP_RETURN_CODE 77)
endforeach()

# allot prof (test/test_prof.py): a program whose sites hold known live
# sizes (test_prof_sites.c); the heaviest at the peak must come out on top,
# a site freed before exit must be absent at exit, estimates near the truth
# at a fine rate; sampled blocks keep malloc's contract; argument errors.
# No tail calls, so each site keeps its own frame.
add_executable(prof_sites ${CMAKE_CURRENT_LIST_DIR}/test_prof_sites.c)
target_compile_options(prof_sites PRIVATE ${ALLOT_WARNINGS} -O1 -g
  -fno-omit-frame-pointer -fno-optimize-sibling-calls -fno-builtin)
target_link_libraries(prof_sites PRIVATE Threads::Threads ${CMAKE_DL_LIBS})
foreach(group errors profile)
  add_test(NAME tools.prof.${group} COMMAND ${Python3_EXECUTABLE}
    ${CMAKE_CURRENT_LIST_DIR}/test_prof.py --allot ${CMAKE_BINARY_DIR}/allot
    --lib $<TARGET_FILE:allot> --sites $<TARGET_FILE:prof_sites> ${group})
  set_tests_properties(tools.prof.${group} PROPERTIES TIMEOUT 120
    LABELS tools)
endforeach()
