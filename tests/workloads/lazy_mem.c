/*
 * lazy_mem: a fully written anonymous mapping that, after a lazy restore,
 * changes its memory map while the page server may still be filling it,
 * and checks that it reads what it must.
 *
 * It maps --mb MiB (default 256) and writes a pattern into every page.
 * Commands on stdin, one a line (send them before the restore resumes and
 * they run at its first instruction, while the fill is young):
 *   dontneed  MADV_DONTNEED of the second half: it must read zeros, the
 *             first half its pattern
 *   fork      a child checks the whole mapping (its pattern, or zeros where
 *             dropped) and exits 0 or 1
 *   mremap    moves the second quarter elsewhere (MREMAP_FIXED), then checks
 *             it at its new place, and the rest
 *   kread     the kernel reads 16 pages of the second half (write(2) to a
 *             pipe) and they must be the pattern
 *   forks     24 children at once, each checks the whole mapping and says
 *             so on a pipe, then waits (no PASS until all 24 said ok)
 *   release   the waiting children check it all again and exit 0 or 1
 *   mremaps   moves the second quarter away and back 64 times (as
 *             realloc does), then checks everything
 *   check     checks everything (as changed by the commands above)
 *   quit      says BYE and exits 0
 * Each command says "PASS <command> during_fill=<0|1> ..." or "FAIL
 * <command> <reason>"; during_fill is 1 when the mapping was still
 * registered with a userfaultfd ("um" in its smaps VmFlags) just before.
 * READY pid=<pid> addr=0x.. size=<bytes> at start.
 */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <sys/wait.h>

#include "workload.h"

#define PAGE 4096UL
#define SEED 0x1a2ea3e3b16e3e37ULL

static uint8_t *region;
static size_t size;
/* Offsets from zero_from on read zeros (MADV_DONTNEED). */
static size_t zero_from;
/* The range [moved_off, moved_off + moved_len) of the region is at moved_to. */
static uint8_t *moved_to;
static size_t moved_off, moved_len;

/* Is the region still registered with a userfaultfd? */
static int registered(void)
{
	char want[64], line[512];
	int in_region = 0, found = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		die("fopen /proc/self/smaps");
	snprintf(want, sizeof(want), "%lx-", (unsigned long)region);
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, want, strlen(want)))
			in_region = 1;
		else if (in_region && !strncmp(line, "VmFlags:", 8)) {
			found = strstr(line, " um") != NULL;
			break;
		}
	}
	fclose(f);
	return found;
}

static uint8_t *where(size_t off)
{
	if (moved_to && off >= moved_off && off < moved_off + moved_len)
		return moved_to + (off - moved_off);
	return region + off;
}

/* 0 when every page reads what it must; else says FAIL and returns -1. */
static int verify(const char *what)
{
	for (size_t off = 0; off < size; off += PAGE) {
		uint8_t *page = where(off);
		uint64_t want, got;

		if (off >= zero_from) {
			long at = find_nonzero(page, PAGE);

			if (at >= 0) {
				say("FAIL %s dropped page at offset 0x%zx (address %p) has a non-zero byte at 0x%lx",
				    what, off, (void *)page, at);
				return -1;
			}
			continue;
		}
		long at = pattern_find_mismatch(page, PAGE, SEED, off / 8,
						&want, &got);
		if (at >= 0) {
			say("FAIL %s page at offset 0x%zx (address %p) word at 0x%lx: expected 0x%lx found 0x%lx",
			    what, off, (void *)page, at, want, got);
			return -1;
		}
	}
	return 0;
}

static void do_dontneed(void)
{
	int during = registered();

	if (madvise(region + size / 2, size / 2, MADV_DONTNEED))
		die("madvise MADV_DONTNEED");
	zero_from = size / 2;
	if (!verify("dontneed"))
		say("PASS dontneed during_fill=%d", during);
}

static void do_fork(void)
{
	int during = registered(), status;
	pid_t child = fork();

	if (child < 0)
		die("fork");
	if (child == 0)
		_exit(verify("fork-child") ? 1 : 0);
	if (waitpid(child, &status, 0) != child)
		die("waitpid");
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !verify("fork"))
		say("PASS fork during_fill=%d", during);
	else
		say("FAIL fork child status 0x%x", status);
}

