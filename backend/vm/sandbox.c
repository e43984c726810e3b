/* sandbox.c: one sandbox (a world's QEMU, its agent and its files) from
 * birth to end: made (its dir and config), started (QEMU launched or taken
 * waiting, a state loaded or a boot, the agent reached and reseeded),
 * reattached or resumed from its suspended state, frozen into a state
 * directory, freed or discarded.  Below the backend
 * ops (vm.c), the pool (pool.c) and the golden state (golden.c); above
 * qemu.c, agent.c, ram.c and files.c.
 *
 *   STATE/vm/<id>/   a sandbox's dir (vm.c lists its files)
 *   a frozen state:  <dir>/{config,devstate} + its RAM file (cow), or
 *                    <dir>/{config,state} (full copy) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend/agent/proto.h"
#include "backend/vm/vm.h"

/* Names in STATE/vm that are not sandboxes. */
static const char *const reserved_names[] = { "snapshots", "golden", "ram", "ram.xfs", "images", "empty" };

bool sandbox_reserved(const char *name)
{
	for (size_t i = 0; i < sizeof(reserved_names) / sizeof(reserved_names[0]); i++)
		if (strcmp(name, reserved_names[i]) == 0)
			return true;
	return false;
}

/* --- sandboxes ------------------------------------------------------------ */

int sandbox_new(struct backend *b, const char *id, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		struct sandbox **out)
{
	struct sandbox *s;
	int r;

	if ((r = vm_id_check(id)) < 0)
		return r;
	if (sandbox_reserved(id))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->b = b;
	s->dirfd = s->agent = -1;
	s->img = img ? img : b->img;
	s->mem_mib = mem_mib ? mem_mib : b->mem_mib;
	s->vcpus = vcpus ? vcpus : b->vcpus;
	s->machine = MACHINE_CURRENT;
	snprintf(s->id, sizeof(s->id), "%s", id);
	if ((r = vm_pathf(s->dir, "%s/%s", b->dir, id)) < 0) {
		free(s);
		return r;
	}
	snprintf(s->qdir, sizeof(s->qdir), "%s", s->dir);
	if (getrandom(&s->next_run, sizeof(s->next_run), 0) != sizeof(s->next_run))
		s->next_run = (uint32_t)time(NULL);
	*out = s;
	return 0;
}

int sandbox_open_dir(struct sandbox *s)
{
	s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return s->dirfd < 0 ? -errno : 0;
}

/* Create s's directory and config; -EEXIST if the id is taken. */
static int sandbox_make_dir(struct sandbox *s)
{
	struct vm_config c;
	int r;

	if (mkdir(s->dir, 0700) < 0) {
		r = -errno;
		if (r != -EEXIST)
			vm_log(s->id, "%s: %s", s->dir, strerror(-r));
		return r;
	}
	vm_config_of(s, &c);
	if ((r = sandbox_open_dir(s)) < 0 || (r = vm_config_write(s->dir, &c, false)) < 0) {
		vm_log(s->id, "%s: %s", s->dir, strerror(-r));
		if (s->dirfd >= 0)
			close(s->dirfd);
		s->dirfd = -1;
		vm_rm_tree(s->dir);
	}
	return r;
}

/* Close what s holds in worldfs; QEMU keeps running if it does. */
void sandbox_free(struct sandbox *s)
{
	if (!s)
		return;
	if (s->agent >= 0)
		close(s->agent);
	qmp_close(s->qmp);
	if (s->dirfd >= 0)
		close(s->dirfd);
	free(s);
}

/* Stop QEMU, delete s's files (its RAM file too), free s. */
int sandbox_discard(struct sandbox *s)
{
	char ram[PATH_MAX];
	int r;

	qemu_kill(s);
	if (s->dirfd >= 0)
		close(s->dirfd);
	s->dirfd = -1;
	r = vm_rm_tree(s->dir);
	if (r < 0)
		vm_log(s->id, "%s: %s", s->dir, strerror(-r));
	if (s->b->ram_ready && ram_path(s->b, s->id, ram) == 0 && unlink(ram) < 0 && errno != ENOENT)
		vm_log(s->id, "%s: %s", ram, strerror(errno));
	sandbox_free(s);
	return r;
}

