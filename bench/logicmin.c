/* logicmin.c: a two-level logic minimiser in the style of espresso: a mix
 * of object sizes and lifetimes.
 *
 * For each random boolean function of 8..12 inputs it computes all prime
 * implicants Quine-McCluskey style (cubes merged level by level through a
 * growing hash set; each level freed once the next exists) and picks a
 * greedy cover. Cubes are small strings, hash nodes are fixed-size, bucket
 * arrays and prime lists grow with realloc, truth tables are a few KiB: many
 * sizes with lifetimes from one level to the whole function. The cover is
 * checked against the function's truth table, minterm by minterm.
 *
 *   logicmin N     N functions */
#include "bench.h"

#define USAGE "FUNCTIONS"

typedef struct node {
  struct node *next;
  uint64_t hash;
  int combined; /* merged into a larger cube: not prime */
  char *cube;   /* nvars chars of '0', '1', '-' */
} node;

typedef struct {
  node **bucket;
  size_t nbuckets, count;
} cubeset;

static int nvars;

static uint64_t cube_hash(const char *c) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < nvars; i++)
    h = (h ^ (unsigned char)c[i]) * 1099511628211ull;
  return h;
}

static void set_init(cubeset *s) {
  s->nbuckets = 64;
  s->bucket = bench_nonnull(calloc(s->nbuckets, sizeof(node *)), 1);
  s->count = 0;
}

static node *set_find(cubeset *s, const char *c, uint64_t h) {
  for (node *n = s->bucket[h & (s->nbuckets - 1)]; n; n = n->next)
    if (n->hash == h && memcmp(n->cube, c, nvars) == 0) return n;
  return NULL;
}

/* A growable array of nodes. The set's members are also kept in one, in
 * insertion order, so walking a level never depends on addresses. */
typedef struct {
  node **items;
  size_t n, cap;
} nodelist;

static void list_push(nodelist *l, node *x) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 16;
    l->items = bench_nonnull(realloc(l->items, l->cap * sizeof(node *)), 1);
  }
  l->items[l->n++] = x;
}

static node *set_add(cubeset *s, nodelist *order, const char *c) {
  uint64_t h = cube_hash(c);
  node *n = set_find(s, c, h);
  if (n) return n;
  if (s->count + 1 > s->nbuckets) {
    size_t nb = s->nbuckets * 2;
    node **b = bench_nonnull(calloc(nb, sizeof(node *)), 1);
    for (size_t i = 0; i < s->nbuckets; i++) {
      node *x = s->bucket[i];
      while (x) {
        node *nx = x->next;
        x->next = b[x->hash & (nb - 1)];
        b[x->hash & (nb - 1)] = x;
        x = nx;
      }
    }
    free(s->bucket);
    s->bucket = b;
    s->nbuckets = nb;
  }
  n = bench_nonnull(malloc(sizeof *n), sizeof *n);
  n->cube = bench_nonnull(malloc(nvars + 1), 1);
  memcpy(n->cube, c, nvars);
  n->cube[nvars] = 0;
  n->hash = h;
  n->combined = 0;
  n->next = s->bucket[h & (s->nbuckets - 1)];
  s->bucket[h & (s->nbuckets - 1)] = n;
  s->count++;
  list_push(order, n);
  return n;
}

/* Visits every minterm of a cube: sets it in `map` (set=1), clears it
 * (set=-1), or counts the ones present (set=0). */
static void cube_minterms(const char *c, unsigned char *map, int set,
                          uint64_t *count) {
  int dash[16], nd = 0;
  unsigned base = 0;
  for (int i = 0; i < nvars; i++) {
    if (c[i] == '1')
      base |= 1u << i;
    else if (c[i] == '-')
      dash[nd++] = i;
  }
  for (unsigned k = 0; k < (1u << nd); k++) {
    unsigned m = base;
    for (int j = 0; j < nd; j++)
      if (k & (1u << j)) m |= 1u << dash[j];
    if (set > 0)
      map[m] = 1;
    else if (set < 0)
      map[m] = 0;
    else if (map[m])
      (*count)++;
  }
}

static int cube_dashes(const char *c) {
  int d = 0;
  for (int i = 0; i < nvars; i++)
    d += c[i] == '-';
  return d;
}

