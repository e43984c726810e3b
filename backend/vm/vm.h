/* vm.h: what the files of the vm backend share: the backend and sandbox
 * structs, and the functions each file offers the others, in sections by
 * the file that defines them.  Private to backend/vm/; backend.h is the
 * interface to the rest of worldfs.
 *
 * The files, from the bottom up: each calls only those above it.
 *   files.c    small file helpers (paths, durable writes, trees, the VM
 *              config file)
 *   image.c    guest images: their manifests, pinned copies, kernel arguments
 *   host.c     what the host offers: KVM or TCG, the TSC rate for TCG guests
 *   ram.c      the RAM directory (files that clone with FICLONE) and its
 *              loop-mounted XFS image
 *   qemu.c     the QEMU process: its command line, start, stop, identity,
 *              migration over QMP
 *   agent.c    the guest agent: connect, ping, reseed, exec
 *   sandbox.c  a sandbox's life: made, started, frozen into a state
 *              directory, freed or discarded
 *   cache.c    golden states kept outside any state directory
 *   golden.c   the frozen just-booted world every create branches from
 *   pool.c     QEMU processes started ahead, waiting for a state
 *   vm.c       the backend ops (vm_backend_ops, declared in backend.h)
 * Beside them, with headers of their own: log.c (vm_log, how every file
 * here logs), qmp.c (the QMP client) and mountinfo.c (/proc/self/mountinfo,
 * for ram.c). */
#ifndef WORLDFS_VM_H
#define WORLDFS_VM_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "backend/backend.h"
#include "backend/util/clock.h"
#include "backend/util/fault.h"
#include "backend/util/io.h"
#include "backend/util/strbuf.h"
#include "backend/vm/log.h"
#include "backend/vm/qmp.h"

#define ID_MAX 64
#define SOCK_PATH_MAX ((int)sizeof(((struct sockaddr_un *)0)->sun_path))
#define QMP_TIMEOUT_MS 10000
#define LAUNCH_TIMEOUT_MS 30000    /* until `qemu -daemonize` returns */
#define BOOT_TIMEOUT_MS 60000      /* until the agent answers (TCG boots in ~2 s) */
#define RESTORE_TIMEOUT_MS 60000
#define MIGRATE_TIMEOUT_MS 300000
#define EXEC_GRACE_MS 10000        /* the agent kills a run at its time-out; allow for that */
#define PING_RETRY_MS 250
#define FS_TIMEOUT_MS 30000          /* the agent answers a file request (one syscall or 1 MiB) */
#define AGENT_WRITE_TIMEOUT_MS 30000 /* one frame to the agent, 16 MiB of code included */
#define AGENT_NOTES_MAX 4096       /* the agent's notes after a stream cut at output_max */
#define QUIT_TIMEOUT_MS 5000
#define RESEED_BYTES 64
#define DEFAULT_EXEC_TIMEOUT_S 60
#define TCG_TB_MIB 32              /* TCG code cache per VM (QEMU's default: 1 GiB, grown on demand) */

struct pool;

#define IMAGE_DIGEST_MAX 64

/* A guest image, pinned in STATE/vm/images/<digest> (image.c). */
struct vm_image {
	struct vm_image *next;
	char digest[IMAGE_DIGEST_MAX + 1]; /* names it in VM configs and golden keys */
	char name[64];             /* "debian", "busybox", ... (the manifest's) */
	char dir[PATH_MAX];        /* the pinned copy */
	char kernel[PATH_MAX];
	char initrd[PATH_MAX];
	char root[PATH_MAX];       /* the read-only root disk, "" when none */
	unsigned mem_mib;          /* default memory of a new world */
	char preload[256];         /* Python modules the golden state imports */
	char append[384];          /* the kernel command line for it */
};

