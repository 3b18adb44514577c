/* largewalk_pause.c: hostile_largewalk with its workers stopped, now and
 * then, where a thread has been handed a large block and not yet said so
 * (allot-testhooks; largewalk.c says why). */
#define LARGEWALK_PAUSE 1
#include "largewalk.c"
