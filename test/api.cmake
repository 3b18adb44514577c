# api.cmake: the allot.h API beyond malloc (issue 3) -- first-class heaps,
# heaps in a caller's buffer, the walk, the check, statistics, options, and
# glibc's mallinfo2/malloc_info/malloc_stats/mallopt/malloc_trim; plus the
# example programs of docs/api.md (examples/api/), built and run.
# Labels: "api", and "prefixed" for the tests that use only the allot_*
# names (meaningful in sanitizer builds too).
#
# Longer timing of heaps in a caller's buffer (the figures in docs/api.md):
#   build/test/test_api_fixed --timing

set(ALLOT_API_TEST_FLAGS ${ALLOT_WARNINGS} -fno-builtin-malloc
  -fno-builtin-calloc -fno-builtin-realloc -fno-builtin-free)

function(allot_api_test name)
  cmake_parse_arguments(arg "SHARED" "" "" ${ARGN})
  add_executable(${name} ${CMAKE_CURRENT_LIST_DIR}/${name}.c)
  target_compile_options(${name} PRIVATE ${ALLOT_API_TEST_FLAGS})
  target_compile_definitions(${name} PRIVATE _GNU_SOURCE)
  if(arg_SHARED)
    target_link_libraries(${name} PRIVATE allot Threads::Threads)
  else()
    target_link_libraries(${name} PRIVATE allot-prefixed Threads::Threads)
  endif()
endfunction()

# allot_api_add(<test name> <labels> <command...> [ENV <VAR=value>])
function(allot_api_add test labels)
  cmake_parse_arguments(arg "" "ENV" "" ${ARGN})
  add_test(NAME ${test} COMMAND ${arg_UNPARSED_ARGUMENTS})
  set_tests_properties(${test} PROPERTIES TIMEOUT 60 LABELS "${labels}"
    SKIP_RETURN_CODE 77)
  if(arg_ENV)
    set_tests_properties(${test} PROPERTIES ENVIRONMENT "${arg_ENV}")
  endif()
endfunction()

foreach(t heap walk check stats options fixed)
  allot_api_test(test_api_${t})
  allot_api_add(api.${t} "api;prefixed" test_api_${t})
endforeach()
# test_api_check corrupts a page descriptor, whose layout is internal
target_include_directories(test_api_check PRIVATE ${PROJECT_SOURCE_DIR}/src)

# The same through the checked path: statistics mode counts every call,
# debug and secure mode add trailers and a quarantine.
foreach(mode STATS DEBUG SECURE)
  string(TOLOWER ${mode} m)
  foreach(t heap walk)
    allot_api_add(api.${t}.${m} "api;prefixed" test_api_${t}
      ENV ALLOT_${mode}=1)
  endforeach()
endforeach()
allot_api_add(api.check.stats "api;prefixed" test_api_check ENV ALLOT_STATS=1)
allot_api_add(api.stats.stats "api;prefixed" test_api_stats ENV ALLOT_STATS=1)

# The JSON is valid JSON to a real parser.
find_program(ALLOT_PYTHON3 python3)
if(ALLOT_PYTHON3)
  add_test(NAME api.stats.json COMMAND sh -c
    "'$<TARGET_FILE:test_api_stats>' --json | '${ALLOT_PYTHON3}' -c 'import json, sys; d = json.load(sys.stdin); assert d[\"in_use\"] >= 1000 and d[\"reserved\"] > 0 and isinstance(d[\"classes\"], list), d'")
  set_tests_properties(api.stats.json PROPERTIES TIMEOUT 60
    LABELS "api;prefixed")
endif()

# glibc's names exist only where allot replaces malloc.
if(NOT ALLOT_SANITIZE)
  allot_api_test(test_api_mallinfo SHARED)
  allot_api_add(api.mallinfo api test_api_mallinfo)
endif()

# docs/api.md's example programs, one per capability.
foreach(ex heap fixed walk check stats options)
  add_executable(example_api_${ex} ${PROJECT_SOURCE_DIR}/examples/api/${ex}.c)
  target_compile_options(example_api_${ex} PRIVATE ${ALLOT_WARNINGS})
  target_link_libraries(example_api_${ex} PRIVATE allot-prefixed
    Threads::Threads)
  allot_api_add(api.example.${ex} "api;prefixed" example_api_${ex})
endforeach()
