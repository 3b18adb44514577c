# package.cmake: how programs get allot — the C++ operators (linked,
# preloaded, statically opted in), the static override of malloc (in a
# dynamically linked and in a fully static program), and the installed
# package (pkg-config and find_package, see package_test.sh).

# Under a sanitizer the sanitizer owns malloc: nothing here can replace it.
if(ALLOT_SANITIZE)
  return()
endif()

include(CheckCSourceCompiles)
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_LINK_OPTIONS -static)
check_c_source_compiles("int main(void) { return 0; }" ALLOT_HAVE_STATIC_LIBC)
check_cxx_source_compiles("#include <new>
int main() { delete new int; return 0; }" ALLOT_HAVE_STATIC_LIBSTDCXX)
unset(CMAKE_REQUIRED_LINK_OPTIONS)
if(NOT ALLOT_HAVE_STATIC_LIBC)
  message(WARNING "no static C library (libc.a): fully static tests skipped")
endif()

# One C++ test program (test_cxx_new.cpp), built once per way of getting the
# operators; its argument says which definition it must find.
function(allot_cxx_new_test name mode)
  cmake_parse_arguments(arg "DIRECT" "PRELOAD" "LIBS;LINK_OPTIONS" ${ARGN})
  add_executable(${name} test_cxx_new.cpp)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/include)
  target_compile_options(${name} PRIVATE ${ALLOT_WARNINGS}
    -fsized-deallocation)
  target_link_libraries(${name} PRIVATE ${arg_LIBS} Threads::Threads
    ${CMAKE_DL_LIBS})
  if(arg_LINK_OPTIONS)
    target_link_options(${name} PRIVATE ${arg_LINK_OPTIONS})
  endif()
  if(arg_DIRECT)
    target_compile_definitions(${name} PRIVATE ALLOT_TEST_DIRECT=1)
  endif()
  string(REPLACE "test_" "" test_name ${name})
  add_test(NAME ${test_name} COMMAND ${name} ${mode})
  if(arg_PRELOAD)
    set_tests_properties(${test_name} PROPERTIES
      ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:${arg_PRELOAD}>")
  endif()
endfunction()

allot_cxx_new_test(test_cxx_new shared DIRECT LIBS allot)
allot_cxx_new_test(test_cxx_new_preload preload PRELOAD allot)
if(TARGET allot-cxx)
  allot_cxx_new_test(test_cxx_new_static static DIRECT LIBS allot-cxx)
  allot_cxx_new_test(test_cxx_new_static_default static-default DIRECT
    LIBS allot-static)
  if(ALLOT_HAVE_STATIC_LIBSTDCXX)
    allot_cxx_new_test(test_cxx_new_static_full static-full DIRECT
      LIBS allot-cxx LINK_OPTIONS -static)
  endif()
else()
  # Without the separate opt-in library, liballot.a carries the operators.
  allot_cxx_new_test(test_cxx_new_static static DIRECT LIBS allot-static)
endif()

# mallinfo2() counts what every C++ form allocates (a test of its own: it
# depends on allot's mallinfo2, not on the operators).
add_executable(test_cxx_mallinfo test_cxx_mallinfo.cpp)
target_compile_options(test_cxx_mallinfo PRIVATE ${ALLOT_WARNINGS}
  -fsized-deallocation)
target_link_libraries(test_cxx_mallinfo PRIVATE ${CMAKE_DL_LIBS})
add_test(NAME cxx_mallinfo_preload COMMAND test_cxx_mallinfo)
# The test compares uordblks before and after exact amounts; the purge
# thread, should it start between the two readings, allocates its own TLS
# (about 320 bytes) and blurs the difference, so it stays off here.
set_tests_properties(cxx_mallinfo_preload PROPERTIES
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:allot>;ALLOT_PURGE_THREAD=0")

# Linking liballot.a replaces malloc in the program.
add_executable(test_static_override test_static_override.c)
target_compile_options(test_static_override PRIVATE ${ALLOT_WARNINGS})
target_link_libraries(test_static_override PRIVATE allot-static)
add_test(NAME static_override COMMAND test_static_override)
if(ALLOT_HAVE_STATIC_LIBC)
  add_executable(test_static_override_full test_static_override.c)
  target_compile_options(test_static_override_full PRIVATE ${ALLOT_WARNINGS})
  target_link_libraries(test_static_override_full PRIVATE allot-static)
  target_link_options(test_static_override_full PRIVATE -static)
  add_test(NAME static_override_full COMMAND test_static_override_full)
endif()

# Install into a temporary prefix and build the examples against it.
find_program(ALLOT_PKG_CONFIG NAMES pkg-config pkgconf)
if(NOT ALLOT_PKG_CONFIG)
  set(ALLOT_PKG_CONFIG pkg-config)
endif()
add_test(NAME package_install
  COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/package_test.sh
    ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR} $<CONFIG>)
set_tests_properties(package_install PROPERTIES
  ENVIRONMENT "CMAKE=${CMAKE_COMMAND};CC=${CMAKE_C_COMPILER};CXX=${CMAKE_CXX_COMPILER};PKG_CONFIG=${ALLOT_PKG_CONFIG}"
  SKIP_RETURN_CODE 77 TIMEOUT 300)
