/* clock.h: the one clock of worldfs (host and agent): monotonic
 * milliseconds, deadlines as poll(2) time-outs, and sleeping. */
#ifndef WORLDFS_CLOCK_H
#define WORLDFS_CLOCK_H

/* CLOCK_MONOTONIC in milliseconds, with the fraction: durations are
 * differences of two calls, deadlines now_ms() + a time-out. */
double now_ms(void);

/* Milliseconds left until deadline as poll(2)'s time-out: -1 (wait
 * forever) when deadline < 0, 0 once it has passed, otherwise rounded up
 * so a wait never ends just before the deadline. */
int ms_left(double deadline);

/* Sleep ms milliseconds, across signals. */
void sleep_ms(long ms);

#endif
