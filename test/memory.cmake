# memory.cmake: memory given back to the OS (issue 7, docs/memory.md). RSS
# returns to what it was within 5 s of freeing a 1 GiB phase, with or without
# later allocation calls and across threads; malloc_trim(0) gives it back at
# once; a producer/consumer with a bounded live set keeps a flat RSS for 30 s;
# memory freed by one thread is reused by another; all of it in a forked
# child too. Also the ALLOT_HUGE_PAGES and ALLOT_PURGE_MADV options and the
# metadata bound. Label "memory"; about 60 s in all (mem.prodcons is 30 s).
#
# The programs use only the standard interface, so they also run against the
# system malloc or a peer, where most of them fail (that is how to see that
# they can), e.g.:
#   cc -O2 -pthread test/mem_return.c -o mem_return -lm
#   ./mem_return idle                  # glibc: FAILED, ~400 MiB stay
#   LD_PRELOAD=build/liballot.so ./mem_return idle

# Under address and thread the sanitizer owns malloc: nothing that replaces
# it can run there.
if(NOT ALLOT_SANITIZE MATCHES "^(address|thread)$")
  set(ALLOT_MEM_TEST_FLAGS -Wall -Wextra -Werror -fno-builtin-malloc
    -fno-builtin-calloc -fno-builtin-free)

  foreach(prog mem_return mem_thp mem_metadata mem_borrow mem_borrow_xthread
      mem_reuse_large mem_prompt mem_thread_chains mem_empty_page)
    add_executable(${prog} ${CMAKE_CURRENT_LIST_DIR}/${prog}.c)
    target_compile_options(${prog} PRIVATE ${ALLOT_MEM_TEST_FLAGS})
    target_compile_definitions(${prog} PRIVATE TEST_ALLOT=1)
    target_link_libraries(${prog} PRIVATE allot Threads::Threads m)
  endforeach()
  # sizes of allot's structures (segment and heap headers) for the tally
  target_include_directories(mem_metadata PRIVATE ${PROJECT_SOURCE_DIR}/src)

  # allot_mem_add(<name> <timeout> <env> <command...>): <env> is a list of
  # VAR=value ("" for none). The tests are of the default mode: secure mode's
  # quarantine and debug mode's checks (also when a build makes secure mode
  # the default) hold freed memory on purpose, so both are off.
  # A sanitizer build's tests say ALLOT_TEST_SLOW=1: mem_return then gives
  # the memory four times the 5 s to come back (mem_return.c says why).
  if(ALLOT_SANITIZE)
    set(ALLOT_MEM_SLOW "ALLOT_TEST_SLOW=1;")
  else()
    set(ALLOT_MEM_SLOW "")
  endif()
  function(allot_mem_add name timeout env)
    add_test(NAME ${name} COMMAND ${ARGN})
    set_tests_properties(${name} PROPERTIES TIMEOUT ${timeout} LABELS memory
      SKIP_RETURN_CODE 77
      ENVIRONMENT "${ALLOT_MEM_SLOW}ALLOT_SECURE=0;ALLOT_DEBUG=0;${env}")
  endfunction()

  # RSS back within 5 s of the frees, default options
  allot_mem_add(mem.return.idle 60 "" mem_return idle)
  allot_mem_add(mem.return.calls 60 "" mem_return calls)
  allot_mem_add(mem.return.xthread_exit 60 "" mem_return xthread-exit)
  allot_mem_add(mem.fork 60 "" mem_return fork)
  # a single-threaded program with under 1 MiB to give back starts no thread
  allot_mem_add(mem.return.small 60 "" mem_return small)
  # malloc_trim(0) at once: with a purge delay of an hour nothing else can
  allot_mem_add(mem.trim 60 ALLOT_PURGE_DELAY=3600000 mem_return trim)
  allot_mem_add(mem.trim.threads 60 ALLOT_PURGE_DELAY=3600000
    mem_return trim-threads)
  # bounded live set, flat RSS for 30 s (10 s in a sanitizer build, which
  # looks for undefined behaviour on paths the first seconds already take:
  # the slow growth a long run can show is the default build's to catch)
  if(ALLOT_SANITIZE)
    set(seconds 10)
  else()
    set(seconds 30)
  endif()
  allot_mem_add(mem.prodcons 90 "" mem_return prodcons ${seconds})
  # ... and a leak of one block in 16 is caught (the test can fail)
  allot_mem_add(mem.prodcons.leak_caught 60 "" mem_return prodcons-leak 5)
  set_tests_properties(mem.prodcons.leak_caught PROPERTIES
    PASS_REGULAR_EXPRESSION "FAILED: RSS grew with a bounded live set")
  # freed by one thread, reused by another
  allot_mem_add(mem.reuse_exit 60 "" mem_return reuse-exit)
  # a class with nothing resident borrows a block of the next class up
  allot_mem_add(mem.borrow 60 "" mem_borrow)
  # ... and the same while the heap profiler counts (no sample at that rate):
  # a profiled heap borrows as an unprofiled one does
  allot_mem_add(mem.borrow.profiled 60
    "ALLOT_PROF=1;ALLOT_PROF_RATE=1024G;ALLOT_PROF_OUT=/dev/null" mem_borrow)
  # ... its own blocks back from another thread before a lender's, and a
  # lender's blocks back from another thread before new memory
  allot_mem_add(mem.borrow.xthread 60 "" mem_borrow_xthread)
  # a request above the medium limit cut from idle medium memory (which
  # prompt return would give back: the test's heap is empty but for it)
  allot_mem_add(mem.reuse_large 60
    "ALLOT_PURGE_DELAY=3600000;ALLOT_PROMPT_RETURN=0" mem_reuse_large)
  # prompt return: a heap its frees leave nearly empty gives its free memory
  # back at once (not a half-full one, nor one above 32 MiB, nor one that
  # cycles more than once a 20 purge delays), and not with the option off
  foreach(mode empty off held cycles big)
    allot_mem_add(mem.prompt.${mode} 60
      "ALLOT_PURGE_DELAY=3600000;ALLOT_PURGE_THREAD=0" mem_prompt ${mode})
  endforeach()
  # and a heap that the 20 delays refused looks again at its next emptying
  # once they have passed, twice as many of them after a return that it
  # took back within them (a delay of 50 ms: pauses of 1.2 s)
  allot_mem_add(mem.prompt.again 60
    "ALLOT_PURGE_DELAY=50;ALLOT_PURGE_THREAD=0" mem_prompt again)
  # a class's only page, emptied and left, goes back after a delay or two
  allot_mem_add(mem.empty_page 60 ALLOT_PROMPT_RETURN=0 mem_empty_page)
  # malloc_trim(0) gives back the last page of each class too
  allot_mem_add(mem.trim.last_pages 60
    "ALLOT_PURGE_DELAY=3600000;ALLOT_PURGE_THREAD=0;ALLOT_PROMPT_RETURN=0"
    mem_prompt trim)
  set_tests_properties(mem.prompt.off PROPERTIES ENVIRONMENT
    "ALLOT_SECURE=0;ALLOT_DEBUG=0;ALLOT_PURGE_DELAY=3600000;ALLOT_PURGE_THREAD=0;ALLOT_PROMPT_RETURN=0")

  # small blocks freed by another thread while their owner stays alive and
  # idle (the purge thread retires the owner's full pages once every block
  # came back), or after it exited, with the freeing thread never reaching
  # a slow path of its own; and memory freed that way reused by a third
  allot_mem_add(mem.return.xthread 60 "" mem_return xthread)
  allot_mem_add(mem.return.xthread_small_exit 60 ""
    mem_return xthread-small-exit)
  allot_mem_add(mem.reuse 60 "" mem_return reuse)

  # threads that start their successors and exit (larson's chains) pass
  # their heaps on instead of each building one: on one CPU, where the new
  # thread runs before its creator has exited
  allot_mem_add(mem.thread_chains 60 "" mem_thread_chains)

  # ALLOT_PURGE_MADV=free: purged memory is lazily freed, and reusable
  allot_mem_add(mem.madv_free 60 ALLOT_PURGE_MADV=free mem_return lazyfree)

  # a thread with a few small blocks makes one page of its heap structure
  # resident, one with a medium block too two (liballot.a: the test reads
  # the thread's heap pointer)
  add_executable(mem_heap_pages ${CMAKE_CURRENT_LIST_DIR}/mem_heap_pages.c)
  target_compile_options(mem_heap_pages PRIVATE ${ALLOT_MEM_TEST_FLAGS})
  target_include_directories(mem_heap_pages PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(mem_heap_pages PRIVATE allot-static Threads::Threads)
  allot_mem_add(mem.heap_pages 60 "" mem_heap_pages)
  # checked mode: allot_heap_destroy walks the heap (introspect.c) and asks
  # whether another thread's quarantine holds a block (heapapi.c)
  allot_mem_add(mem.heap_pages.checked 60 ALLOT_DEBUG=1 mem_heap_pages)

  # the fixed footprint of liballot.so in a small C program: its code
  # resident by tiers, none of the cold code, only the core in a small
  # single-threaded one, no medium tier in one whose threads make small
  # blocks and exit; libgcc_s not loaded (mem_footprint.c)
  # (not in sanitizer builds: their instrumentation is code too, and
  # libubsan loads libgcc_s)
  if(TARGET allot AND NOT ALLOT_SANITIZE)
    add_executable(mem_footprint ${CMAKE_CURRENT_LIST_DIR}/mem_footprint.c)
    target_compile_options(mem_footprint PRIVATE ${ALLOT_MEM_TEST_FLAGS})
    target_link_libraries(mem_footprint PRIVATE Threads::Threads)
    set(_footprint_env LD_PRELOAD=$<TARGET_FILE:allot>)
    if(NOT ALLOT_LAYOUT_SCRIPT)
      list(APPEND _footprint_env FOOTPRINT_NO_LAYOUT=1)
    endif()
    allot_mem_add(mem.footprint 60 "${_footprint_env}" mem_footprint)
    allot_mem_add(mem.footprint_small 60 "${_footprint_env}" mem_footprint
      small)
    allot_mem_add(mem.footprint_threads 60 "${_footprint_env}" mem_footprint
      threads)
    # ... and, from the symbol table, every function of
    # cmake/hot-functions.txt in its tier, the exit path's too (the budgets
    # are x86-64's: on aarch64 the core tier is 25328 bytes of its 24 KiB;
    # docs/testing.md, "aarch64")
    if(ALLOT_LAYOUT_SCRIPT AND
       CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64)$")
      find_package(Python3 COMPONENTS Interpreter)
      if(Python3_FOUND)
        allot_mem_add(mem.layout 60 "" ${Python3_EXECUTABLE}
          ${CMAKE_CURRENT_LIST_DIR}/layout_check.py $<TARGET_FILE:allot>
          ${PROJECT_SOURCE_DIR}/cmake/hot-functions.txt)
      endif()
    endif()
  endif()

  # ALLOT_HUGE_PAGES: the advice on segments and large mappings, and its effect
  foreach(v on off auto)
    allot_mem_add(mem.thp.${v} 60 ALLOT_HUGE_PAGES=${v} mem_thp check ${v})
  endforeach()

  # metadata under 1 % of the live bytes
  allot_mem_add(mem.metadata.small 60 "" mem_metadata small 256)
  allot_mem_add(mem.metadata.mixed 60 "" mem_metadata mixed 256)
endif()
