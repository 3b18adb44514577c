# cxx.cmake: where the C++ operators (src/new.cpp) go.
#
# The shared library always carries them: preloading or linking liballot.so
# replaces operator new/delete along with malloc. The static library
# liballot.a does not: an archive member is pulled in by any undefined
# symbol it defines, so operators inside liballot.a would silently replace
# a C++ program's own operator new (and collide with a partial replacement).
# A program linked with liballot.a still gets allot memory from libstdc++'s
# operators, which call malloc. To have allot's operators themselves, a
# program opts in by linking liballot-cxx.a (target allot-cxx, installed as
# allot::allot-cxx), which also links liballot.a.
#
# Include this after the targets allot and allot-static are defined, with
# src/new.cpp not in the sources they share.
add_library(allot-cxx-objects OBJECT src/new.cpp)
target_include_directories(allot-cxx-objects PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/include)
# Exceptions and RTTI stay on: operator new throws std::bad_alloc.
target_compile_options(allot-cxx-objects PRIVATE ${ALLOT_WARNINGS}
  -fvisibility=hidden -fno-plt -fno-semantic-interposition)
target_compile_definitions(allot-cxx-objects PRIVATE ALLOT_OVERRIDE=1)
set_target_properties(allot-cxx-objects PROPERTIES
  POSITION_INDEPENDENT_CODE ON CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)

# The shared library takes the operators with their C++ runtime references
# made weak (cmake/weaken.sh) and is linked as C, so it does not pull
# libstdc++ into C programs; C++ programs bring their runtime themselves.
set(ALLOT_NEW_WEAK ${CMAKE_CURRENT_BINARY_DIR}/allot-new-weak.o)
add_custom_command(OUTPUT ${ALLOT_NEW_WEAK}
  COMMAND ${CMAKE_COMMAND} -E env NM=${CMAKE_NM} OBJCOPY=${CMAKE_OBJCOPY}
          sh ${CMAKE_CURRENT_SOURCE_DIR}/cmake/weaken.sh
          $<TARGET_OBJECTS:allot-cxx-objects> ${ALLOT_NEW_WEAK}
  DEPENDS allot-cxx-objects $<TARGET_OBJECTS:allot-cxx-objects>
          ${CMAKE_CURRENT_SOURCE_DIR}/cmake/weaken.sh
  COMMENT "Weakening the C++ runtime references of the operators"
  VERBATIM)
set_source_files_properties(${ALLOT_NEW_WEAK} PROPERTIES
  EXTERNAL_OBJECT TRUE GENERATED TRUE)
target_sources(allot PRIVATE ${ALLOT_NEW_WEAK})
set_target_properties(allot PROPERTIES LINKER_LANGUAGE C)

add_library(allot-cxx STATIC $<TARGET_OBJECTS:allot-cxx-objects>)
set_target_properties(allot-cxx PROPERTIES LINKER_LANGUAGE CXX)
target_link_libraries(allot-cxx INTERFACE allot-static)
target_include_directories(allot-cxx PUBLIC
  $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
