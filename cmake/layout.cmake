# layout.cmake: where liballot.so's code sits in the file.
#
# A program's code is resident by the 64 KiB window, not by the page: on a
# fault in a file mapping the kernel maps every page of the aligned 64 KiB
# around it that is in the page cache (fault-around). With the functions in
# source order, the few that malloc and free run are spread among the checked
# modes, statistics, introspection and profiling, so touching them made the
# whole 144 KiB of code resident in every process. Here the functions the
# default mode runs (cmake/hot-functions.txt) come first, with _init and
# _fini (which the loader runs) just before them, and the code starts on a
# 64 KiB boundary (max-page-size, which also has the loader align the
# library to 64 KiB): the first window holds all a program runs, 64 KiB
# resident, and the rest of the code stays on disk.
#
# The order is given to the linker as its own default script with two
# changes, the hot functions at the head of .text and .fini moved up beside
# .init; everything else, .text kept a single section (valgrind names only
# the functions of .text) included, is as the linker would have it. Each
# function is compiled into a section of its own (-ffunction-sections) for
# this. A linker that does not print its script (lld, mold) links the
# library in the default order. Include after the target allot is defined.

option(ALLOT_LAYOUT "Lay liballot.so's code out hot functions first" ON)
if(NOT ALLOT_LAYOUT)
  return()
endif()

set(_hot_list ${CMAKE_CURRENT_LIST_DIR}/hot-functions.txt)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_hot_list})

execute_process(
  COMMAND ${CMAKE_C_COMPILER} -shared -Wl,--verbose -x c /dev/null
          -o ${CMAKE_CURRENT_BINARY_DIR}/layout-probe.so
  OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc)
file(REMOVE ${CMAKE_CURRENT_BINARY_DIR}/layout-probe.so)
set(_rule "==================================================")
string(FIND "${_out}" "${_rule}\n" _begin)
string(FIND "${_out}" "\n${_rule}" _end REVERSE)
if(NOT _rc EQUAL 0 OR _begin EQUAL -1 OR _end LESS_EQUAL _begin)
  message(STATUS "liballot.so code layout: the linker prints no script, "
                 "default order")
  return()
endif()
string(LENGTH "${_rule}\n" _skip)
math(EXPR _begin "${_begin} + ${_skip}")
math(EXPR _len "${_end} - ${_begin} + 1")
string(SUBSTRING "${_out}" ${_begin} ${_len} _script)

# The hot code's input sections: what runs in every process besides the
# list (the C runtime's start-up code of the library, pthread_atfork from
# libc_nonshared.a), the C++ operators, and the constants the hot code reads
# (the size-class tables, jump tables, vector constants, the names of the
# ALLOT_* variables read at start-up: left in .rodata, one read would make
# .rodata and the unwind tables beside it resident, 32 KiB; other strings,
# fault messages and the checked modes' reports, stay there). Then all the
# code of the files the list names ("file page.c"). Then the list's
# functions in its order: each one's own section, its clones
# (name.constprop.0, name.part.0, ...) and, for constructors and
# destructors, the section GCC names after their role. The list ends with
# the destructors, of which the default mode runs only the first
# instructions: the last one's body may lie past the window.
file(STRINGS ${_hot_list} _names REGEX "^[A-Za-z_]")
file(STRINGS ${_hot_list} _files REGEX "^file ")
string(CONCAT _hot "    /* cmake/layout.cmake: the code the default mode runs */\n"
                  "    *crtbegin*.o(.text)\n"
                  "    *libc_nonshared.a:*(.text .text.*)\n"
                  "    *allot-new-weak.o(.text)\n"
                  "    *(.rodata .rodata.cst*)\n"
                  "    *options.c.o(.rodata.str*)\n"
                  "    *prof.c.o(.rodata.str*)\n")
foreach(_f ${_files})
  string(REGEX REPLACE "^file +" "" _f "${_f}")
  string(APPEND _hot "    *${_f}.o(.text .text.*)\n")
endforeach()
foreach(_n ${_names})
  if(_n MATCHES "^file ")
    continue()
  endif()
  string(APPEND _hot "    *(.text.${_n} .text.${_n}.* .text.startup.${_n}"
                     " .text.exit.${_n})\n")
endforeach()

set(_text_head "  .text           :\n  {\n")
set(_fini "  .fini           :\n  {\n    KEEP (*(SORT_NONE(.fini)))\n  }\n")
set(_init "  .init           :\n  {\n    KEEP (*(SORT_NONE(.init)))\n  }\n")
string(FIND "${_script}" "${_text_head}" _at_text)
string(FIND "${_script}" "${_fini}" _at_fini)
string(FIND "${_script}" "${_init}" _at_init)
if(_at_text EQUAL -1 OR _at_fini EQUAL -1 OR _at_init EQUAL -1)
  message(STATUS "liballot.so code layout: unknown linker script, "
                 "default order")
  return()
endif()
string(REPLACE "${_fini}" "" _script "${_script}")
string(REPLACE "${_init}" "${_init}${_fini}" _script "${_script}")
string(REPLACE "${_text_head}" "${_text_head}${_hot}" _script "${_script}")

# Uninitialised data: the 64 MiB segment map (segment.c's, before that
# file's few words), then the variables of the other files the default mode
# runs, then the other modes'. In source order the map sat between two runs
# of small variables and the profiler's 64 KiB filter between two more, so
# the few hundred bytes a small program writes were spread over three
# pages; now they share one, the map's last (whose bytes stand for the top
# 16 GiB of 256 TiB, above x86-64's user space). Reads of the other modes'
# variables (the profiler's destructor reads its `ready` in every process)
# map the kernel's zero page, which is not counted as resident.
set(_bss_old "   *(.dynbss)\n   *(.bss .bss.* .gnu.linkonce.b.*)\n")
string(CONCAT _bss_new
  "   *(.dynbss)\n"
  "   /* cmake/layout.cmake: the segment map, then the hot variables */\n"
  "   *segment.c.o(.bss .bss.*)\n"
  "   EXCLUDE_FILE(*prof.c.o *introspect.c.o *secure.c.o"
  " *fixed.c.o *heap.c.o) *(.bss .bss.*)\n"
  "   *heap.c.o(.bss)\n"
  "   *heap.c.o(.bss.*)\n"
  "   *(.bss .bss.* .gnu.linkonce.b.*)\n")
string(FIND "${_script}" "${_bss_old}" _at_bss)
if(NOT _at_bss EQUAL -1)
  string(REPLACE "${_bss_old}" "${_bss_new}" _script "${_script}")
endif()
set(ALLOT_LAYOUT_SCRIPT ${CMAKE_CURRENT_BINARY_DIR}/allot-layout.ld)
file(WRITE ${ALLOT_LAYOUT_SCRIPT}
  "/* liballot.so: the linker's default script, hot code first "
  "(generated by cmake/layout.cmake) */\n${_script}")

target_compile_options(allot-objects PRIVATE -ffunction-sections)
target_compile_options(allot-os-shared PRIVATE -ffunction-sections)
target_link_options(allot PRIVATE "LINKER:-T,${ALLOT_LAYOUT_SCRIPT}"
  "LINKER:-z,max-page-size=0x10000")
set_property(TARGET allot APPEND PROPERTY LINK_DEPENDS ${ALLOT_LAYOUT_SCRIPT})
message(STATUS "liballot.so code layout: hot functions first")