/* A sandbox for a new world or verse of id, with its dir made and its
 * config written (cow, machine: MACHINE_*); QEMU not started yet. */
int sandbox_make(struct backend *b, const char *id, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		 bool cow, unsigned machine, struct sandbox **out)
{
	struct sandbox *s;
	int r;

	if ((r = sandbox_new(b, id, img, mem_mib, vcpus, &s)) < 0)
		return r;
	s->cow = cow;
	s->machine = machine;
	if ((r = sandbox_make_dir(s)) < 0) {
		sandbox_free(s);
		return r;
	}
	*out = s;
	return 0;
}

/* Bring s up: start QEMU unless it is already waiting (launched), load a
 * state (state_fd >= 0) or boot, wait for the agent, and reseed it.  On
 * failure no process is left. */
int sandbox_start(struct sandbox *s, int state_fd, bool launched, enum reseed reseed, double deadline)
{
	static const uint32_t reseed_flags[] = {
		[RESEED_KERNEL] = 0,
		[RESEED_COPY] = PROTO_RESEED_DIFF_BASE,
		[RESEED_ALL] = PROTO_RESEED_DIFF_BASE | PROTO_RESEED_SESSIONS,
	};
	double t = now_ms();
	int r;

	if (!launched && (r = qemu_launch(s, state_fd >= 0)) < 0)
		return r;
	s->steps.qemu_ms = launched ? 0 : now_ms() - t;
	t = now_ms();
	/* Connect before the state comes: the saved state has the host
	 * connected, and a port found unconnected at load makes the guest
	 * see a hang-up and then a new connection, which its agent only
	 * notices on its next look at the port. */
	if ((r = agent_connect(s, deadline)) < 0)
		goto fail;
	if (state_fd >= 0 && (r = state_load(s, state_fd, deadline)) < 0)
		goto fail;
	s->steps.load_ms = now_ms() - t;
	t = now_ms();
	if ((r = agent_ping(s, deadline)) < 0 ||
	    (reseed != RESEED_NONE && (r = agent_reseed(s, deadline, reseed_flags[reseed])) < 0))
		goto fail;
	s->steps.ready_ms = now_ms() - t;
	s->broken = false;
	return 0;
fail:
	qemu_stop(s);
	return r;
}

/* --- frozen states -------------------------------------------------------- */

/* The directory that holds path (path without its last component). */
static int parent_of(const char *path, char out[PATH_MAX])
{
	const char *slash = strrchr(path, '/');

	if (!slash || slash == path || (size_t)(slash - path) >= PATH_MAX)
		return -EINVAL;
	memcpy(out, path, (size_t)(slash - path));
	out[slash - path] = '\0';
	return 0;
}

int sandbox_reattach(struct sandbox *s, pid_t pid)
{
	double deadline = now_ms() + s->b->exec_timeout_s * 1000.0 + EXEC_GRACE_MS;
	char us[SOCK_PATH_MAX], st[32];
	int r;

	s->pid = pid;
	qemu_sock_path(s, "qmp.sock", false, us);
	if ((r = qmp_open(&s->qmp, us, QMP_TIMEOUT_MS)) < 0) {
		vm_log(s->id, "reattach: %s/qmp.sock: %s", s->dir, strerror(-r));
		return r;
	}
	if ((r = qemu_status(s, st, sizeof(st))) < 0)
		return qemu_cmd_failed(s, r, "query-status");
	/* Stopped mid-snapshot or mid-suspend when worldfs died. */
	if (strcmp(st, "running") != 0 && (r = qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS)) < 0)
		return qemu_cmd_failed(s, r, "cont");
	/* A run may still be going on: PING waits for it (exec_timeout). */
	if ((r = agent_connect(s, deadline)) < 0 || (r = agent_ping(s, deadline)) < 0 ||
	    (r = agent_reseed(s, deadline, 0)) < 0)
		return r;
	s->broken = false;
	return 0;
}

