/* options.c: read and change allot's options at run time (each is also an
 * ALLOT_* environment variable read at start-up). */
#include <allot.h>
#include <stdio.h>

int main(void) {
  for (int i = 0; i < ALLOT_OPTION_COUNT; i++)
    printf("%-20s %ld (default %ld)\n", allot_option_name((allot_option_t)i),
           allot_option_get((allot_option_t)i),
           allot_option_default((allot_option_t)i));
  /* return freed memory after one second instead of 50 ms */
  if (allot_option_set(ALLOT_OPTION_PURGE_DELAY, 1000) != 0) return 1;
  /* count every call from now on (slower; exact counters) */
  if (allot_option_set(ALLOT_OPTION_STATS, 1) != 0) return 1;
  void *p = allot_malloc(100);
  allot_free(p);
  allot_stats_t st;
  allot_stats_get(&st);
  printf("statistics mode: %zu malloc, %zu free\n", st.mallocs, st.frees);
  allot_option_set(ALLOT_OPTION_STATS, 0);
  return st.mallocs == 1 && st.frees == 1 ? 0 : 1;
}
