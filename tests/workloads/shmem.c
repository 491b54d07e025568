/*
 * shmem: shared memory objects and deleted files, each checked after a
 * restore (zdtm-style victim).
 *
 * Options (any combination):
 *   --memfd          a memfd "crimg-shmem-test" (MFD_ALLOW_SEALING, mode
 *                    0640 like every memfd here) of 5
 *                    pages holding a pattern, sealed F_SEAL_SHRINK |
 *                    F_SEAL_GROW, mapped twice MAP_SHARED read-write; its fd
 *                    is closed unless --keep-fds
 *   --memfd-sealed   a memfd "crimg-sealed" of 3 pages with a pattern,
 *                    sealed F_SEAL_WRITE | F_SEAL_SEAL, mapped twice
 *                    MAP_SHARED read-only (fd closed unless --keep-fds)
 *   --memfd-future   a memfd "crimg-future" of 2 pages mapped MAP_SHARED
 *                    read-write, then sealed F_SEAL_FUTURE_WRITE and mapped
 *                    again read-only: the first view stays writable, no
 *                    new writable mapping is allowed (fd closed unless
 *                    --keep-fds)
 *   --memfd-fd-only  a memfd "crimg-fd-only" of 3 pages and 10 bytes written
 *                    through its fd, which stays open at offset 5000
 *                    (O_RDWR | O_APPEND), sealed F_SEAL_GROW; never mapped
 *   --memfd-private  a memfd "crimg-private" of 2 pages mapped MAP_PRIVATE
 *                    and written there (copy-on-write), its fd closed: the
 *                    memfd's own bytes are reached only through the private
 *                    mapping's unwritten page
 *   --shared-anon    MAP_SHARED | MAP_ANONYMOUS memory of 4 pages, and a
 *                    second view of it made by mremap(old_size 0); and a
 *                    MAP_SHARED mapping of /dev/zero of 2 pages
 *   --deleted FILE   FILE made with 3 pages and 100 bytes of pattern,
 *                    mapped MAP_SHARED (pages 0-1) and MAP_PRIVATE (page 2,
 *                    written there), then unlinked; with --keep-fds its fd
 *                    stays open, read-write at offset 1234
 *   --keep-fds       keep the fds above open (their checks run too)
 *
 * On check (SIGUSR2 or the stdin line "check"): every object's content and
 * that a write through one view shows in the other (and through its fd),
 * the memfds' names (/proc/self/map_files and /proc/self/fd links show
 * memfd:NAME), seals (F_GET_SEALS on the fd, or on the file reopened
 * through /proc/self/map_files), that write-sealed memory cannot be made
 * writable, the deleted file's content, size, offset and "(deleted)" link.
 *   PASS shmem pid=<pid> checks=<n>
 *   FAIL shmem <reason>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL

/* workload.h helpers this victim has no use for. */
static const void *const unused_helpers[] __attribute__((unused)) = {
	(const void *)parse_long, (const void *)find_nonzero, (const void *)checksum,
};

static volatile sig_atomic_t check_requested;
static int keep_fds;
static int checks;

/* One memfd or shared anonymous object and its two views. */
struct object {
	const char *name;
	char *a, *b;
	size_t len;
	uint64_t seed;
	int fd;
	unsigned seals;
	int on;
};

static struct object memfd = { .name = "crimg-shmem-test", .seed = 0x3e3f, .len = 5 * PAGE, .fd = -1 };
static struct object sealed = { .name = "crimg-sealed", .seed = 0x5ea1, .len = 3 * PAGE, .fd = -1 };
static struct object future = { .name = "crimg-future", .seed = 0xf07e, .len = 2 * PAGE, .fd = -1 };
static struct object priv = { .name = "crimg-private", .seed = 0x9a1e, .len = 2 * PAGE, .fd = -1 };
static struct object anon = { .name = "anon", .seed = 0xa707, .len = 4 * PAGE, .fd = -1 };
static struct object zero = { .name = "dev/zero", .seed = 0x2e70, .len = 2 * PAGE, .fd = -1 };

