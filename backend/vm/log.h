/* log.h: the one way backend/vm writes a line to the log (stderr, which
 * worldfs copies to STATE/worldfs.log with a timestamp).  Its own header
 * so that qmp.c, which knows nothing else of the backend, logs the same
 * way. */
#ifndef WORLDFS_VM_LOG_H
#define WORLDFS_VM_LOG_H

/* The id of the host's lines (KVM, the RAM directory, QMP), which name
 * their subject themselves. */
#define VM_LOG_HOST ""

/* One line, written with one fprintf so that the lines of parallel
 * sandboxes don't mix:
 *   vm_log("w1", ...)         "worldfs: vm w1: ..."   a sandbox's (or the pool's)
 *   vm_log(NULL, ...)         "worldfs: vm: ..."      the backend's
 *   vm_log(VM_LOG_HOST, ...)  "worldfs: ..."          the host's */
void vm_log(const char *id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
