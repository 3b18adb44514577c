/* tools.c: does memcheck (valgrind) or AddressSanitizer see a misuse of an
 * allot block? Built against liballot.so with valgrind client requests
 * (ALLOT_VALGRIND=ON), or against the prefixed library in an
 * AddressSanitizer build (ALLOT_SANITIZE=address, ALLOT_PREFIXED defined).
 *
 *   tools overflow | use-after-free | large-use-after-free | leak | clean
 *
 * Each reads where it must not (or leaks) once; the CTest entries check that
 * the tool's report names the error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot.h"

#ifdef ALLOT_PREFIXED
#define MALLOC allot_malloc
#define FREE allot_free
#else
#define MALLOC malloc
#define FREE free
#endif

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "clean";
  volatile char sink = 0;
  char *p = MALLOC(24);
  __asm__ volatile("" : "+r"(p)); /* the compiler must not see the size */
  memset(p, 1, 24);
  if (!strcmp(what, "overflow")) {
    sink = p[24]; /* one byte past the end */
  } else if (!strcmp(what, "use-after-free")) {
    FREE(p);
    sink = p[20];
    p = NULL;
  } else if (!strcmp(what, "large-use-after-free")) {
    char *q = MALLOC(3u << 20);
    memset(q, 2, 64);
    FREE(q);
    sink = q[40];
  } else if (!strcmp(what, "leak")) {
    char *lost = MALLOC(777);
    memset(lost, 3, 777);
    lost = NULL;
  }
  FREE(p);
  printf("tools: %s done (%d)\n", what, sink);
  return 0;
}