static const char *deleted_path;
static char *deleted_shared, *deleted_private;
static int deleted_fd = -1;
#define DELETED_LEN (3 * PAGE + 100)
#define DELETED_SEED 0xde1e
#define DELETED_POS 1234

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	say("FAIL shmem %s", msg);
	return -1;
}

static int make_memfd(struct object *o, unsigned seals, int prot, int flags)
{
	o->fd = memfd_create(o->name, MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (o->fd < 0)
		die("memfd_create");
	if (ftruncate(o->fd, (off_t)o->len))
		die("ftruncate");
	{
		char *buf = malloc(o->len);

		pattern_fill(buf, o->len, o->seed, 0);
		if (pwrite(o->fd, buf, o->len, 0) != (ssize_t)o->len)
			die("pwrite memfd");
		free(buf);
	}
	/* A mode of its own, to be kept. */
	if (fchmod(o->fd, 0640))
		die("fchmod memfd");
	if (seals && fcntl(o->fd, F_ADD_SEALS, seals))
		die("F_ADD_SEALS");
	o->seals = seals;
	o->a = mmap(NULL, o->len, prot, flags, o->fd, 0);
	if (o->a == MAP_FAILED)
		die("mmap memfd");
	if (flags & MAP_SHARED) {
		o->b = mmap(NULL, o->len, prot, flags, o->fd, 0);
		if (o->b == MAP_FAILED)
			die("mmap memfd again");
	}
	if (!keep_fds) {
		close(o->fd);
		o->fd = -1;
	}
	o->on = 1;
	return 0;
}

/* The file behind the area at `addr`, opened again through map_files. */
static int reopen_area(const void *addr, size_t len, char *link, size_t link_len)
{
	char path[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)addr, (unsigned long)addr + len);
	n = readlink(path, link, link_len - 1);
	if (n < 0)
		return -1;
	link[n] = 0;
	return open(path, O_RDONLY | O_CLOEXEC);
}

static int check_pattern(const char *what, const void *p, size_t len, uint64_t seed, uint64_t first)
{
	uint64_t want, found;
	long at = pattern_find_mismatch(p, len, seed, first, &want, &found);

	if (at >= 0)
		return fail("%s: word at +%#lx is %#lx, want %#lx", what, at,
			    (unsigned long)found, (unsigned long)want);
	checks++;
	return 0;
}

/* The two views are one object: a word written in one shows in the other. */
static int check_views(struct object *o)
{
	uint64_t *wa = (uint64_t *)(o->a + PAGE), *wb = (uint64_t *)(o->b + PAGE);
	uint64_t old = *wa, mark = 0x5a5a000000000000ULL | (uint64_t)getpid();

	*wa = mark;
	if (*wb != mark)
		return fail("%s: a write through %p does not show through %p", o->name, (void *)o->a, (void *)o->b);
	*wb = old;
	if (*wa != old)
		return fail("%s: a write through %p does not show through %p", o->name, (void *)o->b, (void *)o->a);
	checks++;
	return 0;
}

