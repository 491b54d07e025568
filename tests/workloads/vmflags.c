/*
 * vmflags: memory areas and mm state with the flags a restore must keep
 * (the kernel's VmFlags in /proc/PID/smaps, THP_enabled in status). Each
 * option adds one kind of area or mm setting; every area holds a pattern in
 * a few written pages, checked on request.
 *
 * Options:
 *   --noreserve-gb N    a private anonymous MAP_NORESERVE area of N GiB
 *                       (more than this machine could commit), with pages
 *                       written at its start, middle and end
 *   --thp-disable       prctl(PR_SET_THP_DISABLE, 1)
 *   --shared-ro FILE    FILE (created, one page) opened read-write and
 *                       mapped MAP_SHARED with PROT_READ only; the check
 *                       mprotects it writable, stores through the mapping
 *                       and reads the store back from the file
 *   --close-shared-fd   close that file's fd once it is mapped (only the
 *                       mapping holds the file)
 *   --locked            an mlock()ed area
 *   --lock-on-fault     an area locked with mlock2(MLOCK_ONFAULT)
 *   --mergeable         an area with MADV_MERGEABLE
 *   --droppable         a MAP_DROPPABLE area (Linux 6.11+)
 *   --dontfork          an area with MADV_DONTFORK
 *   --wipeonfork        an area with MADV_WIPEONFORK
 *   --coredump-filter H write H (hex) to /proc/self/coredump_filter
 *   --was-writable      an area mapped writable, written, emptied
 *                       (MADV_DONTNEED), then made PROT_NONE: it holds no
 *                       page but stays charged to the commit count (`ac`)
 *   --apart             two adjacent areas with the same flags that the
 *                       kernel keeps apart (each has its own anon_vma: the
 *                       second was made executable while it was written)
 *   --mlockall          mlockall(MCL_CURRENT | MCL_FUTURE), after the areas
 *                       of the options before it
 *   --thread            a second thread, blocked for good (glibc gives its
 *                       stack a PROT_NONE guard page: with --mlockall after
 *                       it, a locked `---p` area whose pages cannot be
 *                       faulted in)
 *   --locked-none       a PROT_NONE area locked with mlock() (which sets
 *                       the lock and returns ENOMEM: nothing to fault in)
 *   --locked-past-eof FILE  FILE (created, one page) mapped private and
 *                       read-only over four pages and mlock()ed: the lock
 *                       is set, the pages past the end of the file cannot
 *                       be faulted in (ENOMEM)
 *   --mbind             an area bound to NUMA node 0 (mbind MPOL_BIND)
 *   --mdwe              prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN); the
 *                       check reads it back and tries to make a writable
 *                       page executable, which must fail
 *
 * Output:
 *   READY pid=<pid> sum=0x<checksum of the written pages> <area>=0x<address> ...
 *   on check (SIGUSR2 or the stdin line "check"):
 *   PASS vmflags pid=<pid> areas=<n> [shared_write=ok] [mdwe=<PR_GET_MDWE>]
 *   or   FAIL vmflags <reason>
 * The stdin line "ping" prints "PONG pid=<pid>" (a restored victim answers
 * only once its restore is complete).
 * The droppable area's pages may be dropped by the kernel at any time: the
 * check accepts zero pages there (but nothing else).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define AREA_PAGES 16UL
#define GIB (1024UL * 1024 * 1024)

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

struct area {
	const char *name;
	uint8_t *addr;
	size_t len;
	/* Offsets of the written pages, in pages. */
	size_t written[3];
	size_t nwritten;
	int droppable;
};

static struct area areas[16];
static size_t nareas;
static int shared_fd = -1;
static const char *shared_path;
static uint8_t *shared_map;
static int mdwe;
static uint8_t *was_writable;
static volatile sig_atomic_t check_requested;
static uint8_t *locked_none;
static uint8_t *locked_past_eof;

/* The --thread thread: blocked in pause() with every signal blocked. */
static void *idle_thread(void *arg)
{
	sigset_t all;

	(void)arg;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;)
		pause();
	return NULL;
}

static uint64_t seed_of(size_t i)
{
	return 0x5eed0000ULL + i * 0x1001ULL;
}