int sandbox_resume_file(struct sandbox *s, const char *path)
{
	char ram[PATH_MAX];
	double t0 = now_ms();
	int fd, r;

	if (s->cow && (!s->b->ram_ready || ram_path(s->b, s->id, ram) < 0 || !vm_exists(ram))) {
		vm_log(s->id, "%s: its RAM file %s/%s.ram is missing", path, s->b->ram_dir, s->id);
		return -ENOENT;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		vm_log(s->id, "%s: %s", path, strerror(-r));
		return r;
	}
	s->steps.from = "suspend";
	/* The same world, resumed: its interpreters keep their generators. */
	r = sandbox_start(s, fd, false, RESEED_KERNEL, now_ms() + RESTORE_TIMEOUT_MS);
	close(fd);
	if (r < 0)
		return r;
	s->steps.total_ms = now_ms() - t0;
	/* Running now: the saved state is older than the world and must not come back. */
	if (unlink(path) < 0 || fsync(s->dirfd) < 0)
		vm_log(s->id, "%s: %s", path, strerror(errno));
	return 0;
}

int state_freeze(struct sandbox *s, const char *dir, const char *tmp, const char *ram,
		 const char *ram_tmp, bool replace, double *frozen, uint64_t *state_bytes)
{
	char state[PATH_MAX], ram_parent[PATH_MAX], parent[PATH_MAX];
	bool ram_placed = false, dir_placed = false;
	struct vm_config c;
	struct stat st;
	int fd = -1, ram_fd = -1, r;

	if ((r = vm_pathf(state, "%s/%s", tmp, s->cow ? "devstate" : "state")) < 0 ||
	    (r = parent_of(dir, parent)) < 0 ||
	    (s->cow && (r = parent_of(ram, ram_parent)) < 0))
		return r;
	if (s->broken)
		return -EIO;
	if (!replace && vm_exists(dir))
		return -EEXIST;
	vm_rm_tree(tmp);
	if (mkdir(tmp, 0700) < 0) {
		r = -errno;
		vm_log(s->id, "%s: %s", tmp, strerror(-r));
		return r;
	}
	fd = open(state, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		vm_log(s->id, "%s: %s", state, strerror(-r));
		goto out;
	}
	if (s->cow && (ram_fd = vm_open_tmp(ram_tmp)) < 0) {
		r = ram_fd;
		vm_log(s->id, "%s: %s", ram_tmp, strerror(-r));
		goto out;
	}
	if ((r = state_save(s, fd, ram_fd, true, frozen)) < 0)
		goto out;
	fault_point("freeze");
	if (fsync(fd) < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		vm_log(s->id, "%s: %s", state, strerror(-r));
		goto out;
	}
	if (s->cow) {
		if (fsync(ram_fd) < 0 || rename(ram_tmp, ram) < 0) {
			r = -errno;
			vm_log(s->id, "%s: %s", ram, strerror(-r));
			goto out;
		}
		ram_placed = true;
		if ((r = vm_fsync_path(ram_parent)) < 0) {
			vm_log(s->id, "%s: %s", ram_parent, strerror(-r));
			goto out;
		}
	}
	vm_config_of(s, &c);
	if ((r = vm_config_write(tmp, &c, true)) < 0 || (r = vm_fsync_path(tmp)) < 0) {
		vm_log(s->id, "%s: %s", tmp, strerror(-r));
		goto out;
	}
	if (replace)
		vm_rm_tree(dir);
	if (rename(tmp, dir) < 0) {
		r = errno == ENOTEMPTY ? -EEXIST : -errno;
		vm_log(s->id, "%s: %s", dir, strerror(-r));
		goto out;
	}
	dir_placed = true;
	if ((r = vm_fsync_path(parent)) < 0)
		vm_log(s->id, "%s: %s", parent, strerror(-r));
	*state_bytes = (uint64_t)st.st_size;
out:
	if (fd >= 0)
		close(fd);
	if (ram_fd >= 0)
		close(ram_fd);
	if (r < 0) {
		vm_rm_tree(dir_placed ? dir : tmp);
		if (s->cow)
			unlink(ram_tmp);
		if (ram_placed)
			unlink(ram);
	}
	return r;
}