static int check_memfd(struct object *o, int writable)
{
	char link[512], want[300];
	int fd, seals;

	if (check_pattern(o->name, o->a, o->len, o->seed, 0))
		return -1;
	if (o->b && check_pattern(o->name, o->b, o->len, o->seed, 0))
		return -1;
	if (writable && check_views(o))
		return -1;
	fd = reopen_area(o->a, o->len, link, sizeof(link));
	if (fd < 0)
		return fail("%s: /proc/self/map_files: %m", o->name);
	snprintf(want, sizeof(want), "/memfd:%s (deleted)", o->name);
	if (strcmp(link, want))
		return fail("%s: area links to '%s', want '%s'", o->name, link, want);
	seals = fcntl(fd, F_GET_SEALS);
	if (seals != (int)o->seals)
		return fail("%s: seals %#x, want %#x", o->name, seals, o->seals);
	{
		struct stat st;

		if (fstat(fd, &st) || (st.st_mode & 07777) != 0640)
			return fail("%s: mode %o, want 640", o->name, (unsigned)st.st_mode & 07777);
	}
	close(fd);
	if (o->fd >= 0) {
		char fdlink[64];
		ssize_t n;
		uint64_t w;

		snprintf(fdlink, sizeof(fdlink), "/proc/self/fd/%d", o->fd);
		n = readlink(fdlink, link, sizeof(link) - 1);
		link[n < 0 ? 0 : n] = 0;
		snprintf(want, sizeof(want), "/memfd:%s (deleted)", o->name);
		if (strcmp(link, want))
			return fail("%s: fd %d links to '%s', want '%s'", o->name, o->fd, link, want);
		if (fcntl(o->fd, F_GET_SEALS) != (int)o->seals)
			return fail("%s: fd %d has other seals", o->name, o->fd);
		if (writable) {
			/* A write through the fd shows in both views. */
			w = 0x77aa000000000000ULL | (uint64_t)getpid();
			if (pwrite(o->fd, &w, 8, 2 * PAGE) != 8)
				return fail("%s: pwrite fd %d: %m", o->name, o->fd);
			if (*(uint64_t *)(o->a + 2 * PAGE) != w || *(uint64_t *)(o->b + 2 * PAGE) != w)
				return fail("%s: a write through fd %d does not show in the areas", o->name, o->fd);
			w = pattern_word(o->seed, 2 * PAGE / 8);
			if (pwrite(o->fd, &w, 8, 2 * PAGE) != 8)
				return fail("%s: pwrite fd %d: %m", o->name, o->fd);
		} else if (pwrite(o->fd, link, 1, 0) >= 0 || errno != EPERM) {
			return fail("%s: a write through the sealed fd %d did not fail with EPERM", o->name, o->fd);
		}
		checks++;
	}
	if (!writable) {
		if (mprotect(o->a, PAGE, PROT_READ | PROT_WRITE) == 0)
			return fail("%s: write-sealed memory could be made writable", o->name);
		checks++;
	}
	return 0;
}

static int fd_only = -1;
#define FD_ONLY_LEN (3 * PAGE + 10)
#define FD_ONLY_SEED 0xf0d0
#define FD_ONLY_POS 5000

static void make_fd_only(void)
{
	char *buf = calloc(1, 4 * PAGE);

	fd_only = memfd_create("crimg-fd-only", MFD_ALLOW_SEALING);
	if (fd_only < 0)
		die("memfd_create fd-only");
	pattern_fill(buf, 4 * PAGE, FD_ONLY_SEED, 0);
	if (write(fd_only, buf, FD_ONLY_LEN) != (ssize_t)FD_ONLY_LEN)
		die("write fd-only memfd");
	free(buf);
	if (fcntl(fd_only, F_ADD_SEALS, F_SEAL_GROW))
		die("F_ADD_SEALS fd-only");
	if (lseek(fd_only, FD_ONLY_POS, SEEK_SET) != FD_ONLY_POS)
		die("lseek fd-only");
	if (fcntl(fd_only, F_SETFL, O_APPEND))
		die("F_SETFL fd-only");
}

static int check_fd_only(void)
{
	char *buf = calloc(1, 4 * PAGE), link[128], path[64];
	struct stat st;
	ssize_t n;
	int fl = fcntl(fd_only, F_GETFL);

	if (lseek(fd_only, 0, SEEK_CUR) != FD_ONLY_POS)
		return fail("fd-only memfd: offset %ld, want %d", (long)lseek(fd_only, 0, SEEK_CUR), FD_ONLY_POS);
	if ((fl & O_ACCMODE) != O_RDWR || !(fl & O_APPEND))
		return fail("fd-only memfd: flags %#x, want O_RDWR | O_APPEND", fl);
	if (fstat(fd_only, &st) || st.st_size != (off_t)FD_ONLY_LEN)
		return fail("fd-only memfd: size %ld, want %lu", (long)st.st_size, FD_ONLY_LEN);
	if (pread(fd_only, buf, FD_ONLY_LEN, 0) != (ssize_t)FD_ONLY_LEN)
		return fail("fd-only memfd: short read");
	if (check_pattern("fd-only memfd", buf, 3 * PAGE + 8, FD_ONLY_SEED, 0))
		return -1;
	free(buf);
	if (fcntl(fd_only, F_GET_SEALS) != F_SEAL_GROW)
		return fail("fd-only memfd: seals %#x, want F_SEAL_GROW", fcntl(fd_only, F_GET_SEALS));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd_only);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = 0;
	if (strcmp(link, "/memfd:crimg-fd-only (deleted)"))
		return fail("fd-only memfd: links to '%s'", link);
	checks++;
	return 0;
}