/* Map an area, write its pages, and remember it. */
static struct area *add_area(const char *name, size_t len, int flags)
{
	struct area *a = &areas[nareas];
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die(name);
	a->name = name;
	a->addr = p;
	a->len = len;
	a->written[0] = 0;
	a->written[1] = len / PAGE / 2;
	a->written[2] = len / PAGE - 1;
	a->nwritten = 3;
	for (size_t i = 0; i < a->nwritten; i++)
		pattern_fill(p + a->written[i] * PAGE, PAGE, seed_of(nareas),
			     a->written[i] * PAGE / 8);
	nareas++;
	return a;
}

/* Checksum of every written page, area after area. */
static uint64_t written_sum(void)
{
	uint64_t h = 0;

	for (size_t n = 0; n < nareas; n++)
		for (size_t i = 0; i < areas[n].nwritten; i++)
			h ^= checksum(areas[n].addr + areas[n].written[i] * PAGE,
				      PAGE) + n;
	return h;
}

static void do_check(void)
{
	check_requested = 0;
	for (size_t n = 0; n < nareas; n++) {
		struct area *a = &areas[n];

		for (size_t i = 0; i < a->nwritten; i++) {
			uint8_t *page = a->addr + a->written[i] * PAGE;
			uint64_t want, got;
			long off = pattern_find_mismatch(page, PAGE, seed_of(n),
							 a->written[i] * PAGE / 8,
							 &want, &got);

			if (off >= 0 && !(a->droppable && find_nonzero(page, PAGE) < 0)) {
				say("FAIL vmflags area %s page %zu word at 0x%lx: expected 0x%lx found 0x%lx",
				    a->name, a->written[i], off, want, got);
				return;
			}
		}
	}
	if (shared_map) {
		uint64_t word = 0x5a5a0000ULL + (uint64_t)getpid(), back = 0;

		if (mprotect(shared_map, PAGE, PROT_READ | PROT_WRITE)) {
			say("FAIL vmflags mprotect(PROT_WRITE) of the read-only shared file mapping: %m");
			return;
		}
		memcpy(shared_map + 8, &word, 8);
		if (msync(shared_map, PAGE, MS_SYNC)) {
			say("FAIL vmflags msync of the shared file mapping: %m");
			return;
		}
		int fd = shared_fd >= 0 ? shared_fd : open(shared_path, O_RDONLY | O_CLOEXEC);
		ssize_t got = fd >= 0 ? pread(fd, &back, 8, 8) : -1;

		if (fd >= 0 && fd != shared_fd)
			close(fd);
		if (got != 8 || back != word) {
			say("FAIL vmflags the store through the shared mapping did not reach the file (read 0x%lx, wrote 0x%lx)",
			    back, word);
			return;
		}
		/* Back as it was: read-only. */
		if (mprotect(shared_map, PAGE, PROT_READ)) {
			say("FAIL vmflags mprotect(PROT_READ): %m");
			return;
		}
	}
	if (mdwe) {
		int now = prctl(PR_GET_MDWE, 0, 0, 0, 0);
		uint8_t *page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (page == MAP_FAILED) {
			say("FAIL vmflags mmap: %m");
			return;
		}
		if (now != PR_MDWE_REFUSE_EXEC_GAIN) {
			say("FAIL vmflags PR_GET_MDWE is %d, was %d", now,
			    PR_MDWE_REFUSE_EXEC_GAIN);
			munmap(page, PAGE);
			return;
		}
		if (!mprotect(page, PAGE, PROT_READ | PROT_EXEC)) {
			say("FAIL vmflags a writable page was made executable under MDWE");
			munmap(page, PAGE);
			return;
		}
		munmap(page, PAGE);
		say("PASS vmflags pid=%d areas=%zu%s mdwe=%d", getpid(), nareas,
		    shared_map ? " shared_write=ok" : "", now);
		return;
	}
	say("PASS vmflags pid=%d areas=%zu%s", getpid(), nareas,
	    shared_map ? " shared_write=ok" : "");
}

static void on_usr2(int sig, siginfo_t *info, void *ucontext)
{
	(void)sig;
	(void)info;
	check_requested = 1;
	redirect_if_in_window(ucontext, crimg_read_window_start,
			      crimg_read_window_end, crimg_read_eintr);
}

