/* trace.h: the formats of `allot record` and `allot replay` — the raw
 * recording liballot-record.so writes while a program runs, and the trace
 * allot-replay makes of it and replays. docs/tools.md describes both.
 *
 * Raw recording (one file per process, written with O_APPEND):
 *   raw_header_t, then chunks: raw_chunk_t followed by `bytes` bytes of
 *   `count` packed events of one thread, in that thread's order; at a normal
 *   exit a raw_tail_t chunk. An event: a byte (op | RAW_SIZE | RAW_AUX),
 *   then LEB128 numbers: the sequence number and the timestamp as
 *   differences from the thread's previous event in the chunk, the address
 *   as a zigzag difference, then size and aux when flagged (raw_event_t
 *   has the meaning of each). Every event has a number from one
 *   process-wide counter, taken after the call for what allocates and
 *   before the call for what frees, so sorting by it puts every free after
 *   the allocation of the block and before any reuse of its address.
 *   Timestamps are CPU cycle-counter ticks (x86 TSC, aarch64 CNTVCT); each
 *   chunk header carries a (ticks, ns) pair taken when it was written, from
 *   which the converter finds ns per tick.
 *
 * Trace (what allot-replay converts that into):
 *   trace_header_t, trace_thread_t[threads], then each thread's events,
 *   packed: an op byte (op | TR_WAIT | TR_FAILED), then LEB128 numbers:
 *     slot          blocks are named by slots: a slot is reused once its
 *                   block is freed, so the replayer's table is as small as
 *                   the most blocks live at once
 *     size          (allocations, sized frees, realloc)
 *     count         (calloc, reallocarray)
 *     alignment     (aligned allocations and frees)
 *     wait          with TR_WAIT: the number of operations the slot must
 *                   have seen first (the block came from another thread)
 *     time          ns since the thread's previous event
 *   OP_SYNC is followed by a thread index and a count: wait until that thread
 *   has replayed that many of its items. The converter puts one before a
 *   thread's first call (after the call that preceded it when recorded, as
 *   its creation did) and before the call that followed a thread's last one
 *   (as a join would), so threads live in the replay when they lived in the
 *   recording. With SYNC_COARSE, it is one of those the converter puts every
 *   COARSE_EVERY calls of a thread, to each other thread alive (a loose
 *   replay skips them). With SYNC_STRICT, it is one of those put wherever
 *   the recorded order passes from one thread to another: a strict replay
 *   (allot replay --strict) honours them too, and so makes every call in
 *   the recorded order across all threads.
 *   Little-endian, as on x86-64 and aarch64. */
#ifndef ALLOT_TRACE_H
#define ALLOT_TRACE_H

#include <stdint.h>

enum trace_op {
  OP_MALLOC = 1,
  OP_CALLOC,
  OP_REALLOC, /* from a live block; from NULL it is OP_REALLOC_NEW */
  OP_REALLOCARRAY,
  OP_FREE,
  OP_ALIGNED_ALLOC,
  OP_POSIX_MEMALIGN,
  OP_MEMALIGN,
  OP_VALLOC,
  OP_PVALLOC,
  OP_USABLE_SIZE,
  OP_FREE_SIZED,
  OP_FREE_ALIGNED_SIZED,
  OP_NEW,
  OP_NEW_ARRAY,
  OP_NEW_ALIGNED,
  OP_NEW_ARRAY_ALIGNED,
  OP_NEW_NOTHROW,
  OP_NEW_ARRAY_NOTHROW,
  OP_NEW_ALIGNED_NOTHROW,
  OP_NEW_ARRAY_ALIGNED_NOTHROW,
  OP_DELETE,
  OP_DELETE_ARRAY,
  OP_DELETE_SIZED,
  OP_DELETE_ARRAY_SIZED,
  OP_DELETE_ALIGNED,
  OP_DELETE_ARRAY_ALIGNED,
  OP_DELETE_SIZED_ALIGNED,
  OP_DELETE_ARRAY_SIZED_ALIGNED,
  OP_FREE_NULL,        /* free(NULL) and delete of NULL: no slot */
  OP_REALLOC_NEW,      /* realloc(NULL, n) */
  OP_REALLOCARRAY_NEW, /* reallocarray(NULL, n, m) */
  OP_SYNC,             /* trace only: wait for another thread (see below) */
  OP_REALLOC_RESULT,   /* raw only: the second half of a realloc */
  OP_COUNT
};