static void make_future(void)
{
	struct object *o = &future;
	int keep = keep_fds;

	keep_fds = 1;
	make_memfd(o, 0, PROT_READ | PROT_WRITE, MAP_SHARED);
	keep_fds = keep;
	munmap(o->b, o->len);
	if (fcntl(o->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE))
		die("F_SEAL_FUTURE_WRITE");
	o->seals = F_SEAL_FUTURE_WRITE;
	o->b = mmap(NULL, o->len, PROT_READ, MAP_SHARED, o->fd, 0);
	if (o->b == MAP_FAILED)
		die("mmap future-sealed memfd");
	if (!keep_fds) {
		close(o->fd);
		o->fd = -1;
	}
}

/* The first view of a F_SEAL_FUTURE_WRITE memfd still writes into it
 * (seen in the second); a new writable shared mapping is refused. */
static int check_future(struct object *o)
{
	char path[128];
	uint64_t *wa = (uint64_t *)o->a, mark = 0xf0f0000000000000ULL | (uint64_t)getpid();
	int fd;
	void *w;

	if (check_pattern(o->name, o->a + 8, o->len - 8, o->seed, 1) ||
	    check_pattern(o->name, o->b + 8, o->len - 8, o->seed, 1))
		return -1;
	*wa = mark;
	if (*(uint64_t *)o->b != mark)
		return fail("%s: a write through the writable view does not show", o->name);
	*wa = pattern_word(o->seed, 0);
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)o->a, (unsigned long)o->a + o->len);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail("%s: reopen: %m", o->name);
	if (fcntl(fd, F_GET_SEALS) != F_SEAL_FUTURE_WRITE)
		return fail("%s: seals %#x, want F_SEAL_FUTURE_WRITE", o->name, fcntl(fd, F_GET_SEALS));
	w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w != MAP_FAILED || errno != EPERM)
		return fail("%s: a new writable mapping was allowed", o->name);
	close(fd);
	checks++;
	return 0;
}

static int check_private(struct object *o)
{
	char link[512], want[300];
	int fd;
	uint64_t first;

	/* Page 0 was written privately, page 1 still shows the memfd. */
	if (check_pattern("private memfd page 0", o->a, PAGE, o->seed ^ 0xffff, 0))
		return -1;
	if (check_pattern("private memfd page 1", o->a + PAGE, PAGE, o->seed, PAGE / 8))
		return -1;
	fd = reopen_area(o->a, o->len, link, sizeof(link));
	if (fd < 0)
		return fail("private memfd: /proc/self/map_files: %m");
	snprintf(want, sizeof(want), "/memfd:%s (deleted)", o->name);
	if (strcmp(link, want))
		return fail("private memfd: area links to '%s', want '%s'", link, want);
	if (pread(fd, &first, 8, 0) != 8 || first != pattern_word(o->seed, 0))
		return fail("private memfd: the memfd's own page 0 changed");
	close(fd);
	checks++;
	return 0;
}

