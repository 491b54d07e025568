/*
 * incr_counter: a self-checking victim for incremental checkpoints.
 *
 * It fills --mb MiB of anonymous memory with a pattern (generation 0),
 * prints READY, then reads commands on stdin:
 *
 *   step N   write generation N into every page whose number is 0 mod
 *            (N + 1), and into page N of a second, small area; the
 *            generation each page was last written with lives in a table
 *            (itself in memory), so any page restored from the wrong image
 *            of a chain is caught; prints "STEPPED n=N pages=K"
 *   swap     exchange the two halves of the area with mremap (their pages
 *            move with their contents, and so with the kernel's write
 *            tracking state of each page): "SWAPPED"
 *   check    verify every page against the table, print PASS or FAIL
 *   quit     print BYE and exit 0
 *
 * Between dumps a test sends "step"s: each dump of an incremental chain
 * then holds a different set of pages, and the restore of the newest must
 * give the newest content of every page.
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "workload.h"

#define PAGE 4096UL

static unsigned char *area;
static size_t npages;
static uint32_t *written_gen;

/* The pattern of a page is that of the page it was written as (`origin`,
 * which a swap moves) and of its generation. */
static size_t *origin;

static uint64_t seed_of(size_t page, uint32_t gen)
{
	return 0x1234567ULL + origin[page] * 1000003ULL + (uint64_t)gen * 7919ULL;
}

/* Exchange the halves [0, n/2) and [n/2, n) of the area by mremap. */
static void swap_halves(void)
{
	size_t half = npages / 2 * PAGE;
	void *tmp = mmap(NULL, half, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (tmp == MAP_FAILED ||
	    mremap(area, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, tmp) == MAP_FAILED ||
	    mremap(area + half, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, area) == MAP_FAILED ||
	    mremap(tmp, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, area + half) == MAP_FAILED)
		die("mremap");
	for (size_t p = 0; p < npages / 2; p++) {
		size_t q = p + npages / 2;
		uint32_t g = written_gen[p];
		size_t o = origin[p];

		written_gen[p] = written_gen[q];
		written_gen[q] = g;
		origin[p] = origin[q];
		origin[q] = o;
	}
}

static void write_page(size_t page, uint32_t gen)
{
	pattern_fill(area + page * PAGE, PAGE, seed_of(page, gen), 0);
	written_gen[page] = gen;
}

static int check_all(void)
{
	for (size_t p = 0; p < npages; p++) {
		uint64_t want, got;
		long bad = pattern_find_mismatch(area + p * PAGE, PAGE,
						 seed_of(p, written_gen[p]), 0,
						 &want, &got);
		if (bad >= 0) {
			say("FAIL incr_counter page %zu (gen %u) differs at byte %ld: %#llx, not %#llx",
			    p, written_gen[p], bad, (unsigned long long)got,
			    (unsigned long long)want);
			return 1;
		}
	}
	uint64_t sum = 0;
	for (size_t p = 0; p < npages; p++)
		sum += written_gen[p];
	say("PASS incr_counter pid=%d pages=%zu gen_sum=%llu", getpid(), npages,
	    (unsigned long long)sum);
	return 0;
}

int main(int argc, char **argv)
{
	size_t mb = 8;
	char line[128];

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mb"))
			mb = strtoul(argv[i + 1], NULL, 10);
	}
	npages = mb * 256;
	area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		die("mmap");
	written_gen = calloc(npages, sizeof(*written_gen));
	origin = calloc(npages, sizeof(*origin));
	if (!written_gen || !origin)
		die("calloc");
	for (size_t p = 0; p < npages; p++)
		origin[p] = p;
	for (size_t p = 0; p < npages; p++)
		write_page(p, 0);
	say("READY pid=%d pages=%zu", getpid(), npages);
	while (fgets(line, sizeof(line), stdin)) {
		unsigned n;

		if (sscanf(line, "step %u", &n) == 1) {
			size_t k = 0;

			for (size_t p = 0; p < npages; p += n + 1, k++)
				write_page(p, n);
			say("STEPPED n=%u pages=%zu", n, k);
		} else if (!strncmp(line, "swap", 4)) {
			swap_halves();
			say("SWAPPED");
		} else if (!strncmp(line, "check", 5)) {
			check_all();
		} else if (!strncmp(line, "quit", 4)) {
			say("BYE");
			return 0;
		}
	}
	return 0;
}
