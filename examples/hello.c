/* hello.c: a C program built against an installed allot. Linked with
 * liballot (shared or static), its malloc is allot's: the program checks
 * that, and that the library it runs with matches the header it was
 * compiled with. */
#include <allot.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  if (allot_version() != ALLOT_VERSION) {
    fprintf(stderr, "hello: header is version %d, library is %d\n",
            ALLOT_VERSION, allot_version());
    return 1;
  }

  /* Both malloc and the memory the C library allocates itself (strdup)
   * come from allot. */
  char *greeting = malloc(64);
  char *copy = strdup("hello from allot");
  if (!greeting || !copy || !allot_owns(greeting) || !allot_owns(copy)) {
    fprintf(stderr, "hello: malloc is not allot's\n");
    return 1;
  }
  snprintf(greeting, 64, "%s %d.%d.%d", copy, ALLOT_VERSION_MAJOR,
           ALLOT_VERSION_MINOR, ALLOT_VERSION_PATCH);
  puts(greeting);
  printf("a 64-byte request got a %zu-byte block\n",
         allot_malloc_usable_size(greeting));
  free(copy);
  free(greeting);
  return 0;
}
