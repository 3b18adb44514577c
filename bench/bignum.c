/* bignum.c: bignum arithmetic in the style of cfrac: many small,
 * short-lived objects.
 *
 * Numbers are immutable arrays of 32-bit limbs (a few limbs each, as in
 * cfrac's continued-fraction factoring), each operation allocating its
 * result, so almost every allocation lives for a few operations. Each round
 * runs a Fibonacci-style chain of 300 additions and ten product trees each
 * followed by trial division; every result is checked against the same
 * computation done modulo the prime 2^61-1 with plain 64-bit arithmetic.
 *
 *   bignum N     N rounds */
#include "bench.h"

#define USAGE "ROUNDS"
#define P61 ((1ull << 61) - 1)

typedef struct {
  uint32_t n; /* limbs in use; at least 1 */
  uint32_t d[];
} big;

static big *big_alloc(uint32_t n) {
  size_t bytes = sizeof(big) + (size_t)n * sizeof(uint32_t);
  big *b = bench_nonnull(malloc(bytes), bytes);
  b->n = n;
  return b;
}

static big *big_norm(big *b) {
  while (b->n > 1 && b->d[b->n - 1] == 0)
    b->n--;
  return b;
}

static big *big_from(uint64_t v) {
  big *b = big_alloc(2);
  b->d[0] = (uint32_t)v;
  b->d[1] = (uint32_t)(v >> 32);
  return big_norm(b);
}

static big *big_add(const big *a, const big *b) {
  if (a->n < b->n) {
    const big *t = a;
    a = b;
    b = t;
  }
  big *r = big_alloc(a->n + 1);
  uint64_t carry = 0;
  for (uint32_t i = 0; i < a->n; i++) {
    carry += (uint64_t)a->d[i] + (i < b->n ? b->d[i] : 0);
    r->d[i] = (uint32_t)carry;
    carry >>= 32;
  }
  r->d[a->n] = (uint32_t)carry;
  return big_norm(r);
}

static big *big_mul(const big *a, const big *b) {
  big *r = big_alloc(a->n + b->n);
  memset(r->d, 0, (size_t)r->n * sizeof(uint32_t));
  for (uint32_t i = 0; i < a->n; i++) {
    uint64_t carry = 0;
    for (uint32_t j = 0; j < b->n; j++) {
      carry += (uint64_t)a->d[i] * b->d[j] + r->d[i + j];
      r->d[i + j] = (uint32_t)carry;
      carry >>= 32;
    }
    r->d[i + b->n] = (uint32_t)carry;
  }
  return big_norm(r);
}

static big *big_divsmall(const big *a, uint32_t m, uint32_t *rem) {
  big *q = big_alloc(a->n);
  uint64_t r = 0;
  for (uint32_t i = a->n; i-- > 0;) {
    uint64_t cur = (r << 32) | a->d[i];
    q->d[i] = (uint32_t)(cur / m);
    r = cur % m;
  }
  *rem = (uint32_t)r;
  return big_norm(q);
}

/* x mod 2^61-1 by folding (2^61 = 1 mod p): no division, so checking
 * stays cheap next to the allocations it checks. */
static uint64_t modp(unsigned __int128 x) {
  while (x >> 61)
    x = (x & P61) + (x >> 61);
  return x == P61 ? 0 : (uint64_t)x;
}

static uint64_t big_modp(const big *a) {
  uint64_t r = 0;
  for (uint32_t i = a->n; i-- > 0;)
    r = modp(((unsigned __int128)r << 32) | a->d[i]);
  return r;
}

/* A random one-limb number (as a bignum) and its residue. */
static big *big_random(uint64_t *seed, uint64_t *res) {
  uint32_t n = (uint32_t)rng_range(seed, 1, 1);
  big *b = big_alloc(n);
  for (uint32_t i = 0; i < n; i++)
    b->d[i] = (uint32_t)rng_next(seed) | 1;
  big_norm(b);
  *res = big_modp(b);
  return b;
}

static uint64_t round_fib(uint64_t *seed) {
  big *a = big_from(rng_range(seed, 1, 1000));
  big *b = big_from(rng_range(seed, 1, 1000));
  uint64_t am = big_modp(a), bm = big_modp(b);
  for (int k = 0; k < 300; k++) {
    big *c = big_add(a, b);
    free(a);
    a = b;
    b = c;
    uint64_t cm = modp((unsigned __int128)am + bm);
    am = bm;
    bm = cm;
  }
  uint64_t got = big_modp(b);
  if (got != bm || big_modp(a) != am)
    bench_fail("addition chain: residue %llx, expected %llx",
               (unsigned long long)got, (unsigned long long)bm);
  free(a);
  free(b);
  return bm;
}

/* Multiplies 8 random numbers pairwise up a tree, then divides the
 * product by the primes below 15, one fresh quotient per division. */
static uint64_t round_product(uint64_t *seed) {
  enum { LEAVES = 8 };
  big **level = bench_nonnull(malloc(LEAVES * sizeof *level), 1);
  uint64_t expect = 1, res;
  uint32_t n = LEAVES;
  for (uint32_t i = 0; i < n; i++) {
    level[i] = big_random(seed, &res);
    expect = modp((unsigned __int128)expect * res);
  }
  while (n > 1) {
    uint32_t m = (n + 1) / 2;
    big **up = bench_nonnull(malloc(m * sizeof *up), 1);
    for (uint32_t i = 0; i < n / 2; i++) {
      up[i] = big_mul(level[2 * i], level[2 * i + 1]);
      free(level[2 * i]);
      free(level[2 * i + 1]);
    }
    if (n & 1) up[m - 1] = level[n - 1];
    free(level);
    level = up;
    n = m;
  }
  big *q = level[0];
  free(level);
  if (big_modp(q) != expect) bench_fail("product tree: residue mismatch");

  uint64_t qm = expect, sum = expect;
  static const uint32_t primes[] = {3, 5, 7, 11, 13};
  for (size_t k = 0; k < sizeof primes / sizeof primes[0]; k++) {
    uint32_t pr = primes[k], rem;
    big *q2 = big_divsmall(q, pr, &rem);
    uint64_t q2m = big_modp(q2);
    if (modp((unsigned __int128)q2m * pr + rem) != qm)
      bench_fail("division by %u: residue mismatch", pr);
    sum += rem;
    if (rem == 0) {
      free(q);
      q = q2;
      qm = q2m;
    } else {
      free(q2);
    }
  }
  free(q);
  return sum;
}

int main(int argc, char **argv) {
  bench_name = "bignum";
  long rounds = bench_arg(argc, argv, 1, 2000, USAGE);
  uint64_t seed = 12345, checksum = 0;
  for (long r = 0; r < rounds; r++) {
    checksum += round_fib(&seed);
    for (int k = 0; k < 10; k++)
      checksum += round_product(&seed);
  }
  bench_ok(checksum);
  return 0;
}
