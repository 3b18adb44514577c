# layout.cmake: where liballot.so's code sits in the file.
#
# A program's code is resident by the 64 KiB window, not by the page: on a
# fault in a file mapping the kernel maps up to 16 pages from the aligned
# 64 KiB around it (from the mapping's start, when that is later), as many
# as are in the page cache and inside the mapping (fault-around). With the
# functions in source order, the few that malloc and free run are spread
# among the checked modes, statistics, introspection and profiling, so
# touching them made the whole 144 KiB of code resident in every process.
# Here the functions the default mode runs (cmake/hot-functions.txt) come
# first, in tiers (core, threads, medium, rest), each starting on an OS page
# with a marker function, and the cold code after them; _init and _fini,
# which the loader runs, come just before the core. At start-up the IFUNC
# resolver (heap.c) has os_code_tiers (os.c) give the threads and rest tiers
# another advice, which splits the code mapping into one mapping per tier,
# so fault-around stops at a tier's end: a program has resident the tiers
# it runs, each whole, and the cold code stays on disk. The resolver is the
# first code of the library to run, before any split, so it sits in a
# segment of its own (.allot_boot, after .rodata): its fault maps that page
# alone. A small single-threaded program has 28 kB of liballot.so's code
# resident, where one 64 KiB window (all the default mode's code) was
# before (docs/memory.md, "The code's tiers").
#
# The order is given to the linker as its own default script with three
# changes: the tiers at the head of .text, .fini moved up beside .init, and
# the .allot_boot segment before the data. Everything else, .text kept a
# single section (valgrind names only the functions of .text) included, is
# as the linker would have it. Each function is compiled into a section of
# its own (-ffunction-sections) for this. A linker that does not print its
# script (lld, mold) links the library in the default order, where the
# markers are not on page boundaries and os_code_tiers does nothing.
# Include after the target allot is defined.

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

# The hot code's input sections, tier by tier (cmake/hot-functions.txt).
# The core starts with what runs in every process besides the list (the C
# runtime's start-up code of the library, pthread_atfork from
# libc_nonshared.a) and the constants the hot code reads (the size-class
# tables, jump tables, vector constants, the names of the ALLOT_* variables
# read at start-up: left in .rodata, one read would make .rodata and the
# unwind tables beside it resident, 32 KiB; other strings, fault messages
# and the checked modes' reports, stay there), and the C++ operators. Then
# each tier's functions
# in its order: each one's own section, its clones (name.constprop.0,
# name.part.0, ...) and, for constructors and destructors, the section GCC
# names after their role; then the rest of the files it names ("file
# page.c"). Each later tier starts on an OS page with its marker function
# (os_tier_threads, ... in src/os.c, in sections .allot_tier.NAME, which
# no "file" rule takes), which os_code_tiers uses at start-up to make the
# tier a mapping of its own; os_tier_cold marks the end of them all. The
# C++ operators are in the core (1.2 KiB): a C++ program allocates with
# them.
file(STRINGS ${_hot_list} _lines REGEX "^[A-Za-z_]")
set(_tiers "")
set(_tier "")
foreach(_l ${_lines})
  if(_l MATCHES "^tier +([a-z]+)")
    set(_tier ${CMAKE_MATCH_1})
    list(APPEND _tiers ${_tier})
    set(_fns_${_tier} "")
    set(_files_${_tier} "")
  elseif(_l MATCHES "^file +(.+)")
    list(APPEND _files_${_tier} ${CMAKE_MATCH_1})
  else()
    list(APPEND _fns_${_tier} ${_l})
  endif()
endforeach()
list(GET _tiers 0 _core)
string(CONCAT _hot "    /* cmake/layout.cmake: the code the default mode runs */\n"
                  "    *crtbegin*.o(.text)\n"
                  "    *libc_nonshared.a:*(.text .text.*)\n"
                  "    *(.rodata .rodata.cst*)\n"
                  "    *options.c.o(.rodata.str*)\n"
                  "    *prof.c.o(.rodata.str*)\n"
                  "    *allot-new-weak.o(.text)\n")
foreach(_t ${_tiers})
  if(NOT _t STREQUAL _core)
    string(APPEND _hot "    . = ALIGN(0x1000);\n"
                       "    *(.allot_tier.${_t})\n")
  endif()
  foreach(_n ${_fns_${_t}})
    string(APPEND _hot "    *(.text.${_n} .text.${_n}.* .text.startup.${_n}"
                       " .text.exit.${_n})\n")
  endforeach()
  foreach(_f ${_files_${_t}})
    string(APPEND _hot "    *${_f}.o(.text .text.*)\n")
  endforeach()
endforeach()
string(APPEND _hot "    . = ALIGN(0x1000);\n"
                   "    *(.allot_tier.cold)\n")

set(_text_head "  .text           :\n  {\n")
# .init and .fini as the script has them, with the fill some targets give
# after the brace (aarch64's "} =0x1f2003d5", its nop)
foreach(_sec init fini)
  string(REGEX MATCH "  \\.${_sec}           :\n  {\n    KEEP \\(\\*\\(SORT_NONE\\(\\.${_sec}\\)\\)\\)\n  }[^\n]*\n"
         _${_sec} "${_script}")
endforeach()
string(FIND "${_script}" "${_text_head}" _at_text)
if(_at_text EQUAL -1 OR NOT _fini OR NOT _init)
  message(STATUS "liballot.so code layout: unknown linker script, "
                 "default order")
  return()
endif()
string(REPLACE "${_fini}" "" _script "${_script}")
string(REPLACE "${_init}" "${_init}${_fini}" _script "${_script}")
string(REPLACE "${_text_head}" "${_text_head}${_hot}" _script "${_script}")
# The IFUNC resolver, the first code of liballot.so that runs, and what it
# calls to split the code mapping (os_code_tiers), in a segment of their own
# after .rodata: a fault there maps that page only, where a first fault in
# the code segment would map 64 KiB of it before the split.
set(_boot_at "  . = DATA_SEGMENT_ALIGN (")
string(FIND "${_script}" "${_boot_at}" _at_boot)
if(_at_boot EQUAL -1)
  message(STATUS "liballot.so code layout: unknown linker script, "
                 "default order")
  return()
endif()
string(REPLACE "${_boot_at}"
  "  . = ALIGN(CONSTANT (MAXPAGESIZE));\n  .allot_boot     : { *(.allot_boot) }\n${_boot_at}"
  _script "${_script}")

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
