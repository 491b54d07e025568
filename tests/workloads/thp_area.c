/*
 * thp_area: one anonymous area advised MADV_HUGEPAGE, 2 MiB-aligned and
 * written fully, so the kernel backs it with transparent huge pages; for
 * the test that a restore brings them back (AnonHugePages in smaps).
 *
 * Options:
 *   --mb N    size of the area in MiB, a multiple of 2 (default 512)
 *
 * Output:
 *   READY pid=<pid> addr=0x.. size=<bytes> sum=0x<checksum of the area>
 *   on check (SIGUSR2 or the stdin line "check"):
 *   PASS thp_area pid=<pid> size=<bytes> sum=0x..   or   FAIL thp_area <reason>
 * Stdin "quit" prints BYE and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define HUGE (2UL << 20)
#define SEED 0x7a9e5eed2b1d0c4bULL

static uint8_t *area;
static size_t size;
static volatile sig_atomic_t check_requested;

static void do_check(void)
{
	uint64_t want, got;
	long off;

	check_requested = 0;
	off = pattern_find_mismatch(area, size, SEED, 0, &want, &got);
	if (off >= 0) {
		say("FAIL thp_area word at offset 0x%lx (address %p): expected 0x%lx found 0x%lx",
		    off, (void *)(area + off), want, got);
		return;
	}
	say("PASS thp_area pid=%d size=%zu sum=0x%lx", getpid(), size,
	    checksum(area, size));
}

int main(int argc, char **argv)
{
	long mb = 512;
	uint8_t *raw;
	uintptr_t aligned;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--mb"))
			mb = parse_long(a, v), i++;
		else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
	}
	if (mb <= 0 || mb % 2) {
		say("ERROR --mb: a positive multiple of 2");
		exit(2);
	}

	check_on_usr2(&check_requested);

	/* Over-map by one huge page and trim, so the area starts and ends on
	 * 2 MiB boundaries and every one of its huge pages can be one. */
	size = (size_t)mb << 20;
	raw = mmap(NULL, size + HUGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap area");
	aligned = ((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1);
	if (aligned != (uintptr_t)raw && munmap(raw, aligned - (uintptr_t)raw))
		die("munmap head");
	if (munmap((void *)(aligned + size),
		   (uintptr_t)raw + size + HUGE - (aligned + size)))
		die("munmap tail");
	area = (uint8_t *)aligned;
	if (madvise(area, size, MADV_HUGEPAGE))
		die("madvise MADV_HUGEPAGE");
	pattern_fill(area, size, SEED, 0);

	say("READY pid=%d addr=%p size=%zu sum=0x%lx", getpid(), (void *)area,
	    size, checksum(area, size));

	return serve_commands(&check_requested, do_check);
}
