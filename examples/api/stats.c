/* stats.c: statistics for people and for programs — the process's, one
 * heap's, JSON, and glibc's mallinfo2 fields. */
#include <allot.h>
#include <stdio.h>

int main(void) {
  void *p[1000];
  for (int i = 0; i < 1000; i++)
    p[i] = allot_malloc(64);
  void *big = allot_malloc(4 << 20);

  allot_stats_t st;
  allot_stats_get(&st);
  printf("in use %zu bytes, %zu reserved, %zu resident\n", st.in_use,
         st.reserved, st.committed);
  printf("64-byte class: %zu blocks in %zu pages\n", st.rows[4].blocks,
         st.rows[4].pages);

  char json[16384];
  allot_stats_json(json, sizeof json);
  printf("JSON: %.60s...\n", json);

  struct allot_mallinfo2 mi = allot_mallinfo2();
  printf("mallinfo2: uordblks %zu, hblks %zu\n", mi.uordblks, mi.hblks);

  allot_stats_print(1); /* the whole table, as text on stdout */
  for (int i = 0; i < 1000; i++)
    allot_free(p[i]);
  allot_free(big);
  return st.rows[4].blocks >= 1000 ? 0 : 1;
}