#define TR_OP_MASK 0x3f
#define SYNC_COARSE 0x40 /* OP_SYNC flags (the bits of TR_WAIT, TR_FAILED) */
#define SYNC_STRICT 0x80
#define TR_WAIT 0x40   /* a wait count follows */
#define TR_FAILED 0x80 /* the call failed when recorded (NULL, or an error) */

/* ---- raw recording ---- */
#define RAW_MAGIC "ALLOTRAW"
#define RAW_VERSION 1
#define CHUNK_EVENTS 0x4b4e4843u /* "CHNK" */
#define CHUNK_TAIL 0x4c494154u   /* "TAIL" */

typedef struct raw_header {
  char magic[8];
  uint32_t version, pid;
  uint64_t start_ns;    /* CLOCK_MONOTONIC at the start of the recording */
  uint64_t start_ticks; /* the cycle counter then */
  uint64_t reserved[4];
} raw_header_t;

typedef struct raw_chunk {
  uint32_t magic;  /* CHUNK_EVENTS or CHUNK_TAIL */
  uint32_t thread; /* 0, 1, ... in the order threads first allocated */
  uint32_t count;  /* events that follow (tail: 0) */
  uint32_t os_tid;
  uint32_t bytes, reserved; /* packed bytes that follow */
  uint64_t ticks, ns;       /* clocks read together when it was written */
} raw_chunk_t;

#define RAW_SIZE 0x40 /* a size follows */
#define RAW_AUX 0x80  /* an aux value follows */

/* One event, as decoded. */
typedef struct raw_event {
  uint64_t seq_op;  /* sequence number << 8 | op */
  uint64_t time_ns; /* ticks when recorded; ns since start once decoded */
  uint64_t addr;    /* block (result, or the block freed) */
  uint64_t size;    /* size (calloc: element size; usable: the result) */
  uint64_t aux;     /* alignment, or count (calloc, reallocarray) */
} raw_event_t;

typedef struct raw_tail {
  uint64_t end_ns;
  int64_t vm_hwm_kib;    /* peak RSS of the recorded process, -1 unknown */
  uint64_t events, lost; /* recorded; dropped (no buffer memory) */
  uint32_t has_allot, allot_stats_mode;
  /* allot's statistics at exit, when allot was the allocator below */
  uint64_t allot_in_use_peak, allot_in_use, allot_requested;
  uint64_t allot_mallocs, allot_frees, allot_committed;
  uint64_t reserved[6];
} raw_tail_t;

/* ---- trace ---- */
#define TRACE_MAGIC "ALLOTTRC"
#define TRACE_VERSION 1

typedef struct trace_header {
  char magic[8];
  uint32_t version, threads;
  uint64_t events, slots;
  uint64_t duration_ns; /* first to last event */
  /* from the trace itself: bytes asked for by live blocks */
  uint64_t peak_live_bytes, peak_live_blocks;
  uint64_t end_live_bytes, end_live_blocks;
  uint64_t total_bytes, allocations, frees;
  uint64_t foreign_frees; /* frees of blocks not recorded: dropped */
  uint64_t failed;        /* calls that failed when recorded */
  uint64_t op_counts[OP_COUNT];
  raw_tail_t recorded;    /* the recording's tail, zero if it had none */
  uint32_t pid, complete; /* complete: the recording had its tail */
  char command[256];      /* what was recorded, for reports */
  uint64_t reserved[8];
} trace_header_t;

typedef struct trace_thread {
  uint32_t index, os_tid;       /* index: the raw recording's, OP_SYNC's */
  uint64_t events;              /* items in its stream: calls and syncs */
  uint64_t offset, bytes;       /* its packed events in the file */
  uint64_t first_seq, last_seq; /* order of threads' lives, for replay */
} trace_thread_t;

#endif
