/* check.c: verify the heap's invariants on demand, e.g. after a suspect
 * piece of code, and get the first inconsistency as text. */
#include <allot.h>
#include <stdio.h>

int main(void) {
  void *p[100];
  for (int i = 0; i < 100; i++)
    p[i] = allot_malloc((size_t)i * 700 + 1);
  for (int i = 0; i < 100; i += 3)
    allot_free(p[i]);
  char why[256];
  int bad = allot_check_report(why, sizeof why);
  printf("heap check: %s\n", bad ? why : "consistent");
  for (int i = 0; i < 100; i++)
    if (i % 3) allot_free(p[i]);
  return bad;
}
