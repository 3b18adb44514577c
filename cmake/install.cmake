# install.cmake: what `cmake --install` puts where — the shared and static
# libraries, the header, the pkg-config file allot.pc, the CMake package
# (find_package(allot): allot::allot, allot::allot-static, and
# allot::allot-cxx / allot::allot-prefixed when built), the allot command
# and the man pages.
include(CMakePackageConfigHelpers)

set(ALLOT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/allot)

set(ALLOT_INSTALL_TARGETS allot allot-static)
foreach(optional allot-cxx allot-prefixed)
  if(TARGET ${optional})
    list(APPEND ALLOT_INSTALL_TARGETS ${optional})
  endif()
endforeach()
if(TARGET allot-prefixed)
  # Its build tree include path points into src/; installed, it needs the
  # header directory like the others.
  target_include_directories(allot-prefixed INTERFACE
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
endif()

install(TARGETS ${ALLOT_INSTALL_TARGETS} EXPORT allot-targets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/include/allot.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# ---- CMake package --------------------------------------------------------
install(EXPORT allot-targets NAMESPACE allot:: FILE allot-targets.cmake
  DESTINATION ${ALLOT_CMAKE_DIR})
configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/allot-config.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/allot-config.cmake
  INSTALL_DESTINATION ${ALLOT_CMAKE_DIR})
# 0.x releases: only the same minor version is compatible.
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/allot-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/allot-config.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/allot-config-version.cmake
  DESTINATION ${ALLOT_CMAKE_DIR})

# ---- pkg-config -----------------------------------------------------------
# Written at install time, so `cmake --install --prefix DIR` gets DIR in it,
# not the prefix of the configure step.
install(CODE "
  set(ALLOT_PC_TEMPLATE \"${CMAKE_CURRENT_LIST_DIR}/allot.pc.in\")
  set(ALLOT_PC_OUTPUT \"${CMAKE_CURRENT_BINARY_DIR}/allot.pc\")
  set(ALLOT_PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(ALLOT_PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(ALLOT_PC_VERSION \"${PROJECT_VERSION}\")
  include(\"${CMAKE_CURRENT_LIST_DIR}/pkgconfig.cmake\")")
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/allot.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# ---- the command and the manual ---------------------------------------------
# The script is configured for installation: its version filled in, and no
# fixed library path, so that it finds liballot.so relative to itself
# (bin/../lib) wherever the prefix ends up. A tools/ build that installs the
# script itself sets the global property ALLOT_TOOL_INSTALLED.
get_property(ALLOT_TOOL_INSTALLED GLOBAL PROPERTY ALLOT_TOOL_INSTALLED)
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tools/allot AND NOT ALLOT_TOOL_INSTALLED)
  set(ALLOT_TOOL_LIB "")
  set(ALLOT_TOOL_BENCH_DIR "")
  set(ALLOT_TOOL_VERSION ${PROJECT_VERSION})
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/tools/allot
    ${CMAKE_CURRENT_BINARY_DIR}/install/allot @ONLY)
  install(PROGRAMS ${CMAKE_CURRENT_BINARY_DIR}/install/allot
    DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/man/allot.1
  DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/man/allot.3
  DESTINATION ${CMAKE_INSTALL_MANDIR}/man3)
