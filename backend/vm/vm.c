/* vm.c: the "vm" backend's ops (vm_backend_ops): one QEMU microVM per
 * world, driven over QMP (qmp.c, qemu.c), with the world's session in the
 * guest agent, reached over a virtio-serial port (agent.c,
 * backend/agent/proto.h).  The ops put together what the files below
 * offer: sandboxes started and frozen (sandbox.c), taken from the warm
 * pool (pool.c) or branched from the golden state (golden.c).
 *
 * Copy-on-write (the default where ram.c finds or makes a RAM directory):
 * a VM's RAM is a file mapped share=on, so a saved state is QEMU's device
 * state only (~60 KB) plus a FICLONE of the RAM file: freezing and
 * branching cost the same whatever the guest's size.  Otherwise (and with
 * -o branch=copy) a state is QEMU's full migration stream, RAM included.
 * Each VM and snapshot records which kind it is in its config.
 *
 * Files, all below STATE/vm/:
 *   <id>/config         mem_mib, vcpus, ram=file when cow, machine, image
 *   <id>/qemu.pid       written by QEMU; -pidfile also marks the process as ours
 *   <id>/qemu.origin    a former pool member: the dir QEMU was started in
 *   <id>/qmp.sock, <id>/agent.sock, <id>/qemu.log (QEMU's stderr)
 *   <id>/console.log[.1] the guest's console, copied there and rotated (console.c)
 *   <id>/suspend.state  the state saved by suspend() (device state only when cow)
 *   snapshots/<snap>/{config,state}     full copy
 *   snapshots/<snap>/{config,devstate}  cow, with ram/snapshots/<snap>.ram
 *   golden/, ram/, ram.xfs              golden.c, ram.c
 *   images/<digest>/                    image.c
 *   .pool-<hex>/                        pool.c
 * QEMU runs daemonized in its own session, so it survives worldfs dying and
 * resume() can reattach to it. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "backend/agent/proto.h"
#include "backend/vm/vm.h"

/* nowatchdog, no transparent huge pages and no proactive compaction: each
 * keeps waking an idle guest (khugepaged, kcompactd every 500 ms, the
 * soft-lockup timer), and under TCG every wake-up costs the host; together
 * they made an idle VM's QEMU wake 19 times a second, now 4. */
static const char kernel_append[] =
	"console=ttyS0 quiet panic=-1 cryptomgr.notests tsc=reliable no_timer_check pci=off mitigations=off "
	"nowatchdog transparent_hugepage=never sysctl.vm.compaction_proactiveness=0";

/* The handle the registry keeps for a running world: its QEMU's pid, by
 * which resume() and probe() know the process again. */
static void handle_set(const struct sandbox *s, char handle[BACKEND_HANDLE_MAX])
{
	snprintf(handle, BACKEND_HANDLE_MAX, "%d", (int)s->pid);
}

/* A sandbox for a new world or verse: a QEMU from the pool (*pooled; its
 * dir and RAM file already renamed to id) if pooled is not NULL, else a
 * new dir to start one in.  The pool's QEMUs are all MACHINE_CURRENT, of
 * the mount's image. */
static int take_or_make(struct backend *b, const char *id, const struct vm_image *img, unsigned mem_mib,
			unsigned vcpus, bool cow, unsigned machine, struct sandbox **out, bool *pooled)
{
	int r;

	if (pooled)
		*pooled = false;
	if (pooled && cow && machine == MACHINE_CURRENT && img == b->img) {
		r = pool_take(b, id, mem_mib, vcpus, out);
		if (r == 0) {
			*pooled = (*out)->steps.pooled = true;
			return 0;
		}
		if (r != -ENOENT)
			return r;
	}
	return sandbox_make(b, id, img, mem_mib, vcpus, cow, machine, out);
}

/* --- backend ops ---------------------------------------------------------- */

