/* fixed.c: a heap inside a buffer the program owns — no OS calls, bounded
 * time, NULL when full. */
#include <allot.h>
#include <stdio.h>

static _Alignas(16) unsigned char arena[256 * 1024];

int main(void) {
  allot_fixed_t *heap = allot_fixed_create(arena, sizeof arena);
  if (!heap) return 1;
  void *blocks[1000];
  int n = 0;
  while (n < 1000 && (blocks[n] = allot_fixed_malloc(heap, 1000)) != NULL)
    n++;
  allot_fixed_stats_t st;
  allot_fixed_stats(heap, &st);
  printf("%d blocks of 1000 bytes fit in %zu bytes (%zu in use, %zu free)\n", n,
         st.size, st.in_use, st.free);
  for (int i = 0; i < n; i += 2)
    allot_fixed_free(heap, blocks[i]);
  void *big = allot_fixed_malloc(heap, 2000); /* no two free blocks touch */
  printf("a 2000-byte block after freeing every other one: %s\n",
         big ? "found" : "none (fragmented)");
  char msg[128];
  if (allot_fixed_check(heap, msg, sizeof msg) != 0) {
    printf("check: %s\n", msg);
    return 1;
  }
  return n > 200 ? 0 : 1;
}
