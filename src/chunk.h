/* chunk.h: the boundary-tag chunk heap (dlmalloc lineage, TLSF bins).
 *
 * Owns medium-sized blocks inside regions of memory it is given: every block
 * has a 16-byte header just before the user pointer holding its size and
 * in-use state, and the previous chunk's size, so free() merges with both
 * neighbours in O(1) and a region can be walked from its start by adding
 * sizes. Free chunks sit in two-level segregated bins whose occupancy is kept
 * in bitmaps, so malloc finds a fitting chunk with two bit scans: bounded
 * O(1) time, no search. The heap never calls the OS and takes no locks; the
 * caller serialises access. It is used for medium objects inside segments and
 * for heaps placed in a caller's buffer. */
#ifndef ALLOT_CHUNK_H
#define ALLOT_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Header before every user pointer (16 bytes, keeps 16-byte alignment). */
#define CHUNK_HEADER 16u
/* Smallest chunk (header included); a free chunk keeps its two list links
 * in its payload. */
#define CHUNK_MIN 32u
/* Bytes a region loses to its sentinels: a leading fence header and a trailing
 * end marker, so merging never runs off either end. */
#define CHUNK_REGION_OVERHEAD 32u

/* Second-level bins per first level (2^CHUNK_SL_LOG2): classes within a
 * power of two are at most 1/CHUNK_SL_COUNT apart. */
#define CHUNK_SL_LOG2 4
#define CHUNK_SL_COUNT (1u << CHUNK_SL_LOG2)
/* First levels a heap can have: level 0 holds chunks below 256 bytes, level
 * k >= 1 those in [2^(k+7), 2^(k+8)). */
#define CHUNK_FL_COUNT 40u

/* What chunk_check / a bad free found. */
typedef void (*chunk_fault_fn)(const char *what, const void *addr);

/* free_bytes + used_bytes = sum of region sizes - regions *
 * CHUNK_REGION_OVERHEAD.
 *
 * The bin table is the last member and only its first fl_count rows exist:
 * chunk_heap_init makes a heap with every row (the medium heaps, embedded in
 * their thread heap), chunk_heap_init_sized one with the rows its largest
 * region can reach, in chunk_heap_size() bytes (a heap in a caller's buffer
 * of 4 KiB needs 5 rows, 640 bytes, not 40). Nothing reads a row past
 * fl_count: regions whose chunks would need one are refused. */
typedef struct chunk_heap {
  uint64_t fl_bitmap;   /* first levels with any free chunk */
  uint64_t key;         /* secret mixed into header check words (0 allowed) */
  size_t free_bytes;    /* bytes in free chunks (headers included) */
  size_t used_bytes;    /* bytes in used chunks (headers included) */
  size_t used_count;    /* number of used chunks */
  size_t regions;       /* number of regions added (and not removed) */
  size_t max_chunk;     /* largest chunk any region ever held: bounds sizes */
  size_t limit;         /* chunks are smaller: 2^(fl_count + 7) */
  chunk_fault_fn fault; /* corruption found outside chunk_free; see below */
  uint32_t fl_count;    /* rows of bins below */
  uint32_t sl_bitmap[CHUNK_FL_COUNT]; /* per first level: non-empty bins */
  void *bins[CHUNK_FL_COUNT][CHUNK_SL_COUNT]; /* heads of free chunk lists */
} chunk_heap_t;

/* Initialise an empty heap with every bin row (sizeof(chunk_heap_t)
 * bytes). key is a secret used to make header check words hard to forge
 * (pass a random value; 0 is valid and only weakens checking). */
void chunk_heap_init(chunk_heap_t *h, uint64_t key);

/* Bytes a heap needs whose regions are at most max_region bytes each: the
 * header and the bin rows that chunk sizes up to max_region reach
 * (sizeof(chunk_heap_t) at most; a multiple of 16). */
size_t chunk_heap_size(size_t max_region);
/* Initialise an empty heap in chunk_heap_size(max_region) bytes at h
 * (8-byte aligned). chunk_add_region refuses regions larger than
 * max_region rounded up to the end of its first level. */
void chunk_heap_init_sized(chunk_heap_t *h, uint64_t key, size_t max_region);

/* Who to tell when chunk_malloc / chunk_memalign / chunk_resize_in_place /
 * chunk_remove_region find a corrupted header or free list (they have no
 * fault argument). It should not return; if it does, or none was set, the
 * heap executes a trap instruction (SIGILL) rather than run on. */
void chunk_set_fault(chunk_heap_t *h, chunk_fault_fn fault);