static int vm_init(struct backend **out, struct backend_config *cfg, char *err, size_t errlen)
{
	char args[sizeof(kernel_append) + 32];
	char path[PATH_MAX];
	struct backend *b;
	int r;

	if (!cfg->state_dir || !cfg->image || !cfg->image_base) {
		snprintf(err, errlen, "vm: no state directory or image");
		return -EINVAL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "vm: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	image_init(b, cfg->image_base);
	b->vcpus = cfg->vcpus ? cfg->vcpus : 1;
	b->exec_timeout_s = cfg->exec_timeout_s ? cfg->exec_timeout_s : DEFAULT_EXEC_TIMEOUT_S;
	b->output_max = cfg->output_max;
	b->reseed_sessions = cfg->reseed_sessions;

	/* Absolute paths throughout: QEMU runs from / once daemonized. */
	if ((r = vm_pathf(path, "%s/vm/snapshots", cfg->state_dir)) < 0 || (r = vm_mkdir_p(path)) < 0) {
		snprintf(err, errlen, "%s/vm/snapshots: %s", cfg->state_dir, strerror(-r));
		goto fail;
	}
	if ((r = vm_pathf(path, "%s/vm", cfg->state_dir)) < 0 || !realpath(path, b->dir)) {
		r = r < 0 ? r : -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		goto fail;
	}
	if ((r = vm_pathf(b->snap_dir, "%s/snapshots", b->dir)) < 0 ||
	    (r = vm_pathf(b->images_dir, "%s/images", b->dir)) < 0 ||
	    (mkdir(b->images_dir, 0700) < 0 && (r = -errno) != -EEXIST)) {
		snprintf(err, errlen, "%s: %s", b->dir, strerror(-r));
		goto fail;
	}
	if ((r = vm_find_program("qemu-system-x86_64", b->qemu)) < 0) {
		snprintf(err, errlen, "qemu-system-x86_64: not found in PATH (Debian: apt install qemu-system-x86)");
		goto fail;
	}
	b->kvm = host_use_kvm(cfg->accel);
	if ((r = host_confine(b, cfg->qemu_user, err, errlen)) < 0)
		goto fail;
	/* The test suite's hostile guest (t_hostile.sh): the agent then
	 * misbehaves on request, as an untrusted guest may. */
	snprintf(args, sizeof(args), "%s%s", kernel_append, getenv("WORLDFS_TEST_HOSTILE") ? " worldfs.hostile=1" : "");
	snprintf(b->append, sizeof(b->append), "%s", args);
	if (!b->kvm) {
		unsigned long khz = host_tsc_khz();

		if (khz)
			snprintf(b->append, sizeof(b->append), "%s tsc_early_khz=%lu", args, khz);
	}
	if ((r = image_open(b, cfg->image, cfg->image_base, &b->img, err, errlen)) < 0)
		goto fail;
	b->mem_mib = cfg->mem_mib ? cfg->mem_mib : b->img->mem_mib;
	cfg->mem_mib = b->mem_mib;
	cfg->vcpus = b->vcpus;
	vm_log(NULL, "image %s (%s), %u MiB, %s", b->img->name, b->img->dir, b->mem_mib,
	       b->img->root[0] ? "root disk" : "initramfs root");
	pthread_mutex_init(&b->golden_lock, NULL);
	if ((r = console_init(b)) < 0) {
		snprintf(err, errlen, "vm: console thread: %s", strerror(-r));
		goto fail;
	}
	ram_init(b, !cfg->branch_copy);
	if ((r = golden_init(b, args)) < 0) {
		vm_log(NULL, "%s/golden: %s: every create boots cold", b->dir, strerror(-r));
		b->golden_id[0] = '\0';
	}
	vm_tmp_sweep(b->snap_dir);
	vm_tmp_sweep(b->golden_dir);
	pool_sweep(b);
	if (b->cow && cfg->pool_size > 0 && (r = pool_start(b, cfg->pool_size)) < 0)
		vm_log(NULL, "warm pool: %s: none", strerror(-r));
	*out = b;
	return 0;
fail:
	console_fini(b);
	image_fini(b);
	free(b);
	return r;
}

static void vm_fini(struct backend *b)
{
	pool_stop(b);
	console_fini(b);
	ram_fini(b);
	pthread_mutex_destroy(&b->golden_lock);
	image_fini(b);
	free(b);
}

/* A fresh world booted from the kernel; reseeded unless golden (the
 * caller freezes it first, then reseeds). */
static int create_cold(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus, bool golden,
		       struct sandbox **out, double deadline)
{
	char ram[PATH_MAX];
	struct sandbox *s;
	int r;

	if ((r = take_or_make(b, id, b->img, mem_mib, vcpus, b->cow, MACHINE_CURRENT, &s, NULL)) < 0)
		return r;
	if (b->cow && ((r = ram_path(b, id, ram)) < 0 || (r = ram_create(ram, s->mem_mib)) < 0)) {
		vm_log(id, "%s: %s", ram, strerror(-r));
		goto fail;
	}
	s->steps.from = "boot";
	if ((r = sandbox_start(s, -1, false, golden ? RESEED_NONE : RESEED_ALL, deadline)) < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	sandbox_discard(s);
	return r;
}

/* A fresh world as a branch of the golden state (-ENOENT: none yet;
 * *unusable: there is one, but it did not come up). */
static int create_from_golden(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
			      struct sandbox **out, double deadline, bool *unusable)
{
	char gram[PATH_MAX], ram[PATH_MAX];
	struct sandbox *s = NULL;
	bool pooled;
	double t;
	int fd, r;

	*unusable = false;
	fd = golden_open(b, b->img, mem_mib, vcpus, gram);
	if (fd < 0)
		return fd;
	t = now_ms();
	if ((r = take_or_make(b, id, b->img, mem_mib, vcpus, true, MACHINE_CURRENT, &s, &pooled)) < 0) {
		close(fd);
		return r;
	}
	s->steps.prepare_ms = now_ms() - t;
	t = now_ms();
	if ((r = ram_path(b, id, ram)) == 0 && (r = ram_clone(gram, ram)) < 0)
		vm_log(id, "%s -> %s: %s", gram, ram, strerror(-r));
	s->steps.clone_ms = now_ms() - t;
	s->steps.from = "golden";
	/* Other creates may clone it meanwhile; only golden_drop() must wait. */
	pthread_mutex_unlock(&b->golden_lock);
	if (r == 0)
		r = sandbox_start(s, fd, pooled, RESEED_ALL, deadline);
	pthread_mutex_lock(&b->golden_lock);
	close(fd);
	if (r < 0) {
		sandbox_discard(s);
		*unusable = true;
		return r;
	}
	*out = s;
	return 0;
}

static int vm_create(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus,
		     struct sandbox **out, char handle[BACKEND_HANDLE_MAX], double *boot_ms)
{
	double t0 = now_ms(), deadline = t0 + BOOT_TIMEOUT_MS;
	struct sandbox *s = NULL;
	bool unusable = false;
	int r;

	mem_mib = mem_mib ? mem_mib : b->mem_mib;
	vcpus = vcpus ? vcpus : b->vcpus;
	if ((r = vm_room(b, id, mem_mib)) < 0)
		return r;
	if (!b->cow || !b->golden_id[0]) {
		r = create_cold(b, id, mem_mib, vcpus, false, &s, deadline);
		goto done;
	}
	/* Held while the first create of a size boots and freezes the golden
	 * state, so that the creates beside it wait and branch from it. */
	pthread_mutex_lock(&b->golden_lock);
	r = create_from_golden(b, id, mem_mib, vcpus, &s, deadline, &unusable);
	if (unusable) {
		vm_log(id, "the golden state did not come up (%s): dropped; booting cold", strerror(-r));
		golden_drop(b, b->img, mem_mib, vcpus);
	}
	if (r == -ENOENT || unusable) {
		r = create_cold(b, id, mem_mib, vcpus, true, &s, deadline);
		if (r == 0)
			golden_bake(s);
		pthread_mutex_unlock(&b->golden_lock);
		/* The bake may have taken a while (a warm-up run): the
		 * reseed gets its own time. */
		if (r == 0 && (r = agent_reseed(s, now_ms() + RESTORE_TIMEOUT_MS,
						PROTO_RESEED_SESSIONS | PROTO_RESEED_DIFF_BASE)) < 0) {
			sandbox_discard(s);
			s = NULL;
		}
	} else {
		pthread_mutex_unlock(&b->golden_lock);
	}
done:
	if (r < 0)
		return r;
	s->steps.total_ms = now_ms() - t0;
	handle_set(s, handle);
	if (boot_ms)
		*boot_ms = s->steps.total_ms;
	pool_hold(b);
	*out = s;
	return 0;
}

static int vm_fs(struct sandbox *s, const struct fs_req *req, uint8_t **reply, size_t *len)
{
	return agent_fs(s, req, reply, len);
}

static int vm_exec(struct sandbox *s, const char *code, size_t len, struct run_result *res)
{
	return agent_exec(s, code, len, 0, res);
}

/* A snapshot's dir and, if tmp is not NULL, the temp dir it is made in. */
static int snapshot_paths(const struct backend *b, const char *snap_id, char dir[PATH_MAX], char tmp[PATH_MAX])
{
	int r = vm_id_check(snap_id);

	if (r == 0)
		r = vm_pathf(dir, "%s/%s", b->snap_dir, snap_id);
	if (r == 0 && tmp)
		r = vm_pathf(tmp, "%s/.%s.tmp", b->snap_dir, snap_id);
	return r;
}
/* Snapshot into a temporary directory, renamed into place once durable:
 * a crash leaves either no snapshot or a whole one (a frozen RAM file
 * without its dir is garbage, collected at the next mount). */
static int vm_snapshot(struct sandbox *s, const char *snap_id, struct snapshot_info *info)
{
	char dir[PATH_MAX], tmp[PATH_MAX], ram[PATH_MAX] = "", ram_tmp[PATH_MAX] = "";
	uint64_t bytes = 0;
	double frozen = 0;
	int r;

	if ((r = snapshot_paths(s->b, snap_id, dir, tmp)) < 0 || (r = vm_room(s->b, s->id, s->mem_mib)) < 0)
		return r;
	if (s->cow && ((r = ram_snapshot_path(s->b, snap_id, ram)) < 0 ||
		       (r = vm_pathf(ram_tmp, "%s/snapshots/.%s.ram.tmp", s->b->ram_dir, snap_id)) < 0))
		return r;
	if ((r = state_freeze(s, dir, tmp, ram, ram_tmp, false, &frozen, &bytes)) < 0)
		return r;
	/* What the snapshot holds; the RAM's blocks are shared until written. */
	info->size_bytes = bytes + (s->cow ? (uint64_t)s->mem_mib << 20 : 0);
	info->snapshot_time_ms = frozen;
	return 0;
}

static int vm_snapshot_delete(struct backend *b, const char *snap_id)
{
	char dir[PATH_MAX], ram[PATH_MAX];
	int r;

	if ((r = snapshot_paths(b, snap_id, dir, NULL)) < 0)
		return r;
	if (!vm_exists(dir))
		return -ENOENT;
	/* The dir is the snapshot: its RAM file goes after it. */
	if ((r = vm_rm_tree(dir)) == 0)
		r = vm_fsync_path(b->snap_dir);
	if (r < 0)
		vm_log(NULL, "%s: %s", dir, strerror(-r));
	if (r == 0 && b->ram_ready && ram_snapshot_path(b, snap_id, ram) == 0 && unlink(ram) < 0 && errno != ENOENT)
		vm_log(NULL, "%s: %s", ram, strerror(errno));
	return r;
}

/* The parent's live state for a branch: an unnamed file in the child's
 * directory, so nothing is left to clean up whatever happens.  A cow
 * parent's RAM is cloned into ram_to while it is stopped. */
static int branch_state_of_parent(struct sandbox *parent, struct sandbox *child, int ram_to, double *frozen)
{
	int fd = openat(child->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600), r;

	if (fd < 0) {
		r = -errno;
		vm_log(child->id, "%s: temporary state file: %s", child->dir, strerror(-r));
		return r;
	}
	r = state_save(parent, fd, ram_to, true, frozen);
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* A snapshot's state file, its config and image (and its RAM file, ram[0]
 * == 0 when it has none). */
static int branch_state_of_snapshot(struct backend *b, const char *snap_id, struct vm_config *c,
				    const struct vm_image **img, char ram[PATH_MAX])
{
	char dir[PATH_MAX], state[PATH_MAX];
	int r, fd;

	ram[0] = '\0';
	if ((r = snapshot_paths(b, snap_id, dir, NULL)) < 0)
		return r;
	if ((r = vm_config_read(dir, c)) < 0) {
		if (r != -ENOENT)
			vm_log(NULL, "%s/config: %s", dir, strerror(-r));
		return r;
	}
	if (!(*img = image_find(b, c->image))) {
		vm_log(NULL, "snapshot %s: its guest image is gone", snap_id);
		return -EIO;
	}
	if ((r = vm_pathf(state, "%s/%s", dir, c->cow ? "devstate" : "state")) < 0 ||
	    (c->cow && (r = ram_snapshot_path(b, snap_id, ram)) < 0))
		return r;
	if (c->cow && !b->ram_ready) {
		vm_log(NULL, "snapshot %s: its RAM is in %s, which is not available", snap_id,
		       b->ram_dir);
		return -EIO;
	}
	fd = open(state, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		vm_log(NULL, "%s: %s", state, strerror(-r));
		return r;
	}
	return fd;
}

/* One child of a branch: its sandbox, the state it loads, and how its
 * start went (children start side by side, a thread each). */
struct child {
	struct sandbox *s;
	bool pooled;
	int state_fd;
	int ram_to;
	double deadline;
	enum reseed reseed;
	int r;
};

/* The children to start, taken in turn by a few threads. */
struct children {
	struct child *k;
	size_t n;
	size_t next;  /* atomic: the next child to start */
};

static void *children_work(void *arg)
{
	struct children *c = arg;
	size_t i;

	while ((i = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED)) < c->n) {
		struct child *k = &c->k[i];

		k->r = sandbox_start(k->s, k->state_fd, k->pooled, k->reseed, k->deadline);
	}
	return NULL;
}

/* A second open file of fd's file (its own offset): each child's QEMU
 * reads the one state from the start. */
static int reopen(int fd)
{
	char path[64];
	int r;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	r = open(path, O_RDONLY | O_CLOEXEC);
	return r < 0 ? -errno : r;
}

/* Start every child, a few side by side: as many as the host has CPUs
 * twice over (QEMU starting and a guest warming up are CPU work; 32 at
 * once on 2 CPUs only thrash).  The first failure, or 0. */
static int children_start(struct child *k, size_t n)
{
	struct children c = { .k = k, .n = n, .next = 0 };
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t workers = (size_t)(cpus > 0 ? 2 * cpus : 4), started = 0;
	pthread_t *t;
	int r = 0;

	if (workers > n)
		workers = n;
	t = workers > 1 ? calloc(workers - 1, sizeof(*t)) : NULL;
	while (t && started < workers - 1 && pthread_create(&t[started], NULL, children_work, &c) == 0)
		started++;
	children_work(&c);  /* this thread too (alone if no thread could start) */
	for (size_t i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	for (size_t i = 0; i < n && !r; i++)
		r = k[i].r;
	free(t);
	return r;
}

/* The children's state and RAM from one instant.  From a live parent: one
 * freeze, with the RAM cloned for the first child while the parent is
 * stopped and from that clone for the others once it runs again.  From a
 * snapshot: its state file, its RAM cloned for each. */
static int children_fill(struct backend *b, struct sandbox *parent, int snap_fd, const char *snap_ram,
			 struct child *k, size_t n, struct branch_info *info, double *frozen)
{
	char ram[PATH_MAX];
	double t = now_ms();
	int src = -1, r = 0;
	size_t i = 0;

	if (parent) {
		r = branch_state_of_parent(parent, k[0].s, k[0].ram_to, frozen);
		k[0].s->steps.freeze_ms = *frozen;
		k[0].s->steps.record_ms = parent->record_ms;
		k[0].s->steps.clone_ms = k[0].s->cow ? parent->clone_in_freeze_ms : 0;
		if (info->parent_done)
			info->parent_done(info->parent_done_arg);
		if (r < 0)
			return r;
		k[0].state_fd = r;
		r = 0;
		i = 1;
		if (n > 1 && k[0].s->cow) {
			if ((r = ram_path(b, k[0].s->id, ram)) < 0)
				return r;
			src = open(ram, O_RDONLY | O_CLOEXEC);
		}
		snap_fd = k[0].state_fd;
	} else if (k[0].s->cow) {
		src = open(snap_ram, O_RDONLY | O_CLOEXEC);
	}
	if (k[0].s->cow && i < n && src < 0) {
		r = -errno;
		vm_log(k[0].s->id, "%s: %s", parent ? ram : snap_ram, strerror(-r));
		return r;
	}
	for (; i < n && r == 0; i++) {
		t = now_ms();
		if ((r = k[i].state_fd = reopen(snap_fd)) < 0)
			break;
		r = 0;
		if (k[i].s->cow && (r = ram_clone_fd(src, k[i].ram_to)) < 0)
			vm_log(k[i].s->id, "cloning its RAM: %s", strerror(-r));
		k[i].s->steps.freeze_ms = *frozen;
		k[i].s->steps.record_ms = k[0].s->steps.record_ms;
		k[i].s->steps.clone_ms = now_ms() - t;
	}
	if (src >= 0)
		close(src);
	/* Every child loads a state: one without would boot a fresh world. */
	for (i = 0; i < n && r == 0; i++)
		if (k[i].state_fd < 0)
			r = -EIO;
	return r;
}

static int vm_branch(struct backend *b, struct sandbox *parent, const char *snap_id, const char *const ids[],
		     size_t n, struct sandbox *out[], char handles[][BACKEND_HANDLE_MAX], struct branch_info *info)
{
	double t0 = now_ms(), frozen = 0, deadline;
	char src_ram[PATH_MAX] = "", ram[PATH_MAX];
	const struct vm_image *img;
	struct vm_config c;
	struct child *k;
	size_t made = 0;
	int snap_fd = -1, r = 0;

	if (n == 0)
		return -EINVAL;
	k = calloc(n, sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		k[i].state_fd = k[i].ram_to = -1;
	if (parent) {
		if (parent->broken) {
			r = -EIO;
			goto out;
		}
		vm_config_of(parent, &c);
		img = parent->img;
	} else if (!snap_id) {
		r = -EINVAL;
		goto out;
	} else if ((r = snap_fd = branch_state_of_snapshot(b, snap_id, &c, &img, src_ram)) < 0) {
		goto out;
	}
	if ((r = vm_room(b, ids[0], (unsigned)(c.mem_mib * (n < 4096 ? n : 4096)))) < 0)
		goto out;
	for (; made < n; made++) {
		double t = now_ms();

		if ((r = take_or_make(b, ids[made], img, c.mem_mib, c.vcpus, c.cow, c.machine, &k[made].s,
				      &k[made].pooled)) < 0)
			goto fail;
		k[made].s->steps.prepare_ms = now_ms() - t;
		k[made].s->steps.from = parent ? "parent" : "snapshot";
		if (c.cow && ((r = ram_path(b, ids[made], ram)) < 0 || (r = k[made].ram_to = ram_open_dest(ram)) < 0)) {
			vm_log(ids[made], "%s: %s", ram, strerror(-r));
			made++;
			goto fail;
		}
	}
	r = children_fill(b, parent, snap_fd, src_ram, k, n, info, &frozen);
	parent = NULL;  /* the parent runs on: not to be touched from here */
	if (r < 0)
		goto fail;
	deadline = now_ms() + RESTORE_TIMEOUT_MS;
	for (size_t i = 0; i < n; i++) {
		close(k[i].ram_to);
		k[i].ram_to = -1;
		k[i].deadline = deadline;
		k[i].reseed = b->reseed_sessions ? RESEED_ALL : RESEED_COPY;
	}
	if ((r = children_start(k, n)) < 0)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		k[i].s->steps.total_ms = now_ms() - t0;
		handle_set(k[i].s, handles[i]);
		pool_hold(b);
		out[i] = k[i].s;
	}
	info->snapshot_time_ms = frozen;
	info->total_ms = now_ms() - t0;
	r = 0;
	goto out;
fail:
	if (parent && info->parent_done)
		info->parent_done(info->parent_done_arg);
	for (size_t i = 0; i < made; i++)
		sandbox_discard(k[i].s);
out:
	for (size_t i = 0; i < n; i++) {
		if (k[i].ram_to >= 0)
			close(k[i].ram_to);
		if (k[i].state_fd >= 0)
			close(k[i].state_fd);
	}
	if (snap_fd >= 0)
		close(snap_fd);
	free(k);
	return r;
}

static int vm_destroy(struct sandbox *s)
{
	struct backend *b = s->b;
	int r = sandbox_discard(s);

	pool_release(b);
	return r;
}

/* The run in progress ends when its QEMU does: the agent's socket closes
 * under agent_exec, which returns at once.  s->pid and s->qdir are set
 * before the sandbox is handed out and not changed by exec. */
static void vm_interrupt(struct sandbox *s)
{
	if (qemu_pid_is_ours(s->pid, s->qdir) && kill(s->pid, SIGKILL) == 0)
		vm_log(s->id, "run interrupted: qemu killed (world removed or collapsed)");
}

/* Save to suspend.state and quit.  On failure QEMU keeps running, so the
 * next mount reattaches to it instead of losing the world.  A cow VM's
 * RAM file is made durable before the state that goes with it. */
static int vm_suspend(struct sandbox *s)
{
	char tmp[PATH_MAX], path[PATH_MAX], ram[PATH_MAX], config[PATH_MAX];
	struct backend *b = s->b;
	double frozen;
	int fd = -1, r;

	if ((r = vm_pathf(tmp, "%s/suspend.state.tmp", s->dir)) < 0 ||
	    (r = vm_pathf(path, "%s/suspend.state", s->dir)) < 0 ||
	    (r = vm_pathf(config, "%s/config", s->dir)) < 0 || (r = ram_path(b, s->id, ram)) < 0)
		goto out;
	if (!s->qmp) {
		r = -EIO;
		goto out;
	}
	fd = vm_open_tmp(tmp);
	if (fd < 0) {
		r = fd;
		vm_log(s->id, "%s: %s", tmp, strerror(-r));
		goto out;
	}
	if ((r = state_save(s, fd, -1, false, &frozen)) < 0)
		goto out;
	fault_point("suspend");
	/* Durable before QEMU goes: the RAM file and its directory entry, the
	 * config, the state, and the directories that name them (the sandbox
	 * dir and the RAM file were made at create or branch, unsynced). */
	if ((s->cow && ((r = vm_fsync_path(ram)) < 0 || (r = vm_fsync_path(b->ram_dir)) < 0)) ||
	    (r = vm_fsync_path(config)) < 0 || fsync(fd) < 0 || rename(tmp, path) < 0 || fsync(s->dirfd) < 0 ||
	    (r = vm_fsync_path(b->dir)) < 0) {
		r = r < 0 ? r : -errno;
		vm_log(s->id, "%s: %s", path, strerror(-r));
		qmp_command(s->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS);
		goto out;
	}
	qemu_stop(s);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		unlink(tmp);
		vm_log(s->id, "suspend failed (%s); qemu left running for the next mount", strerror(-r));
	}
	sandbox_free(s);
	pool_release(b);
	return r;
}

static int vm_resume(struct backend *b, const char *id, const char *handle,
		     struct sandbox **out, char new_handle[BACKEND_HANDLE_MAX])
{
	char path[PATH_MAX];
	struct sandbox *s;
	struct vm_config c;
	pid_t pid;
	int r;

	if ((r = sandbox_new(b, id, NULL, 0, 0, &s)) < 0)
		return r;
	if ((r = vm_config_read(s->dir, &c)) < 0 || (r = sandbox_open_dir(s)) < 0) {
		if (r != -ENOENT)
			vm_log(id, "%s: %s", s->dir, strerror(-r));
		sandbox_free(s);
		return -ENOENT;
	}
	if (!(s->img = image_find(b, c.image))) {
		vm_log(id, "its guest image is gone: cannot resume");
		sandbox_free(s);
		return -ENOENT;
	}
	s->mem_mib = c.mem_mib;
	s->vcpus = c.vcpus;
	s->cow = c.cow;
	s->machine = c.machine;
	qemu_origin(s->dir, s->qdir);
	if ((r = vm_pathf(path, "%s/suspend.state", s->dir)) < 0)
		goto fail;

	pid = qemu_pid_parse(handle);
	if (!qemu_pid_is_ours(pid, s->qdir))
		pid = qemu_pid_from_file(s->dir);
	if (qemu_pid_is_ours(pid, s->qdir)) {
		r = sandbox_reattach(s, pid);
		if (r == 0) {
			unlink(path);  /* older than the running VM */
			goto done;
		}
		vm_log(id, "reattach to qemu pid %d failed; stopping it", (int)pid);
		s->pid = pid;
		qemu_stop(s);
	}
	if (vm_exists(path)) {
		if ((r = sandbox_resume_file(s, path)) < 0)
			goto fail;
		goto done;
	}
	/* Nothing to bring back: nobody else can clean these files up. */
	qemu_log_died(s, "nothing to resume");
	sandbox_discard(s);
	return -ENOENT;
done:
	handle_set(s, new_handle);
	pool_hold(b);
	*out = s;
	return 0;
fail:
	qemu_stop(s);
	sandbox_free(s);
	return r;
}

static enum sandbox_presence vm_probe(struct backend *b, const char *id, const char *handle)
{
	char dir[PATH_MAX], qdir[PATH_MAX], path[PATH_MAX], ram[PATH_MAX];
	struct vm_config c;

	if (vm_id_check(id) < 0 || sandbox_reserved(id) || vm_pathf(dir, "%s/%s", b->dir, id) < 0 ||
	    vm_pathf(path, "%s/suspend.state", dir) < 0)
		return SANDBOX_GONE;
	qemu_origin(dir, qdir);
	if (qemu_pid_is_ours(qemu_pid_parse(handle), qdir) || qemu_pid_is_ours(qemu_pid_from_file(dir), qdir))
		return SANDBOX_RUNNING;
	if (!vm_exists(path) || vm_config_read(dir, &c) < 0)
		return SANDBOX_GONE;
	if (c.cow && (!b->ram_ready || ram_path(b, id, ram) < 0 || !vm_exists(ram)))
		return SANDBOX_GONE;
	return SANDBOX_SAVED;
}

/* Kill whatever QEMU still runs for id and delete its files. */
static int vm_discard(struct backend *b, const char *id, const char *handle)
{
	char ram[PATH_MAX];
	struct sandbox *s;
	pid_t pid;
	int r;

	if ((r = sandbox_new(b, id, NULL, 0, 0, &s)) < 0)
		return r;
	if (!vm_exists(s->dir)) {
		if (b->ram_ready && ram_path(b, id, ram) == 0)
			unlink(ram);
		sandbox_free(s);
		return 0;
	}
	qemu_origin(s->dir, s->qdir);
	pid = qemu_pid_parse(handle);
	if (!qemu_pid_is_ours(pid, s->qdir))
		pid = qemu_pid_from_file(s->dir);
	s->pid = qemu_pid_is_ours(pid, s->qdir) ? pid : 0;
	return sandbox_discard(s);
}

static void vm_collect_garbage(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx)
{
	DIR *d = opendir(b->dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || sandbox_reserved(e->d_name) || known(ctx, e->d_name))
			continue;
		vm_log(e->d_name, "not in the registry (left by a crash while being made): deleted");
		vm_discard(b, e->d_name, "");
	}
	closedir(d);
	d = opendir(b->snap_dir);
	if (d) {
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.' || known(ctx, e->d_name))
				continue;
			vm_log(e->d_name, "snapshot not in the registry: deleted");
			vm_rm_tree_at(dirfd(d), e->d_name);
		}
		closedir(d);
	}
	ram_collect_garbage(b, known, ctx);
	image_collect_garbage(b);
}