struct backend {
	char dir[PATH_MAX];        /* STATE/vm, absolute: QEMU runs with cwd / */
	char snap_dir[PATH_MAX];   /* STATE/vm/snapshots */
	char golden_dir[PATH_MAX]; /* STATE/vm/golden */
	char cache_dir[PATH_MAX];  /* golden states outside the state dir (cache.c); "": none */
	char images_dir[PATH_MAX]; /* STATE/vm/images */
	char qemu[PATH_MAX];
	char append[256];          /* kernel command line, every image */
	bool kvm;
	char runas[32];            /* UID:GID every QEMU drops to after init; "": none */
	char empty_dir[PATH_MAX];  /* STATE/vm/empty: every dropped QEMU's root */
	unsigned mem_mib;
	unsigned vcpus;
	unsigned exec_timeout_s;
	size_t output_max;
	bool reseed_sessions;      /* reseed=all: branches reseed interpreters too */

	/* Images (image.c): the mount's, for new worlds; the one for configs
	 * that name none (states saved by 0.1); all loaded so far. */
	char image_base[PATH_MAX];  /* where image names are directories */
	struct vm_image *img;
	const struct vm_image *legacy;
	pthread_mutex_t legacy_lock;
	struct vm_image *images;
	pthread_mutex_t images_lock;

	/* Copy-on-write memory (ram.c). */
	bool cow;                  /* new worlds keep their RAM in ram_dir */
	bool ram_ready;            /* ram_dir clones files (FICLONE) */
	bool ram_mounted;          /* ram_dir is our loop mount of ram_image */
	char ram_dir[PATH_MAX];    /* STATE/vm/ram */
	char ram_image[PATH_MAX];  /* STATE/vm/ram.xfs */

	char golden_id[40];        /* identity of qemu + kernel + initrd (golden.c) */
	pthread_mutex_t golden_lock;
	struct pool *pool;         /* NULL: none */
	struct consoles *consoles; /* the console thread (console.c) */
};

/* Where the time of the last start went (create, branch, resume), for info. */
struct start_steps {
	const char *from;         /* "boot", "golden", "parent", "snapshot", "suspend" */
	bool pooled;              /* QEMU came from the warm pool */
	double prepare_ms;        /* its dir and config (or taking a pool member) */
	double record_ms;         /* the parent's agent recorded its files (W/diff's base), before the freeze */
	double freeze_ms;         /* parent stopped: device state + RAM clone */
	double clone_ms;          /* RAM clone (from a frozen state, or within freeze_ms) */
	double qemu_ms;           /* QEMU start-up (0 when pooled) */
	double load_ms;           /* migrate-incoming of the device state, cont */
	double ready_ms;          /* until the agent answered and was reseeded */
	double total_ms;
};

struct sandbox {
	struct backend *b;
	char id[ID_MAX + 1];
	char dir[PATH_MAX];
	char qdir[PATH_MAX];      /* the dir QEMU was started in, which its -pidfile
	                           * names: a pool member's, once adopted, differs */
	int dirfd;                /* keeps socket paths short: /proc/self/fd/N/qmp.sock */
	pid_t pid;                /* the daemonized QEMU, 0 when none */
	struct qmp *qmp;
	int agent;                /* agent socket, -1 when not connected */
	unsigned agent_version;   /* from its PONG: 1 (worldfs 0.1) or 2 */
	uint32_t sessions;        /* PROTO_F_SESSION_* alive, as the agent last said */
	const struct vm_image *img;
	unsigned mem_mib;
	unsigned vcpus;
	bool cow;                 /* guest RAM is the file ram_dir/<id>.ram, shared */
	unsigned machine;         /* the QEMU machine a saved state needs (MACHINE_*) */
	uint32_t next_run;
	bool migrate_ready;       /* migration parameters and capabilities set */
	bool broken;              /* the agent or QEMU failed: later calls get EIO */
	double clone_in_freeze_ms; /* the RAM clone's part of the last freeze */
	double record_ms;          /* the agent's record of its files before the last freeze */
	struct start_steps steps;
};

/* --- files.c -------------------------------------------------------------- */

