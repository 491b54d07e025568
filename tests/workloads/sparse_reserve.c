/*
 * sparse_reserve: a huge MAP_NORESERVE reservation with a few pages written
 * far apart in it, as an AddressSanitizer build's shadow memory looks: a
 * dumper whose cost follows the reserved address space (reading pagemap or
 * memory over it) takes minutes; one that follows used memory takes
 * milliseconds.
 *
 * Options:
 *   --gib N      size of the reservation in GiB (default 16384: 16 TiB)
 *   --pages N    pages written (default 8192: 32 MiB)
 *   --stride N   page i written is page (i * stride) mod (reserved pages / 2)
 *                of the reservation (default 1021: 4 MiB apart)
 *
 * Every written page is filled with a pattern of its own page number.
 *
 * Output:
 *   READY pid=<pid> addr=0x.. size=<bytes> pages=<n> sum=0x<checksum of the
 *         written pages, in the order written>
 *   on check (SIGUSR2 or the stdin line "check"): every written page holds
 *   its pattern, the page after each written one that is not written itself
 *   reads zero, and so does the last page of the reservation:
 *   PASS sparse_reserve pid=<pid> pages=<n> sum=0x..   or
 *   FAIL sparse_reserve <reason>
 * Stdin "quit" prints BYE and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define SEED 0x5ba25e5e7e5e7e01ULL

static struct {
	long gib;
	long pages;
	long stride;
} opt = { 16384, 8192, 1021 };

static uint8_t *region;
static size_t size, half;
static volatile sig_atomic_t check_requested;

/* The page number (in the reservation) of written page `i`. */
static size_t page_of(size_t i)
{
	return i * (size_t)opt.stride % half;
}

/* Whether page `p` of the reservation is one of the written ones. */
static int is_written(size_t p)
{
	/* Written pages lie below `half`, at multiples of the stride (the
	 * defaults never wrap, and then this is exact). */
	return p < half && p % (size_t)opt.stride == 0 &&
	       p / (size_t)opt.stride < (size_t)opt.pages;
}

static uint64_t written_sum(void)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < (size_t)opt.pages; i++)
		h = (h ^ checksum(region + page_of(i) * PAGE, PAGE)) *
		    0x100000001b3ULL;
	return h;
}

static void do_check(void)
{
	check_requested = 0;
	for (size_t i = 0; i < (size_t)opt.pages; i++) {
		size_t p = page_of(i);
		uint8_t *page = region + p * PAGE;
		uint64_t want, got;
		long off = pattern_find_mismatch(page, PAGE, SEED, p * PAGE / 8,
						 &want, &got);

		if (off >= 0) {
			say("FAIL sparse_reserve written page %zu (address %p) word at offset 0x%lx: expected 0x%lx found 0x%lx",
			    p, (void *)page, off, want, got);
			return;
		}
		if (!is_written(p + 1)) {
			off = find_nonzero(page + PAGE, PAGE);
			if (off >= 0) {
				say("FAIL sparse_reserve untouched page %zu (address %p) has a non-zero byte at offset 0x%lx",
				    p + 1, (void *)(page + PAGE), off);
				return;
			}
		}
	}
	if (find_nonzero(region + size - PAGE, PAGE) >= 0) {
		say("FAIL sparse_reserve the last page of the reservation is not zero");
		return;
	}
	say("PASS sparse_reserve pid=%d pages=%ld sum=0x%lx", getpid(),
	    opt.pages, written_sum());
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--gib"))
			opt.gib = parse_long(a, v), i++;
		else if (!strcmp(a, "--pages"))
			opt.pages = parse_long(a, v), i++;
		else if (!strcmp(a, "--stride"))
			opt.stride = parse_long(a, v), i++;
		else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
	}
	size = (size_t)opt.gib << 30;
	half = size / PAGE / 2;
	if (opt.gib < 1 || opt.stride < 1 ||
	    (size_t)opt.pages * (size_t)opt.stride >= half) {
		say("ERROR --gib, --pages, --stride: the written pages must fit in the first half of the reservation");
		exit(2);
	}

	check_on_usr2(&check_requested);

	region = mmap(NULL, size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		die("mmap reservation");
	/* Huge pages would make 2 MiB present around each written page. */
	madvise(region, size, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < (size_t)opt.pages; i++) {
		size_t p = page_of(i);

		pattern_fill(region + p * PAGE, PAGE, SEED, p * PAGE / 8);
	}

	say("READY pid=%d addr=%p size=%zu pages=%ld sum=0x%lx", getpid(),
	    (void *)region, size, opt.pages, written_sum());

	return serve_commands(&check_requested, do_check);
}
