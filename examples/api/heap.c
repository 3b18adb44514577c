/* heap.c: a first-class heap as an arena — build a structure in it, then
 * release all of it at once with allot_heap_destroy, or keep what is still
 * needed with allot_heap_delete. */
#include <allot.h>
#include <stdio.h>
#include <string.h>

typedef struct node {
  struct node *next;
  char name[24];
} node_t;

/* A list of n nodes, every one allocated from heap h. */
static node_t *build(allot_heap_t *h, int n) {
  node_t *head = NULL;
  for (int i = 0; i < n; i++) {
    node_t *x = allot_heap_malloc(h, sizeof *x);
    if (!x) return NULL;
    snprintf(x->name, sizeof x->name, "node %d", i);
    x->next = head;
    head = x;
  }
  return head;
}

int main(void) {
  /* an arena for one request: no per-node free, one destroy */
  allot_heap_t *request = allot_heap_new();
  node_t *list = build(request, 10000);
  if (!list || allot_heap_of(list) != request) return 1;
  printf("built %s .. in its own heap\n", list->name);
  allot_heap_destroy(request); /* every node is gone */

  /* a heap whose result outlives it: delete hands the blocks over */
  allot_heap_t *scratch = allot_heap_new();
  node_t *keep = build(scratch, 3);
  allot_heap_delete(scratch);
  printf("kept %s after delete: %s\n", keep->name,
         allot_heap_of(keep) == allot_heap_default() ? "in the default heap"
                                                     : "?");
  while (keep) { /* now ordinary blocks: free them one by one */
    node_t *next = keep->next;
    allot_free(keep);
    keep = next;
  }
  return 0;
}