static uint64_t minimise(uint64_t *seed) {
  nvars = (int)rng_range(seed, 8, 12);
  unsigned nmin = 1u << nvars;
  unsigned density = (unsigned)rng_range(seed, 20, 60); /* percent */
  unsigned char *on = bench_nonnull(calloc(nmin, 1), nmin);
  char *buf = bench_nonnull(malloc(nvars + 1), 1);

  cubeset level;
  nodelist order = {0}, primes = {0};
  set_init(&level);
  for (unsigned m = 0; m < nmin; m++) {
    if (rng_range(seed, 0, 99) < density) {
      on[m] = 1;
      for (int i = 0; i < nvars; i++)
        buf[i] = (m >> i) & 1 ? '1' : '0';
      set_add(&level, &order, buf);
    }
  }

  /* Merge cubes that differ in one position, level by level. */
  while (level.count) {
    cubeset next;
    nodelist norder = {0};
    set_init(&next);
    for (size_t k = 0; k < order.n; k++) {
      node *x = order.items[k];
      memcpy(buf, x->cube, nvars);
      for (int i = 0; i < nvars; i++) {
        if (buf[i] != '0') continue;
        buf[i] = '1';
        node *y = set_find(&level, buf, cube_hash(buf));
        if (y) {
          x->combined = y->combined = 1;
          buf[i] = '-';
          set_add(&next, &norder, buf);
        }
        buf[i] = '0';
      }
    }
    for (size_t k = 0; k < order.n; k++) {
      node *x = order.items[k];
      if (!x->combined)
        list_push(&primes, x); /* survives the level */
      else {
        free(x->cube);
        free(x);
      }
    }
    free(order.items);
    free(level.bucket);
    level = next;
    order = norder;
  }
  free(level.bucket);
  free(order.items);

  /* Greedy cover: for each uncovered minterm, the prime covering it with
   * the most still-uncovered minterms. The primes covering each minterm are
   * listed first: many small arrays grown by realloc. */
  nodelist *by_minterm = bench_nonnull(calloc(nmin, sizeof(nodelist)), 1);
  for (size_t k = 0; k < primes.n; k++) {
    const char *c = primes.items[k]->cube;
    int dash[16], nd = 0;
    unsigned base = 0;
    for (int i = 0; i < nvars; i++) {
      if (c[i] == '1')
        base |= 1u << i;
      else if (c[i] == '-')
        dash[nd++] = i;
    }
    for (unsigned j = 0; j < (1u << nd); j++) {
      unsigned m = base;
      for (int b = 0; b < nd; b++)
        if (j & (1u << b)) m |= 1u << dash[b];
      list_push(&by_minterm[m], primes.items[k]);
    }
  }
  unsigned char *covered = bench_nonnull(calloc(nmin, 1), nmin);
  unsigned char *uncovered = bench_nonnull(malloc(nmin), nmin);
  memcpy(uncovered, on, nmin);
  nodelist cover = {0};
  for (unsigned m = 0; m < nmin; m++) {
    if (!uncovered[m]) continue;
    node *best = NULL;
    uint64_t best_gain = 0;
    for (size_t k = 0; k < by_minterm[m].n; k++) {
      uint64_t gain = 0;
      cube_minterms(by_minterm[m].items[k]->cube, uncovered, 0, &gain);
      if (gain > best_gain) {
        best_gain = gain;
        best = by_minterm[m].items[k];
      }
    }
    if (!best) bench_fail("minterm %u is covered by no prime implicant", m);
    list_push(&cover, best);
    cube_minterms(best->cube, covered, 1, NULL);
    cube_minterms(best->cube, uncovered, -1, NULL);
  }
  for (unsigned m = 0; m < nmin; m++)
    free(by_minterm[m].items);
  free(by_minterm);

  /* The cover must equal the function exactly: every prime is an
   * implicant (covers no off-set minterm), every on-set minterm covered. */
  if (memcmp(covered, on, nmin) != 0)
    bench_fail("cover does not match the function (%d inputs)", nvars);

  uint64_t sum = (uint64_t)nvars * 1000003u + primes.n * 1009u + cover.n;
  for (size_t k = 0; k < cover.n; k++)
    sum += cube_hash(cover.items[k]->cube) ^
           (uint64_t)cube_dashes(cover.items[k]->cube);
  for (size_t k = 0; k < primes.n; k++) {
    free(primes.items[k]->cube);
    free(primes.items[k]);
  }
  free(primes.items);
  free(cover.items);
  free(covered);
  free(uncovered);
  free(on);
  free(buf);
  return sum;
}

int main(int argc, char **argv) {
  bench_name = "logicmin";
  long n = bench_arg(argc, argv, 1, 40, USAGE);
  uint64_t seed = 99, checksum = 0;
  for (long i = 0; i < n; i++)
    checksum += minimise(&seed);
  bench_ok(checksum);
  return 0;
}
