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
};

struct consoles {
	int epfd;
	int wake[2];  /* a byte here ends the thread */
	pthread_t thread;
};

static void console_close(struct console *c)
{
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

/* Copy what the pipe holds; false once the QEMU side is gone. */
static bool console_copy(struct console *c)
{
	static char buf[65536];  /* the one thread's */
	ssize_t n = read(c->in, buf, sizeof(buf));

	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return false;
	if (c->out >= 0 && c->size + n > CONSOLE_ROTATE) {
		close(c->out);
		c->out = -1;
		renameat(c->dirfd, "console.log", c->dirfd, "console.log.1");
		console_log_open(c, O_TRUNC);
	}
	if (c->out >= 0 && write_all(c->out, buf, (size_t)n) == 0)
		c->size += n;
	return true;
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
			if (!console_copy(c)) {
				epoll_ctl(cs->epfd, EPOLL_CTL_DEL, c->in, NULL);
				console_close(c);
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
	/* The entries still open (QEMUs left running) are closed with the
	 * process; the pipes' QEMU ends then see EPIPE, never a block. */
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
	if (epoll_ctl(cs->epfd, EPOLL_CTL_ADD, c->in, &ev) < 0) {
		int r = -errno;

		console_close(c);
		close(p[1]);
		return r;
	}
	*qemu_end = p[1];
	return 0;
}
