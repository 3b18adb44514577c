/* checker.h: what the heap-check tests (largewalk.c, adoptwalk.c) share: a
 * thread that runs allot_check without pause until `stop`, and the count of
 * checks and failures. Define CHECKER_NAME (the test's name, for its
 * messages) before including it. */
#ifndef ALLOT_TEST_CHECKER_H
#define ALLOT_TEST_CHECKER_H

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "allot.h"

static atomic_int stop;
static atomic_long checks, failures;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* the first few failures are printed; any one fails the test */
static void fail(const char *what) {
  if (atomic_fetch_add(&failures, 1) < 5)
    fprintf(stderr, CHECKER_NAME ": FAILED: %s\n", what);
}

static void *checker(void *arg) {
  (void)arg;
  char report[256];
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    report[0] = 0;
    if (allot_check_report(report, sizeof report) != 0) fail(report);
    atomic_fetch_add_explicit(&checks, 1, memory_order_relaxed);
  }
  return NULL;
}

/* One more check once every thread is done: it must find nothing either. */
static void check_at_end(void) {
  char report[256] = "";
  if (allot_check_report(report, sizeof report) != 0) fail(report);
}

#endif
