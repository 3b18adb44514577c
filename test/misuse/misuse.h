/* misuse.h: what a misuse case is, shared by the C and C++ cases of the
 * misuse suite (misuse.c runs them). */
#ifndef MISUSE_H
#define MISUSE_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct misuse_case {
  const char *name;  /* id, for --run and the claims file */
  const char *group; /* the kind of misuse: a row group in the table */
  const char *title; /* what exactly the case does */
  int flags;         /* 1: run for every block size; 2: checks a property */
  void (*run)(size_t n);
} misuse_case_t;

/* Markers the parent reads (see misuse.c). */
void misuse_begin(void);
void misuse_wrote(void);
void misuse_end(void);
void misuse_property(bool ok);
void *misuse_launder(void *p);

const misuse_case_t *misuse_cxx_cases(size_t *n);

#ifdef __cplusplus
}
#endif
#endif
