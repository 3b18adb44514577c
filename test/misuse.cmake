# misuse.cmake: the misuse suite (test/misuse/, docs/security.md).
#
# One program, linked with liballot.so, runs each misuse case in its own
# child process in a given mode and names the outcome. The CTest entries run
# every case in each mode and fail when a case that docs/security.md claims
# is stopped (test/misuse/claims.txt) no longer is. `misuse --table` prints
# the table of docs/security.md.
add_executable(misuse ${CMAKE_CURRENT_LIST_DIR}/misuse/misuse.c
                      ${CMAKE_CURRENT_LIST_DIR}/misuse/misuse_cxx.cpp)
target_link_libraries(misuse PRIVATE allot Threads::Threads ${CMAKE_DL_LIBS})
target_compile_definitions(misuse PRIVATE _GNU_SOURCE)
# -O2 whatever the build type: the C++ cases rely on empty destructor loops
# being removed; the builtins are off so the misuse reaches allot as written.
target_compile_options(misuse PRIVATE -Wall -Wextra -Werror -O2
  -fno-builtin-malloc -fno-builtin-free -fno-builtin-calloc
  -fno-builtin-realloc $<$<COMPILE_LANGUAGE:CXX>:-ffinite-loops>
  $<$<COMPILE_LANGUAGE:CXX>:-fsized-deallocation>)
# exported symbols: the leak report names the allocating function
set_target_properties(misuse PROPERTIES LINKER_LANGUAGE CXX ENABLE_EXPORTS ON)

foreach(mode default secure debug)
  add_test(NAME misuse-${mode}
    COMMAND misuse --check ${mode} ${CMAKE_CURRENT_LIST_DIR}/misuse/claims.txt)
  set_tests_properties(misuse-${mode} PROPERTIES TIMEOUT 120)
endforeach()
add_test(NAME misuse-leak-report COMMAND misuse --leaks)
# ALLOT_LEAK_REPORT: `lost` lists only the sites of blocks definitely lost,
# and prints nothing for a process with none (/bin/true still has the C
# library's start-up blocks, reachable: printed under the default, `all`);
# `off` prints no report
add_test(NAME misuse-leak-report-lost COMMAND misuse --run leaks -)
set_tests_properties(misuse-leak-report-lost PROPERTIES
  ENVIRONMENT "ALLOT_DEBUG=1;ALLOT_LEAK_REPORT=lost"
  PASS_REGULAR_EXPRESSION "1234 bytes, definitely lost, allocated at"
  FAIL_REGULAR_EXPRESSION ", reachable, ")
add_test(NAME misuse-leak-report-off COMMAND misuse --run leaks -)
set_tests_properties(misuse-leak-report-off PROPERTIES
  ENVIRONMENT "ALLOT_DEBUG=1;ALLOT_LEAK_REPORT=off"
  FAIL_REGULAR_EXPRESSION "leak report")
# debug mode's sites taken by the profiler's unwinder (x86-64) and, with
# ALLOT_PROF_CHECK=1, by libgcc's as well: none may differ
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  add_test(NAME misuse-debug-sites-check COMMAND misuse --run leaks -)
  set_tests_properties(misuse-debug-sites-check PROPERTIES
    ENVIRONMENT "ALLOT_DEBUG=1;ALLOT_PROF_CHECK=1;ALLOT_LEAK_REPORT=off"
    PASS_REGULAR_EXPRESSION "allocation sites: 0 of [1-9]")
endif()
add_test(NAME misuse-leak-report-clean-lost COMMAND /bin/true)
set_tests_properties(misuse-leak-report-clean-lost PROPERTIES ENVIRONMENT
  "LD_PRELOAD=$<TARGET_FILE:allot>;ALLOT_DEBUG=1;ALLOT_LEAK_REPORT=lost"
  FAIL_REGULAR_EXPRESSION "allot:")
add_test(NAME misuse-leak-report-clean-all COMMAND /bin/true)
set_tests_properties(misuse-leak-report-clean-all PROPERTIES ENVIRONMENT
  "LD_PRELOAD=$<TARGET_FILE:allot>;ALLOT_DEBUG=1"
  PASS_REGULAR_EXPRESSION "allot: leak report: .* still reachable")

# Tools that watch memory themselves must see allot's blocks: memcheck through
# client requests (ALLOT_VALGRIND=ON; valgrind then runs with
# --soname-synonyms=somalloc=nonexistent so that it keeps allot's malloc
# rather than replacing it with its own), AddressSanitizer through poisoning
# in a sanitizer build of the prefixed library.
if(ALLOT_VALGRIND)
  find_program(ALLOT_VALGRIND_PROGRAM valgrind)
endif()
if(ALLOT_VALGRIND AND ALLOT_VALGRIND_PROGRAM)
  add_executable(misuse_tools ${CMAKE_CURRENT_LIST_DIR}/misuse/tools.c)
  target_link_libraries(misuse_tools PRIVATE allot)
  target_compile_options(misuse_tools PRIVATE -Wall -Wextra -Werror -O1 -g
    -fno-builtin-malloc -fno-builtin-free)
  foreach(case overflow:Invalid.read.of.size.1
               use-after-free:Invalid.read.of.size.1
               large-use-after-free:Invalid.read.of.size.1
               leak:777.bytes.in.1.blocks.are.definitely.lost
               clean:ERROR.SUMMARY:.0.errors)
    string(REPLACE ":" ";" parts ${case})
    list(GET parts 0 what)
    list(GET parts 1 expect)
    add_test(NAME misuse-valgrind-${what}
      COMMAND ${ALLOT_VALGRIND_PROGRAM} --soname-synonyms=somalloc=nonexistent
              --leak-check=full $<TARGET_FILE:misuse_tools> ${what})
    set_tests_properties(misuse-valgrind-${what} PROPERTIES
      PASS_REGULAR_EXPRESSION "${expect}" TIMEOUT 120)
  endforeach()
endif()
if(ALLOT_SANITIZE STREQUAL "address")
  add_executable(misuse_asan ${CMAKE_CURRENT_LIST_DIR}/misuse/tools.c)
  target_link_libraries(misuse_asan PRIVATE allot-prefixed)
  target_compile_definitions(misuse_asan PRIVATE ALLOT_PREFIXED=1)
  target_compile_options(misuse_asan PRIVATE -Wall -Wextra -Werror)
  foreach(case overflow:use-after-poison use-after-free:use-after-poison
               large-use-after-free:SEGV clean:clean.done)
    string(REPLACE ":" ";" parts ${case})
    list(GET parts 0 what)
    list(GET parts 1 expect)
    add_test(NAME misuse-asan-${what} COMMAND misuse_asan ${what})
    # ASan's report is the point: it must end the program with a status
    # (CTest counts a test killed by abort() as failed, whatever it printed),
    # and handle the fault (the ASan runtime also reads UBSAN_OPTIONS, where
    # scripts/sanitize.sh turns SEGV handling off for the misuse suite)
    set_tests_properties(misuse-asan-${what} PROPERTIES
      PASS_REGULAR_EXPRESSION "${expect}" TIMEOUT 60
      ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:handle_segv=1;UBSAN_OPTIONS=")
  endforeach()
endif()