/* snprintf into a path buffer: -ENAMETOOLONG if it does not fit. */
int vm_pathf(char out[PATH_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 0 if id (a registry or snapshot id) is a plain file name, else -EINVAL. */
int vm_id_check(const char *id);
bool vm_exists(const char *path);
/* path and its missing parents (0700), like mkdir -p. */
int vm_mkdir_p(char *path);
int vm_fsync_path(const char *path);
/* Replace dir/name with text atomically, and durably if durable. */
/* A new temp file for writing (0600): a leftover of a crash is removed
 * first, and the file is made fresh (O_EXCL, no symlink followed).  fd or
 * -errno. */
int vm_open_tmp(const char *path);
int vm_write_file(const char *dir, const char *name, const char *text, bool durable);
/* Remove name in the dir parent (path) and all below it; missing is fine. */
int vm_rm_tree_at(int parent, const char *name);
int vm_rm_tree(const char *path);
/* Delete the .NAME.tmp entries of dir (left by a crash mid-freeze). */
void vm_tmp_sweep(const char *dir);
/* name in PATH, then in the sbin dirs a non-login root shell may lack. */
int vm_find_program(const char *name, char out[PATH_MAX]);
/* FNV-1a: h extended with text; with a file's identity (path, size, mtime:
 * what changes when it is replaced or rebuilt), -errno if it has none. */
#define VM_FNV1A_INIT 0xcbf29ce484222325ull
uint64_t vm_fnv1a(uint64_t h, const char *text);
int vm_fnv1a_file(uint64_t *h, const char *path);

/* The machine a VM is started as; its device state only loads into the same.
 * 1: worldfs 0.1 (microvm with the i8254 PIT); 2: no PIT, whose 37 Hz timer
 * woke every idle QEMU (half of an idle VM's CPU). */
#define MACHINE_PIT 1
#define MACHINE_NO_PIT 2
#define MACHINE_CURRENT MACHINE_NO_PIT
/* dir/config: how to start a QEMU that can load the VM's saved state.  A
 * running VM's config need not be durable: a host crash loses the VM
 * anyway; suspend() makes it durable with the state. */
struct vm_config {
	unsigned mem_mib, vcpus;
	bool cow;                 /* guest RAM is a file (ram=file) */
	unsigned machine;         /* MACHINE_*; a config without the line is 1 */
	char image[IMAGE_DIGEST_MAX + 1]; /* the image's digest; "" for 0.1's */
};

int vm_config_write(const char *dir, const struct vm_config *c, bool durable);
int vm_config_read(const char *dir, struct vm_config *c);
/* The config of s as it runs. */
void vm_config_of(const struct sandbox *s, struct vm_config *c);

/* --- image.c -------------------------------------------------------------- */

void image_init(struct backend *b, const char *base);
void image_fini(struct backend *b);
/* The image named spec (a name in base, or a directory), pinned. */
int image_open(struct backend *b, const char *spec, const char *base, struct vm_image **out, char *err,
	       size_t errlen);
/* A pinned image by digest ("" : the legacy image); NULL if it is gone. */
const struct vm_image *image_find(struct backend *b, const char *digest);
/* Delete the pinned images no config names. */
void image_collect_garbage(struct backend *b);

/* --- host.c --------------------------------------------------------------- */

/* KVM for accel=kvm; for auto where the CPU has vmx/svm and /dev/kvm
 * opens (the choice is logged). */
bool host_use_kvm(enum accel accel);
/* Where worldfs runs as root: the user every QEMU becomes once started
 * (user, else "worldfs", else "nobody"; "root": none) and the empty
 * directory it is confined to, into b->runas and b->empty_dir. */
int host_confine(struct backend *b, const char *user, char *err, size_t errlen);
unsigned long host_tsc_khz(void);

/* --- ram.c ---------------------------------------------------------------- */

/* Find or make a RAM directory that clones files; sets b->ram_*.
 * want: the mount asked for cow (else only an existing one is reused). */
/* Refuse (-ENOSPC, with a log line) to make anything that may grow on
 * disk (a world, a verse, a snapshot of mem_mib) unless the filesystems
 * below STATE/vm keep mem_mib + DISK_RESERVE_MIB free: the margin is what
 * the running guests may still write into their copy-on-write RAM files,
 * whose loop device would otherwise fail them with I/O errors. */
#define DISK_RESERVE_MIB 256
int vm_room(const struct backend *b, const char *id, unsigned mem_mib);
void ram_init(struct backend *b, bool want);
/* Unmount our loop mount if nothing uses it any more. */
void ram_fini(struct backend *b);
int ram_path(const struct backend *b, const char *name, char out[PATH_MAX]);
int ram_snapshot_path(const struct backend *b, const char *snap_id, char out[PATH_MAX]);
/* An empty (sparse) RAM file of mem_mib at path. */
int ram_create(const char *path, unsigned mem_mib);
/* Open path for FICLONE (write), creating it. */
int ram_open_dest(const char *path);
/* dst_fd's data becomes a copy-on-write clone of src_fd's. */
int ram_clone_fd(int src_fd, int dst_fd);
int ram_clone(const char *src, const char *dst);
/* Write back the dirty pages of a RAM file (before a freeze, so that the
 * clone in the freeze has little left to flush). */
void ram_preflush(const char *path);
/* Remove the RAM files of ids and snapshots that known() does not claim. */
void ram_collect_garbage(struct backend *b, bool (*known)(void *ctx, const char *id), void *ctx);

/* --- qemu.c --------------------------------------------------------------- */

/* Is pid a live QEMU started in qdir?  (Its -pidfile argument says so.) */
bool qemu_pid_is_ours(pid_t pid, const char *qdir);
/* The pid in a handle or a pid file's text; 0 if there is none. */
pid_t qemu_pid_parse(const char *text);
/* The pid in dir/qemu.pid; 0 if there is none. */
pid_t qemu_pid_from_file(const char *dir);
/* The dir a QEMU running for dir was started in: dir/qemu.origin, else dir. */
void qemu_origin(const char *dir, char qdir[PATH_MAX]);
/* Log that what failed, in QEMU's own words: the last lines of qemu.log
 * and console.log. */
void qemu_log_died(const struct sandbox *s, const char *what);
/* The path of s's socket name, for QEMU to bind (for_qemu) or for us to
 * connect to; short enough for sun_path either way. */
void qemu_sock_path(const struct sandbox *s, const char *name, bool for_qemu, char out[SOCK_PATH_MAX]);

/* What a QEMU is started with: all that qemu_argv() reads. */
struct qemu_spec {
	const char *qemu;          /* the binary */
	const char *id;            /* the sandbox's: the process is named worldfs-<id> */
	bool kvm;                  /* -accel kvm -cpu host, else TCG -cpu max */
	unsigned machine;          /* MACHINE_*: from MACHINE_NO_PIT on, no PIT */
	unsigned mem_mib, vcpus;
	const char *ram;           /* cow: guest RAM is this file, mapped shared; NULL: anonymous */
	const char *kernel, *initrd, *append;
	const char *root;          /* the root disk, attached read-only; NULL or "": none */
	const char *qmp_sock, *agent_sock; /* for QEMU to bind (qemu_sock_path) */
	const char *pidfile, *log; /* -pidfile (which also marks the process as ours), -D */
	bool incoming;             /* wait paused for a state: -incoming defer -S */
	int console_fd;            /* the serial console goes to this inherited descriptor */
	const char *runas;         /* -runas UID:GID once started; NULL: none */
	const char *chroot;        /* -chroot: all of the host it sees then; NULL: none */
};

/* --- console.c: the guests' consoles, each copied into its sandbox's
 * console.log, rotated at CONSOLE_ROTATE (so at most twice that on disk). */
#define CONSOLE_ROTATE (512 << 10)
int console_init(struct backend *b);
void console_fini(struct backend *b);
/* A pipe for the console of s's next QEMU: its write end in *qemu_end (the
 * caller passes it to QEMU and closes it), its read end copied from now on
 * into s's console.log until that QEMU exits. */
int console_pipe(struct sandbox *s, int *qemu_end);

/* A QEMU command line: argv, NULL-terminated, points into the strings
 * beside it (so the struct is not to be copied). */
struct qemu_cmdline {
	const char *argv[64];
	char name[ID_MAX + 16], machine[160], accel[64], mem[32], smp[32];
	char qmp[SOCK_PATH_MAX + 48], agent[SOCK_PATH_MAX + 80];
	char ram[2 * PATH_MAX + 96], root[2 * PATH_MAX + 96];
	char serial[32];
};

/* Build the command line of a QEMU as spec says into out: no I/O, nothing
 * read but spec.  -ENAMETOOLONG if a path does not fit. */
int qemu_argv(const struct qemu_spec *spec, struct qemu_cmdline *out);

/* Start QEMU for s, daemonized; incoming: wait paused for state_load().
 * A cow sandbox maps ram_dir/<id>.ram, which must exist with its size. */
int qemu_launch(struct sandbox *s, bool incoming);
/* End QEMU: stop asks it to quit first; kill (its state is thrown away)
 * does not.  Both leave s with no process and no connections. */
void qemu_stop(struct sandbox *s);
void qemu_kill(struct sandbox *s);
/* A QMP command (what) failed with r: log why (s is broken if QEMU is
 * gone); the error to return: r for a time-out or ENOMEM, else -EIO. */
int qemu_cmd_failed(struct sandbox *s, int r, const char *what);
/* QEMU's run state ("running", "inmigrate", "paused", ...) into out. */
int qemu_status(struct sandbox *s, char *out, size_t n);

/* Stop the guest, write QEMU's state to fd (device state only when cow:
 * its RAM is the file), and, if ram_to is given, clone the RAM file to it
 * while stopped.  The guest runs again afterwards if keep_running, and
 * always on failure.  *frozen_ms: how long it was stopped. */
int state_save(struct sandbox *s, int fd, int ram_to, bool keep_running, double *frozen_ms);
/* Load a state from fd into s's QEMU (launched incoming) and run it. */
int state_load(struct sandbox *s, int fd, double deadline);

/* --- agent.c -------------------------------------------------------------- */

int agent_connect(struct sandbox *s, double deadline);
/* Until the agent answers PING. */
int agent_ping(struct sandbox *s, double deadline);
/* Fresh entropy and the host's time: a restored or cloned guest has its
 * parent's.  flags: PROTO_RESEED_SESSIONS (the interpreters' global
 * generators too; a version 1 agent has no interpreters but sh),
 * PROTO_RESEED_DIFF_BASE (a copy: W/diff's base is the last mark). */
int agent_reseed(struct sandbox *s, double deadline, uint32_t flags);
/* Before a state others start from is frozen: the agent records the
 * guest's files (W/diff's base for the copies).  A guest that cannot
 * (too many files, out of time) says so, and the copies' W/diff says
 * why; 0 unless the agent is lost (-EIO). */
int agent_mark(struct sandbox *s);
/* A run with the backend's exec_timeout, or timeout_ms if not 0. */
int agent_exec(struct sandbox *s, const char *code, size_t len, uint32_t timeout_ms, struct run_result *res);
/* One file request (fsproto.h); its reply payload, malloc'd, in *reply.
 * -ENOTSUP for an agent older than the file protocol; a guest that does
 * not answer in FS_TIMEOUT_MS is lost (-EIO), as for exec. */
struct fs_req;
int agent_fs(struct sandbox *s, const struct fs_req *req, uint8_t **reply, size_t *len);
/* A RESULT frame's payload into res (and its PROTO_F_* flags): 0, -ENOMEM,
 * or -EPROTO for a short frame, a status outside 0..255 or a stream longer
 * than stream_max.  Used by agent_exec; not static so that
 * tests/fuzz/fuzz_proto.c can reach it. */
struct proto_frame;
int agent_result_parse(const struct proto_frame *f, size_t stream_max, struct run_result *res,
		       uint32_t *flags_out);

/* --- sandbox.c ------------------------------------------------------------ */

/* Names in STATE/vm that are not sandboxes (snapshots, golden, ...). */
bool sandbox_reserved(const char *name);
/* A sandbox for id (unstarted, no dir made); img, mem_mib, vcpus 0: the
 * mount's.  -EINVAL for an id that is not a plain file name. */
int sandbox_new(struct backend *b, const char *id, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		struct sandbox **out);
int sandbox_open_dir(struct sandbox *s);
/* sandbox_new() with its dir made and its config written (cow, machine:
 * MACHINE_*); -EEXIST if the id is taken. */
int sandbox_make(struct backend *b, const char *id, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		 bool cow, unsigned machine, struct sandbox **out);
/* Close what s holds in worldfs and free it; QEMU keeps running if it does. */
void sandbox_free(struct sandbox *s);
/* Stop QEMU, delete s's files (its RAM file too), free s. */
int sandbox_discard(struct sandbox *s);

/* What a start reseeds: nothing (a golden state's first boot, reseeded
 * after its freeze), the kernel's RNG (a world that resumes), that and
 * W/diff's base (a copy: a branch), or the interpreters' generators too
 * (a new world; a branch under reseed=all). */
enum reseed { RESEED_NONE, RESEED_KERNEL, RESEED_COPY, RESEED_ALL };
/* Bring s up: start QEMU unless it is already waiting (launched), load a
 * state (state_fd >= 0) or boot, wait for the agent, and reseed it.  On
 * failure no process is left. */
int sandbox_start(struct sandbox *s, int state_fd, bool launched, enum reseed reseed, double deadline);
/* Take s up again: its QEMU pid that kept running while worldfs was down
 * (continued if it was stopped mid-snapshot or mid-suspend), or the state
 * suspended into path (deleted once the world runs again). */
int sandbox_reattach(struct sandbox *s, pid_t pid);
int sandbox_resume_file(struct sandbox *s, const char *path);

/* Freeze s's full state durably into the directory dir (device state, or
 * the whole state when s is not cow, and its config) and, cow, its RAM
 * cloned to ram.  Built under the temp names tmp and ram_tmp and renamed
 * into place, so a crash leaves a whole state or none; on failure nothing
 * is left.  An existing dir is -EEXIST unless replace.  s keeps running. */
int state_freeze(struct sandbox *s, const char *dir, const char *tmp, const char *ram,
		 const char *ram_tmp, bool replace, double *frozen, uint64_t *state_bytes);

/* --- cache.c: golden states outside the state dir ---------------------- */
/* Find (make) the cache directory and delete its stale entries; after
 * b->golden_id is set.  Without one, b->cache_dir is "". */
int cache_init(struct backend *b);
/* Keep a copy of golden state key (dir/{config,devstate} and ram). */
void cache_put(struct backend *b, const char *key, const char *dir, const char *ram);
/* Put the cached golden state key in place at dir and ram (through tmp
 * and ram_tmp), verified; -ENOENT when none is cached. */
int cache_get(struct backend *b, const char *key, const char *dir, const char *tmp, const char *ram,
	      const char *ram_tmp);


/* --- golden.c ------------------------------------------------------------- */
/* Compute b->golden_id from what every booted world depends on, and
 * delete the golden states of other identities or images than b->img. */
int golden_init(struct backend *b, const char *kernel_args);
/* No golden state for (img, mem_mib, vcpus) in the state dir: take the
 * cached one, if any (cache.c). */
void golden_take_cached(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus);
/* The golden state of img for mem_mib/vcpus: its devstate (an fd) and its
 * RAM file path; -ENOENT if none is baked yet. */
int golden_open(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus,
		char ram[PATH_MAX]);
/* Warm s up as the image asks (its Python session started, the preload
 * modules imported), then freeze it as the golden state for its image and
 * size.  s is cold-booted, its agent answering, not yet reseeded; it keeps
 * running. */
int golden_bake(struct sandbox *s);
/* Forget the golden state for this image and size (it failed to load). */
void golden_drop(struct backend *b, const struct vm_image *img, unsigned mem_mib, unsigned vcpus);

/* --- pool.c --------------------------------------------------------------- */

int pool_start(struct backend *b, unsigned size);
void pool_stop(struct backend *b);
/* A waiting QEMU of mem_mib/vcpus, renamed to id (its dir, its RAM file):
 * -ENOENT if none.  The caller clones the state's RAM into its RAM file,
 * then loads the device state. */
int pool_take(struct backend *b, const char *id, unsigned mem_mib, unsigned vcpus, struct sandbox **out);
/* Remove what a crashed worldfs's pool left (QEMUs and files). */
void pool_sweep(struct backend *b);
/* Live sandboxes come and go: with none left the pool idles empty. */
void pool_hold(struct backend *b);
void pool_release(struct backend *b);

#endif