static int check_deleted(void)
{
	char link[512], want[600];
	int fd;
	struct stat st;
	uint64_t w;

	if (check_pattern("deleted file (shared area)", deleted_shared, 2 * PAGE, DELETED_SEED, 0))
		return -1;
	if (check_pattern("deleted file (private area)", deleted_private, PAGE, DELETED_SEED ^ 0xffff, 0))
		return -1;
	fd = reopen_area(deleted_shared, 2 * PAGE, link, sizeof(link));
	if (fd < 0)
		return fail("deleted file: /proc/self/map_files: %m");
	snprintf(want, sizeof(want), "%s (deleted)", deleted_path);
	if (strcmp(link, want))
		return fail("deleted file: area links to '%s', want '%s'", link, want);
	if (fstat(fd, &st) || st.st_size != (off_t)DELETED_LEN || st.st_nlink != 0)
		return fail("deleted file: size %ld links %ld, want %lu and 0",
			    (long)st.st_size, (long)st.st_nlink, DELETED_LEN);
	{
		char tail[100];

		/* The file's own page 2 and its tail past the last page. */
		if (pread(fd, tail, 100, 3 * PAGE) != 100)
			return fail("deleted file: short tail");
		if (check_pattern("deleted file tail", tail, 96, DELETED_SEED, 3 * PAGE / 8))
			return -1;
		if (pread(fd, &w, 8, 2 * PAGE) != 8 || w != pattern_word(DELETED_SEED, 2 * PAGE / 8))
			return fail("deleted file: its page 2 changed (the private area's write leaked?)");
	}
	close(fd);
	if (deleted_fd >= 0) {
		off_t pos = lseek(deleted_fd, 0, SEEK_CUR);
		int fl = fcntl(deleted_fd, F_GETFL);
		char fdlink[64];
		ssize_t n;

		if (pos != DELETED_POS)
			return fail("deleted file: fd %d at offset %ld, want %d", deleted_fd, (long)pos, DELETED_POS);
		if ((fl & O_ACCMODE) != O_RDWR)
			return fail("deleted file: fd %d flags %#x, want O_RDWR", deleted_fd, fl);
		snprintf(fdlink, sizeof(fdlink), "/proc/self/fd/%d", deleted_fd);
		n = readlink(fdlink, link, sizeof(link) - 1);
		link[n < 0 ? 0 : n] = 0;
		if (strcmp(link, want))
			return fail("deleted file: fd %d links to '%s', want '%s'", deleted_fd, link, want);
		/* The fd and the shared area are one file. */
		w = 0x3d3d000000000000ULL | (uint64_t)getpid();
		if (pwrite(deleted_fd, &w, 8, 8) != 8)
			return fail("deleted file: pwrite fd: %m");
		if (*(uint64_t *)(deleted_shared + 8) != w)
			return fail("deleted file: a write through fd %d does not show in the area", deleted_fd);
		w = pattern_word(DELETED_SEED, 1);
		if (pwrite(deleted_fd, &w, 8, 8) != 8)
			return fail("deleted file: pwrite fd: %m");
		checks++;
	}
	return 0;
}

static void do_check(void)
{
	check_requested = 0;
	checks = 0;
	if (memfd.on && check_memfd(&memfd, 1))
		return;
	if (sealed.on && check_memfd(&sealed, 0))
		return;
	if (fd_only >= 0 && check_fd_only())
		return;
	if (future.on && check_future(&future))
		return;
	if (priv.on && check_private(&priv))
		return;
	if (anon.on) {
		if (check_pattern("shared anonymous memory", anon.a, anon.len, anon.seed, 0) ||
		    check_pattern("its mremap view", anon.b, anon.len, anon.seed, 0) ||
		    check_views(&anon) ||
		    check_pattern("/dev/zero shared", zero.a, zero.len, zero.seed, 0) ||
		    check_views(&zero))
			return;
	}
	if (deleted_path && check_deleted())
		return;
	say("PASS shmem pid=%d checks=%d", getpid(), checks);
}

static void on_usr2(int sig, siginfo_t *info, void *ucontext)
{
	(void)sig;
	(void)info;
	check_requested = 1;
	redirect_if_in_window(ucontext, crimg_read_window_start,
			      crimg_read_window_end, crimg_read_eintr);
}

