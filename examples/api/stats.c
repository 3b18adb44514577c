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
  /* row 4 is the 64-byte class; in debug and secure mode each block also
   * holds a trailer, so goes to a larger class: the first that has them */
  int row = 4;
  if (allot_option_get(ALLOT_OPTION_DEBUG) ||
      allot_option_get(ALLOT_OPTION_SECURE))
    while (row < 56 && st.rows[row].blocks < 1000)
      row++;
  printf("%zu-byte class: %zu blocks in %zu pages\n", st.rows[row].block_size,
         st.rows[row].blocks, st.rows[row].pages);

  char json[16384];
  allot_stats_json(json, sizeof json);
  printf("JSON: %.60s...\n", json);

  struct allot_mallinfo2 mi = allot_mallinfo2();
  printf("mallinfo2: uordblks %zu, hblks %zu\n", mi.uordblks, mi.hblks);

  allot_stats_print(1); /* the whole table, as text on stdout */
  for (int i = 0; i < 1000; i++)
    allot_free(p[i]);
  allot_free(big);
  return st.rows[row].blocks >= 1000 ? 0 : 1;
}
