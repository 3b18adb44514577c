/* worker_priority.h: what the forking tests (forklocks.c, forkcheck.c)
 * share: their busy workers run below the forking thread's priority. A fork
 * only needs the workers somewhere in their loops: one preempted there is
 * where it would be had it run on, so the chance that a fork finds a lock
 * held or a block half made is the share of a worker's loop spent there,
 * whatever share of the CPU the worker gets. At equal priority the busy
 * workers left the forker (whose forks and children are what the test waits
 * for) a fraction of the two cores it shares with the other tests CTest
 * runs, and tripled forklocks' run. */
#ifndef ALLOT_TEST_WORKER_PRIORITY_H
#define ALLOT_TEST_WORKER_PRIORITY_H

#include <sys/resource.h>
#include <unistd.h>

static void worker_priority(void) {
  setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
}

#endif