static void make_shared_anon(void)
{
	int z;

	anon.a = mmap(NULL, anon.len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (anon.a == MAP_FAILED)
		die("mmap shared anonymous");
	pattern_fill(anon.a, anon.len, anon.seed, 0);
	/* old_size 0: a second mapping of the same shared memory. */
	anon.b = mremap(anon.a, 0, anon.len, MREMAP_MAYMOVE);
	if (anon.b == MAP_FAILED)
		die("mremap duplicate");
	anon.on = 1;
	z = open("/dev/zero", O_RDWR | O_CLOEXEC);
	if (z < 0)
		die("open /dev/zero");
	zero.a = mmap(NULL, zero.len, PROT_READ | PROT_WRITE, MAP_SHARED, z, 0);
	if (zero.a == MAP_FAILED)
		die("mmap /dev/zero");
	close(z);
	pattern_fill(zero.a, zero.len, zero.seed, 0);
	zero.b = mremap(zero.a, 0, zero.len, MREMAP_MAYMOVE);
	if (zero.b == MAP_FAILED)
		die("mremap /dev/zero duplicate");
}

static void make_deleted(const char *path)
{
	char *buf = calloc(1, 4 * PAGE);
	int fd;

	deleted_path = path;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		die("open --deleted file");
	pattern_fill(buf, 4 * PAGE, DELETED_SEED, 0);
	if (pwrite(fd, buf, DELETED_LEN, 0) != (ssize_t)DELETED_LEN)
		die("write --deleted file");
	free(buf);
	deleted_shared = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	deleted_private = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 2 * PAGE);
	if (deleted_shared == MAP_FAILED || deleted_private == MAP_FAILED)
		die("mmap --deleted file");
	pattern_fill(deleted_private, PAGE, DELETED_SEED ^ 0xffff, 0);
	if (unlink(path))
		die("unlink --deleted file");
	if (keep_fds) {
		if (lseek(fd, DELETED_POS, SEEK_SET) != DELETED_POS)
			die("lseek");
		deleted_fd = fd;
	} else {
		close(fd);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_sigaction = on_usr2, .sa_flags = SA_SIGINFO };
	char line[256];
	size_t len = 0;
	int i;

	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--keep-fds"))
			keep_fds = 1;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--memfd"))
			make_memfd(&memfd, F_SEAL_SHRINK | F_SEAL_GROW, PROT_READ | PROT_WRITE, MAP_SHARED);
		else if (!strcmp(argv[i], "--memfd-sealed"))
			make_memfd(&sealed, F_SEAL_WRITE | F_SEAL_SEAL, PROT_READ, MAP_SHARED);
		else if (!strcmp(argv[i], "--memfd-fd-only"))
			make_fd_only();
		else if (!strcmp(argv[i], "--memfd-future"))
			make_future();
		else if (!strcmp(argv[i], "--memfd-private")) {
			make_memfd(&priv, 0, PROT_READ | PROT_WRITE, MAP_PRIVATE);
			pattern_fill(priv.a, PAGE, priv.seed ^ 0xffff, 0);
		} else if (!strcmp(argv[i], "--shared-anon"))
			make_shared_anon();
		else if (!strcmp(argv[i], "--deleted") && i + 1 < argc)
			make_deleted(argv[++i]);
		else if (strcmp(argv[i], "--keep-fds")) {
			say("ERROR unknown option %s", argv[i]);
			return 2;
		}
	}
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction");
	say("READY pid=%d", getpid());

	for (;;) {
		ssize_t r = crimg_checked_read(0, line + len, sizeof(line) - 1 - len,
					       &check_requested);
		char *nl;

		if (r == 0) {
			for (;;) {
				wait_for_check(&check_requested);
				if (check_requested)
					do_check();
			}
		}
		if (r > 0) {
			len += (size_t)r;
			line[len] = 0;
			while ((nl = strchr(line, '\n'))) {
				*nl = 0;
				if (!strcmp(line, "check"))
					do_check();
				len -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, len + 1);
			}
			if (len == sizeof(line) - 1)
				len = 0;
		} else if (r != -EINTR) {
			errno = (int)-r;
			die("read stdin");
		}
		if (check_requested)
			do_check();
	}
}