/* Move every region, free chunk and statistic of `from` into `into` (for
 * adopting an abandoned heap's regions); `from` is left empty. Both heaps
 * must have the same key: headers are tagged with it, and `into` at least
 * as many bin rows (else its fault handler is called and nothing moves).
 * O(free chunks). */
void chunk_heap_absorb(chunk_heap_t *into, chunk_heap_t *from);

/* Give the heap a region [mem, mem+size). mem 16-byte aligned, size a
 * multiple of 16 and at least CHUNK_REGION_OVERHEAD + CHUNK_MIN (and its
 * chunk, size - CHUNK_REGION_OVERHEAD, below the heap's limit: 2^47 for
 * chunk_heap_init's heaps). The region becomes one free chunk between two
 * sentinels. Returns the usable payload size of that first free chunk, or 0
 * (nothing done) when the bounds break those rules. */
size_t chunk_add_region(chunk_heap_t *h, void *mem, size_t size);

/* True if the region [mem, mem+size) given earlier holds no used chunk, i.e.
 * it is a single free chunk. chunk_remove_region() takes it out of the bins
 * so the caller can release its memory. */
bool chunk_region_empty(const chunk_heap_t *h, void *mem, size_t size);
/* Calls the heap's fault handler if the region is not empty. */
void chunk_remove_region(chunk_heap_t *h, void *mem, size_t size);

/* Allocate size bytes (16-byte aligned). NULL when no free chunk is large
 * enough. Never fails for size <= the largest free chunk's payload minus one
 * bin spacing (good fit, not best fit). */
void *chunk_malloc(chunk_heap_t *h, size_t size);

/* Allocate with alignment a power of two >= 16. */
void *chunk_memalign(chunk_heap_t *h, size_t alignment, size_t size);

/* Free a pointer returned by chunk_malloc/chunk_memalign of this heap (NULL
 * is ignored). A double free or a pointer that is not a used chunk's payload
 * calls fault (which must not return) before anything is changed; what is
 * "invalid pointer", "double free", "corrupted chunk header" (addr is then
 * the payload of the chunk whose header is bad: p's, or a neighbour's when
 * p overflowed into it) or "corrupted free list". If fault returns, the free
 * is dropped. p must be readable 16 bytes below (the caller knows it lies in
 * one of the heap's regions). */
void chunk_free(chunk_heap_t *h, void *p, chunk_fault_fn fault);

/* Validate p as a live block of this heap without changing anything:
 * returns true if it is, false otherwise. Cheap (reads the header and the
 * next chunk's boundary tag). */
bool chunk_is_live(const chunk_heap_t *h, const void *p);

/* Payload bytes usable at p (>= the size asked for), from the size word
 * just before it (bits 4..47 of the header's second word). Inline: realloc
 * checks it on its lock-free path. */
static inline size_t chunk_usable_size(const void *p) {
  typedef uint64_t __attribute__((may_alias)) word_t;
  uint64_t w1 = __atomic_load_n(&((const word_t *)p)[-1], __ATOMIC_RELAXED);
  return (size_t)(w1 & ((((uint64_t)1 << 48) - 1) & ~(uint64_t)15)) -
         CHUNK_HEADER;
}

/* Resize in place to at least size bytes, shrinking or growing into a free
 * next neighbour. Returns true on success (contents kept), false if it
 * cannot be done in place (nothing changed). A p that is not live goes to
 * the heap's fault handler. */
bool chunk_resize_in_place(chunk_heap_t *h, void *p, size_t size);

/* Walk every chunk of the region [mem, mem+size) from its start by adding
 * sizes (the sentinels are not visited). visit gets the payload address,
 * payload size and in-use flag; a nonzero return stops the walk and is
 * returned. Returns 0 after the last chunk, -1 if a size leads outside the
 * region (tags are not checked here: use chunk_check). */
typedef int (*chunk_visit_fn)(void *payload, size_t size, bool used, void *arg);
int chunk_walk_region(void *mem, size_t size, chunk_visit_fn visit, void *arg);

/* Verify every invariant of the heap whose regions are listed: tags agree with
 * neighbours, no two free chunks adjacent, every free chunk in the right bin
 * and every bin's chunks free, bitmaps agree with the bins, byte counts add
 * up. Calls fault with the first inconsistency and returns false; true when
 * all holds. */
bool chunk_check(const chunk_heap_t *h, void *const *regions,
                 const size_t *sizes, size_t nregions, chunk_fault_fn fault);

/* Payload bytes chunk_malloc is sure to find (0 if no free chunk): the lower
 * bound of the fullest bin, so within one bin spacing (1/16) below the
 * largest free chunk's payload; O(1). */
size_t chunk_largest_free(const chunk_heap_t *h);

#endif
