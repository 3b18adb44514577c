# pkgconfig.cmake: run at install time (see install.cmake) to write allot.pc
# for the prefix actually installed to. Inputs: ALLOT_PC_TEMPLATE,
# ALLOT_PC_OUTPUT, ALLOT_PC_LIBDIR, ALLOT_PC_INCLUDEDIR (relative to the
# prefix, or absolute), ALLOT_PC_VERSION; CMAKE_INSTALL_PREFIX is the prefix.
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${ALLOT_PC_${dir}}")
    set(ALLOT_PC_${dir}_FULL "${ALLOT_PC_${dir}}")
  else()
    set(ALLOT_PC_${dir}_FULL "\${prefix}/${ALLOT_PC_${dir}}")
  endif()
endforeach()
set(ALLOT_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
file(READ "${ALLOT_PC_TEMPLATE}" template)
string(CONFIGURE "${template}" contents @ONLY)
file(WRITE "${ALLOT_PC_OUTPUT}" "${contents}")