static char *vm_describe(struct sandbox *s)
{
	const struct start_steps *st = &s->steps;
	json_t *o = json_pack("{s:s, s:i, s:s, s:i, s:i, s:s, s:s, s:s}",
			      "backend", "vm",
			      "pid", (int)s->pid,
			      "accel", s->b->kvm ? "kvm" : "tcg",
			      "mem_mib", (int)s->mem_mib,
			      "vcpus", (int)s->vcpus,
			      "ram", s->cow ? "cow" : "copy",
			      "image", s->img->name,
			      "status", s->broken ? "failed" : qemu_pid_is_ours(s->pid, s->qdir) ? "up" : "down");
	json_t *sessions = json_array();
	char *text;

	/* The sessions alive in the guest, as its agent last said. */
	if (s->sessions & PROTO_F_SESSION_SH)
		json_array_append_new(sessions, json_string("sh"));
	if (s->sessions & PROTO_F_SESSION_PYTHON)
		json_array_append_new(sessions, json_string("python3"));
	if (o)
		json_object_set_new(o, "sessions", sessions);
	else
		json_decref(sessions);

	/* Where the last start's time went, in ms. */
	if (o && st->from)
		json_object_set_new(o, "start",
				    json_pack("{s:s, s:b, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "from", st->from,
					      "pooled", st->pooled, "prepare_ms", st->prepare_ms, "record_ms", st->record_ms,
					      "freeze_ms", st->freeze_ms, "clone_ms",
					      st->clone_ms, "qemu_ms", st->qemu_ms, "load_ms", st->load_ms,
					      "ready_ms", st->ready_ms, "total_ms", st->total_ms));
	text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(4)) : NULL;
	json_decref(o);
	return text;
}

const struct backend_ops vm_backend_ops = {
	.name = "vm",
	.init = vm_init,
	.fini = vm_fini,
	.create = vm_create,
	.exec = vm_exec,
	.snapshot = vm_snapshot,
	.snapshot_delete = vm_snapshot_delete,
	.branch = vm_branch,
	.destroy = vm_destroy,
	.interrupt = vm_interrupt,
	.fs = vm_fs,
	.suspend = vm_suspend,
	.resume = vm_resume,
	.probe = vm_probe,
	.discard = vm_discard,
	.collect_garbage = vm_collect_garbage,
	.describe = vm_describe,
};
