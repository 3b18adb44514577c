/* walk.c: visit every region, page and block of the process and total the
 * live bytes by kind. */
#include <allot.h>
#include <stdio.h>

typedef struct totals {
  size_t regions, pages, blocks[8], bytes[8];
} totals_t;

static int visit(const allot_walk_info_t *w, void *arg) {
  totals_t *t = arg;
  if (w->type == ALLOT_WALK_REGION) t->regions++;
  if (w->type == ALLOT_WALK_PAGE) t->pages++;
  if (w->type == ALLOT_WALK_BLOCK && w->in_use) {
    t->blocks[w->kind]++;
    t->bytes[w->kind] += w->size;
  }
  return 0; /* nonzero would stop the walk */
}

int main(void) {
  void *p[300];
  for (int i = 0; i < 300; i++)
    p[i] = allot_malloc((size_t)i * i * 7 % 300000 + 1);
  totals_t t = {0};
  if (allot_walk(visit, &t) != 0) return 1;
  static const char *kind[] = {"", "small", "medium", "large"};
  printf("%zu regions, %zu small pages\n", t.regions, t.pages);
  for (int k = 1; k <= 3; k++)
    printf("%-6s %6zu blocks %10zu bytes\n", kind[k], t.blocks[k], t.bytes[k]);
  for (int i = 0; i < 300; i++)
    allot_free(p[i]);
  return t.blocks[1] + t.blocks[2] + t.blocks[3] >= 300 ? 0 : 1;
}
