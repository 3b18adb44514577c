# Chunk heap (src/chunk.c) on its own, compiled straight into the test.
# `test_chunk --timing` prints a longer malloc/free cycle-count report.
add_executable(test_chunk ${CMAKE_CURRENT_LIST_DIR}/test_chunk.c
                          ${CMAKE_SOURCE_DIR}/src/chunk.c)
target_include_directories(test_chunk PRIVATE ${CMAKE_SOURCE_DIR}/src)
target_compile_options(test_chunk PRIVATE -Wall -Wextra -Werror)
add_test(NAME chunk COMMAND test_chunk)
set_tests_properties(chunk PROPERTIES TIMEOUT 120)