static void do_mremap(void)
{
	int during = registered();
	size_t len = size / 4;
	void *spot = mmap(NULL, len, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (spot == MAP_FAILED)
		die("mmap spot");
	moved_to = mremap(region + len, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
			  spot);
	if (moved_to == MAP_FAILED)
		die("mremap");
	moved_off = len;
	moved_len = len;
	if (!verify("mremap"))
		say("PASS mremap during_fill=%d to=%p", during, (void *)moved_to);
}

#define FORKS 24
static pid_t kids[FORKS];
static int go[2] = { -1, -1 };

static void do_forks(void)
{
	int during = registered(), said[2], bad = 0;

	if (pipe(said) || pipe(go))
		die("pipe");
	for (int i = 0; i < FORKS; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			die("fork");
		if (kids[i] == 0) {
			char c = verify("forks-child") ? 'f' : 'k';

			close(go[1]);
			if (write(said[1], &c, 1) != 1)
				_exit(3);
			/* Until "release": EOF once the parent closes its end. */
			while (read(go[0], &c, 1) > 0)
				;
			_exit(verify("released-child") ? 1 : 0);
		}
	}
	close(said[1]);
	close(go[0]);
	for (int i = 0; i < FORKS; i++) {
		char c;

		if (read(said[0], &c, 1) != 1)
			die("read said");
		bad += c != 'k';
	}
	close(said[0]);
	if (bad)
		say("FAIL forks %d of %d children read wrong memory", bad, FORKS);
	else if (!verify("forks"))
		say("PASS forks during_fill=%d n=%d", during, FORKS);
}

static void do_release(void)
{
	int bad = 0, status;

	close(go[1]);
	for (int i = 0; i < FORKS; i++) {
		if (waitpid(kids[i], &status, 0) != kids[i])
			die("waitpid");
		bad += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	}
	if (bad)
		say("FAIL release %d of %d children", bad, FORKS);
	else
		say("PASS release n=%d", FORKS);
}

static void do_mremaps(void)
{
	int during = registered();
	size_t len = size / 4;
	uint8_t *home = region + len;
	void *spot = mmap(NULL, len, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (spot == MAP_FAILED)
		die("mmap spot");
	for (int i = 0; i < 64; i++) {
		void *to = i % 2 ? (void *)home : spot;
		void *from = i % 2 ? spot : (void *)home;

		if (mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to)
			die("mremap");
	}
	if (!verify("mremaps"))
		say("PASS mremaps during_fill=%d", during);
}

static void do_kread(void)
{
	int during = registered(), p[2];
	size_t off = size / 2 + size / 4, len = 16 * PAGE;
	static uint8_t back[16 * PAGE];
	uint64_t want, got;

	if (pipe(p))
		die("pipe");
	/* The kernel reads the pages (copy_from_user), no user access first. */
	if (write(p[1], where(off), len) != (ssize_t)len)
		die("write pipe");
	for (size_t got_len = 0; got_len < len;) {
		ssize_t n = read(p[0], back + got_len, len - got_len);

		if (n <= 0)
			die("read pipe");
		got_len += (size_t)n;
	}
	close(p[0]);
	close(p[1]);
	long at = pattern_find_mismatch(back, len, SEED, off / 8, &want, &got);
	if (at >= 0)
		say("FAIL kread word at 0x%lx: expected 0x%lx found 0x%lx", at,
		    want, got);
	else
		say("PASS kread during_fill=%d", during);
}

int main(int argc, char **argv)
{
	long mb = 256;
	char line[256];
	size_t len = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mb") && i + 1 < argc)
			mb = parse_long(argv[i], argv[i + 1]), i++;
		else {
			say("ERROR unknown argument '%s'", argv[i]);
			exit(2);
		}
	}
	size = (size_t)mb << 20;
	zero_from = size;
	region = mmap(NULL, size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		die("mmap region");
	madvise(region, size, MADV_NOHUGEPAGE);
	pattern_fill(region, size, SEED, 0);
	say("READY pid=%d addr=%p size=%zu", getpid(), (void *)region, size);

	for (;;) {
		ssize_t n = read(0, line + len, sizeof(line) - 1 - len);
		char *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		len += (size_t)n;
		line[len] = 0;
		while ((nl = strchr(line, '\n'))) {
			*nl = 0;
			if (!strcmp(line, "dontneed"))
				do_dontneed();
			else if (!strcmp(line, "fork"))
				do_fork();
			else if (!strcmp(line, "mremap"))
				do_mremap();
			else if (!strcmp(line, "kread"))
				do_kread();
			else if (!strcmp(line, "forks"))
				do_forks();
			else if (!strcmp(line, "release"))
				do_release();
			else if (!strcmp(line, "mremaps"))
				do_mremaps();
			else if (!strcmp(line, "check")) {
				if (!verify("lazy_mem"))
					say("PASS lazy_mem pid=%d", getpid());
			} else if (!strcmp(line, "quit")) {
				say("BYE");
				return 0;
			} else
				say("ERROR unknown command '%s'", line);
			len -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len + 1);
		}
		if (len == sizeof(line) - 1)
			len = 0;
	}
}
