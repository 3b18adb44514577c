/* dlib.c: a library that allocates, for hostile_dlopen. It is loaded and
 * unloaded hundreds of times: its constructor and destructor allocate and
 * free, it hands blocks to the program and frees the program's blocks, runs
 * a thread of its own, and has thread-local variables, whose storage glibc
 * allocates with malloc when a dlopened library's TLS is first touched and
 * frees on thread exit or dlclose. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TABLE 100

static void *table[TABLE];
static __thread char tls_buf[3000];
static __thread void *tls_block;

__attribute__((constructor)) static void dl_init(void) {
  for (int i = 0; i < TABLE; i++) {
    table[i] = malloc(16 + (size_t)i * 90);
    if (table[i]) memset(table[i], i, 16);
  }
}

__attribute__((destructor)) static void dl_fini(void) {
  for (int i = 0; i < TABLE; i++)
    free(table[i]);
}

/* A block filled with tag, for the program to check and free after the
 * library is gone. */
void *dl_alloc(size_t size, unsigned char tag) {
  unsigned char *p = malloc(size);
  if (p) memset(p, tag, size);
  return p;
}

void dl_free(void *p) {
  free(p);
}

/* Touches this thread's TLS (allocated by glibc on first use) and keeps a
 * block in it; returns 0 when the TLS was as left by the last call. */
int dl_tls(unsigned char tag) {
  int ok = tls_buf[0] == 0 || tls_buf[2999] == tls_buf[0];
  memset(tls_buf, tag, sizeof tls_buf);
  free(tls_block);
  tls_block = malloc(100 + tag);
  return ok ? 0 : 1;
}

/* Releases what dl_tls kept in this thread. */
void dl_tls_done(void) {
  free(tls_block);
  tls_block = NULL;
}

static void *thread_main(void *arg) {
  void *keep[64];
  for (int i = 0; i < 64; i++)
    keep[i] = malloc(32 + (size_t)i * 200);
  for (int i = 0; i < 64; i += 2)
    free(keep[i]);
  dl_tls((unsigned char)(uintptr_t)arg);
  dl_tls_done();
  void **out = malloc(sizeof(void *) * 32);
  if (out)
    for (int i = 0; i < 32; i++)
      out[i] = keep[2 * i + 1];
  return out;
}

/* Runs a thread inside the library; returns the 32 blocks it left, in a
 * block the caller frees too. */
void **dl_thread(void) {
  pthread_t t;
  void *res = NULL;
  if (pthread_create(&t, NULL, thread_main, (void *)(uintptr_t)7) != 0)
    return NULL;
  pthread_join(t, &res);
  return res;
}
