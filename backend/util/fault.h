/* fault.h: crash points for the test suite.  WORLDFS_FAULT=NAME[:N] in
 * worldfs's environment makes the Nth arrival (default the first) at
 * fault_point("NAME") end the process at once with _exit(FAULT_EXIT), as
 * a crash or a kill -9 at that instant would: between the backend's work
 * and the registry's commit, in the middle of a freeze, a suspend or a
 * pool take.  tests/integration/t_crash.sh mounts again after each and
 * checks that nothing acknowledged was lost and nothing is left over.
 * Without the variable a fault point costs one comparison. */
#ifndef WORLDFS_FAULT_H
#define WORLDFS_FAULT_H

#define FAULT_EXIT 99

void fault_point(const char *name);

#endif