static void map_shared_read_only(const char *path)
{
	uint8_t page[PAGE];

	shared_path = path;
	shared_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (shared_fd < 0)
		die("open --shared-ro file");
	pattern_fill(page, PAGE, 0xf11e, 0);
	if (pwrite(shared_fd, page, PAGE, 0) != (ssize_t)PAGE)
		die("write --shared-ro file");
	shared_map = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, shared_fd, 0);
	if (shared_map == MAP_FAILED)
		die("mmap --shared-ro file");
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	char line[4096];
	size_t len = 0;
	int n = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr2;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction SIGUSR2");

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--noreserve-gb")) {
			long gb = parse_long(a, v);

			i++;
			add_area("noreserve", (size_t)gb * GIB,
				 MAP_PRIVATE | MAP_NORESERVE);
		} else if (!strcmp(a, "--coredump-filter") && v) {
			FILE *f = fopen("/proc/self/coredump_filter", "w");

			i++;
			if (!f || fprintf(f, "0x%s\n", v) < 0 || fclose(f))
				die("write /proc/self/coredump_filter");
		} else if (!strcmp(a, "--apart")) {
			/* Both halves of one reservation: the low one mapped
			 * and written, then the high one mapped executable
			 * (so it does not merge), written, and made like the
			 * low one. */
			size_t len = AREA_PAGES * PAGE;
			uint8_t *base = mmap(NULL, 2 * len, PROT_NONE,
					     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			int prots[2] = { PROT_READ | PROT_WRITE,
					 PROT_READ | PROT_WRITE | PROT_EXEC };
			const char *names[2] = { "apart_low", "apart_high" };

			if (base == MAP_FAILED)
				die("--apart reservation");
			for (int k = 0; k < 2; k++) {
				struct area *ar = &areas[nareas];
				uint8_t *p = base + (size_t)k * len;

				if (mmap(p, len, prots[k],
					 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
					 -1, 0) != p)
					die("--apart mmap");
				ar->name = names[k];
				ar->addr = p;
				ar->len = len;
				ar->written[0] = 0;
				ar->written[1] = AREA_PAGES / 2;
				ar->written[2] = AREA_PAGES - 1;
				ar->nwritten = 3;
				for (size_t w = 0; w < ar->nwritten; w++)
					pattern_fill(p + ar->written[w] * PAGE, PAGE,
						     seed_of(nareas),
						     ar->written[w] * PAGE / 8);
				nareas++;
			}
			if (mprotect(base + len, len, PROT_READ | PROT_WRITE))
				die("--apart mprotect");
		} else if (!strcmp(a, "--was-writable")) {
			was_writable = mmap(NULL, AREA_PAGES * PAGE,
					    PROT_READ | PROT_WRITE,
					    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (was_writable == MAP_FAILED)
				die("--was-writable mmap");
			/* Faulted once, so the kernel keeps its charge (an
			 * area that never faulted loses it with PROT_WRITE). */
			was_writable[0] = 1;
			if (madvise(was_writable, AREA_PAGES * PAGE, MADV_DONTNEED) ||
			    mprotect(was_writable, AREA_PAGES * PAGE, PROT_NONE))
				die("--was-writable");
		} else if (!strcmp(a, "--mlockall")) {
			if (mlockall(MCL_CURRENT | MCL_FUTURE))
				die("mlockall");
		} else if (!strcmp(a, "--thread")) {
			pthread_t t;

			if (pthread_create(&t, NULL, idle_thread, NULL))
				die("pthread_create");
		} else if (!strcmp(a, "--locked-none")) {
			locked_none = mmap(NULL, AREA_PAGES * PAGE, PROT_NONE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (locked_none == MAP_FAILED)
				die("--locked-none mmap");
			/* The lock is set; faulting in PROT_NONE pages fails. */
			if (mlock(locked_none, AREA_PAGES * PAGE) && errno != ENOMEM)
				die("--locked-none mlock");
		} else if (!strcmp(a, "--locked-past-eof") && v) {
			uint8_t page[PAGE];
			int fd = open(v, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

			i++;
			memset(page, 0x5a, sizeof(page));
			if (fd < 0 || pwrite(fd, page, PAGE, 0) != (ssize_t)PAGE)
				die("--locked-past-eof file");
			locked_past_eof = mmap(NULL, 4 * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
			close(fd);
			if (locked_past_eof == MAP_FAILED)
				die("--locked-past-eof mmap");
			if (mlock(locked_past_eof, 4 * PAGE) && errno != ENOMEM)
				die("--locked-past-eof mlock");
		} else if (!strcmp(a, "--mbind")) {
			struct area *ar = add_area("mbind", AREA_PAGES * PAGE,
						   MAP_PRIVATE);
			unsigned long node0 = 1;

			/* MPOL_BIND = 2 */
			if (syscall(SYS_mbind, ar->addr, ar->len, 2, &node0,
				    sizeof(node0) * 8, 0))
				die("mbind");
		} else if (!strcmp(a, "--mdwe")) {
			if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0))
				die("PR_SET_MDWE");
			mdwe = 1;
		} else if (!strcmp(a, "--thp-disable")) {
			if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
				die("PR_SET_THP_DISABLE");
		} else if (!strcmp(a, "--shared-ro") && v) {
			i++;
			map_shared_read_only(v);
		} else if (!strcmp(a, "--close-shared-fd")) {
			if (shared_fd < 0 || close(shared_fd))
				die("--close-shared-fd needs --shared-ro first");
			shared_fd = -1;
		} else if (!strcmp(a, "--locked")) {
			struct area *ar = add_area("locked", AREA_PAGES * PAGE,
						   MAP_PRIVATE);

			if (mlock(ar->addr, ar->len))
				die("mlock");
		} else if (!strcmp(a, "--lock-on-fault")) {
			struct area *ar = add_area("lock_on_fault",
						   AREA_PAGES * PAGE, MAP_PRIVATE);

			if (syscall(SYS_mlock2, ar->addr, ar->len, MLOCK_ONFAULT))
				die("mlock2 MLOCK_ONFAULT");
		} else if (!strcmp(a, "--mergeable")) {
			struct area *ar = add_area("mergeable", AREA_PAGES * PAGE,
						   MAP_PRIVATE);

			if (madvise(ar->addr, ar->len, MADV_MERGEABLE))
				die("madvise MADV_MERGEABLE");
		} else if (!strcmp(a, "--droppable")) {
			add_area("droppable", AREA_PAGES * PAGE, MAP_DROPPABLE)
				->droppable = 1;
		} else if (!strcmp(a, "--dontfork")) {
			struct area *ar = add_area("dontfork", AREA_PAGES * PAGE,
						   MAP_PRIVATE);

			if (madvise(ar->addr, ar->len, MADV_DONTFORK))
				die("madvise MADV_DONTFORK");
		} else if (!strcmp(a, "--wipeonfork")) {
			struct area *ar = add_area("wipeonfork", AREA_PAGES * PAGE,
						   MAP_PRIVATE);

			if (madvise(ar->addr, ar->len, MADV_WIPEONFORK))
				die("madvise MADV_WIPEONFORK");
		} else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
		if (nareas >= sizeof(areas) / sizeof(areas[0]) - 1) {
			say("ERROR too many areas");
			exit(2);
		}
	}

	n = snprintf(line, sizeof(line), "READY pid=%d sum=0x%lx", getpid(),
		     written_sum());
	for (size_t i = 0; i < nareas && n < (int)sizeof(line); i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, " %s=%p",
			      areas[i].name, (void *)areas[i].addr);
	if (shared_map && n < (int)sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, " shared_ro=%p",
			      (void *)shared_map);
	if (was_writable && n < (int)sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, " was_writable=%p",
			      (void *)was_writable);
	if (locked_none && n < (int)sizeof(line))
		n += snprintf(line + n, sizeof(line) - (size_t)n, " locked_none=%p",
			      (void *)locked_none);
	if (locked_past_eof && n < (int)sizeof(line))
		snprintf(line + n, sizeof(line) - (size_t)n, " locked_past_eof=%p",
			 (void *)locked_past_eof);
	say("%s", line);

	for (;;) {
		ssize_t r = crimg_checked_read(0, line + len,
					       sizeof(line) - 1 - len,
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
				else if (!strcmp(line, "ping"))
					say("PONG pid=%d", getpid());
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
