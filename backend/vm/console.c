/* console.c: the guests' serial consoles, bounded.  A guest can write its
 * console as fast as it likes (`cat /dev/zero > /dev/console`), and its
 * console.log sits on the filesystem that holds the registry: so QEMU
 * writes the console into a pipe, and one thread of this backend copies
 * every pipe into its sandbox's console.log, which is rotated to
 * console.log.1 at CONSOLE_ROTATE bytes.  A sandbox's console so takes at
 * most twice that on disk, and its last part stays readable for the
 * failure reasons in the log and in info.  A pipe ends (and its entry
 * with it) when its QEMU exits.  A guest that writes faster than the
 * thread copies waits: the pipe is its only buffer. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/vm/vm.h"

struct console {
	int in;       /* the pipe's read end */
	int dirfd;    /* the sandbox directory (it may be renamed: a pool member) */
	int out;      /* its console.log, or -1 */
	off_t size;   /* bytes in out */
	struct console *prev, *next;
};

struct consoles {
	int epfd;
	int wake[2];  /* a byte here ends the thread */
	pthread_t thread;
	pthread_mutex_t lock;
	struct console *all;  /* every entry, so that the end closes them all */
};

/* Take c out of the list (under cs->lock) and close it. */
static void console_close(struct consoles *cs, struct console *c)
{
	pthread_mutex_lock(&cs->lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		cs->all = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pthread_mutex_unlock(&cs->lock);
	close(c->in);
	close(c->dirfd);
	if (c->out >= 0)
		close(c->out);
	free(c);
}

static int console_log_open(struct console *c, int flags)
{
	struct stat st;

	c->out = openat(c->dirfd, "console.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | flags,
			0600);
	c->size = c->out >= 0 && fstat(c->out, &st) == 0 ? st.st_size : 0;
	return c->out < 0 ? -errno : 0;
}

/* Copy what the pipe holds: 1 copied, 0 nothing there now, -1 the QEMU
 * side is gone. */
static int console_copy(struct console *c)
{
	static char buf[65536];  /* the one thread's (and console_fini's, after it) */
	ssize_t n = read(c->in, buf, sizeof(buf));

	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0)
		return -1;
	if (c->out >= 0 && c->size + n > CONSOLE_ROTATE) {
		close(c->out);
		c->out = -1;
		renameat(c->dirfd, "console.log", c->dirfd, "console.log.1");
		console_log_open(c, O_TRUNC);
	}
	if (c->out >= 0 && write_all(c->out, buf, (size_t)n) == 0)
		c->size += n;
	return 1;
}

static void *console_thread(void *arg)
{
	struct consoles *cs = arg;
	struct epoll_event ev[16];

	for (;;) {
		int n = epoll_wait(cs->epfd, ev, 16, -1);

		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			struct console *c = ev[i].data.ptr;

			if (!c)
				return NULL;  /* the wake pipe: the backend ends */
			if (console_copy(c) < 0) {
				epoll_ctl(cs->epfd, EPOLL_CTL_DEL, c->in, NULL);
				console_close(cs, c);
			}
		}
	}
	return NULL;
}

int console_init(struct backend *b)
{
	struct consoles *cs = calloc(1, sizeof(*cs));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	if (!cs)
		return -ENOMEM;
	pthread_mutex_init(&cs->lock, NULL);
	cs->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (cs->epfd < 0 || pipe2(cs->wake, O_CLOEXEC) < 0 ||
	    epoll_ctl(cs->epfd, EPOLL_CTL_ADD, cs->wake[0], &ev) < 0 ||
	    pthread_create(&cs->thread, NULL, console_thread, cs) != 0) {
		int r = -errno;

		if (cs->epfd >= 0)
			close(cs->epfd);
		free(cs);
		return r ? r : -EAGAIN;
	}
	b->consoles = cs;
	return 0;
}

void console_fini(struct backend *b)
{
	struct consoles *cs = b->consoles;

	if (!cs)
		return;
	if (write(cs->wake[1], "", 1) == 1)
		pthread_join(cs->thread, NULL);
	/* What is left: the last output of QEMUs that just quit, and the pipes
	 * of QEMUs left running (they see EPIPE from now on, never a block). */
	while (cs->all) {
		struct console *c = cs->all;

		while (console_copy(c) > 0)
			;
		console_close(cs, c);
	}
	pthread_mutex_destroy(&cs->lock);
	close(cs->wake[0]);
	close(cs->wake[1]);
	close(cs->epfd);
	free(cs);
	b->consoles = NULL;
}

int console_pipe(struct sandbox *s, int *qemu_end)
{
	struct consoles *cs = s->b->consoles;
	struct epoll_event ev = { .events = EPOLLIN };
	struct console *c;
	int p[2];

	*qemu_end = -1;
	if (!cs)
		return -ENODEV;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	c = calloc(1, sizeof(*c));
	if (!c || (c->dirfd = fcntl(s->dirfd, F_DUPFD_CLOEXEC, 3)) < 0) {
		int r = c ? -errno : -ENOMEM;

		free(c);
		close(p[0]);
		close(p[1]);
		return r;
	}
	c->in = p[0];
	fcntl(c->in, F_SETFL, O_NONBLOCK);
	console_log_open(c, O_TRUNC);
	ev.data.ptr = c;
	pthread_mutex_lock(&cs->lock);
	c->next = cs->all;
	if (c->next)
		c->next->prev = c;
	cs->all = c;
	pthread_mutex_unlock(&cs->lock);
	if (epoll_ctl(cs->epfd, EPOLL_CTL_ADD, c->in, &ev) < 0) {
		int r = -errno;

		console_close(cs, c);
		close(p[1]);
		return r;
	}
	*qemu_end = p[1];
	return 0;
}
