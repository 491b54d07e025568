/*
 * bigmem: a large, partly written anonymous mapping, for image-size and
 * throughput tests of crimg.
 *
 * It maps --mb MiB, writes a pattern into --write-pct percent of its pages
 * (rounded down to whole pages), and reports the exact number of bytes
 * written and their checksum. The pages not written are never touched, so a
 * dumper that stores only pages carrying data writes an image of about
 * `written` bytes, not `size`.
 *
 * Options:
 *   --mb N              size of the mapping in MiB (default 256)
 *   --write-pct P       percentage of pages written, 0..100 (default 50)
 *   --layout L          contiguous (default): the first pages are written;
 *                       interleaved: pages are written evenly spread out
 *                       (every k-th page), so the data is in many runs
 *
 * Output:
 *   READY pid=<pid> addr=0x.. size=<bytes> written=<bytes> pages_written=<n>
 *         layout=<l> sum=0x<checksum of the written pages, in address order>
 *   on check (SIGUSR2 or the stdin line "check"):
 *   PASS bigmem pid=<pid> written=<bytes> sum=0x..   or   FAIL bigmem <reason>
 * Stdin "quit" prints BYE and exits 0. The process otherwise blocks in read()
 * on stdin (or in pause() once stdin is closed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define SEED 0x0b16e3e3b16e3e31ULL

static struct {
	long mb;
	long write_pct;
	int interleaved;
} opt = { 256, 50, 0 };

static uint8_t *region;
static size_t size, pages, pages_written;
static volatile sig_atomic_t check_requested;

/* Page number `i` of the region is written when this is true. Interleaved
 * spreads the written pages evenly: page i is written when the running share
 * i * pct / 100 steps up. */
static int page_is_written(size_t i)
{
	if (!opt.interleaved)
		return i < pages_written;
	return (i + 1) * (size_t)opt.write_pct / 100 !=
	       i * (size_t)opt.write_pct / 100;
}

/* Checksum of the written pages, in address order. */
static uint64_t written_sum(void)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < pages; i++)
		if (page_is_written(i))
			h = (h ^ checksum(region + i * PAGE, PAGE)) *
			    0x100000001b3ULL;
	return h;
}

static void do_check(void)
{
	check_requested = 0;
	for (size_t i = 0; i < pages; i++) {
		uint8_t *page = region + i * PAGE;
		uint64_t want, got;

		if (page_is_written(i)) {
			long off = pattern_find_mismatch(page, PAGE, SEED,
							 i * PAGE / 8, &want,
							 &got);

			if (off >= 0) {
				say("FAIL bigmem written page %zu (address %p) word at offset 0x%lx: expected 0x%lx found 0x%lx",
				    i, (void *)page, off, want, got);
				return;
			}
		} else {
			long off = find_nonzero(page, PAGE);

			if (off >= 0) {
				say("FAIL bigmem untouched page %zu (address %p) has a non-zero byte at offset 0x%lx",
				    i, (void *)page, off);
				return;
			}
		}
	}
	say("PASS bigmem pid=%d written=%zu sum=0x%lx", getpid(),
	    pages_written * PAGE, written_sum());
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--mb"))
			opt.mb = parse_long(a, v), i++;
		else if (!strcmp(a, "--write-pct"))
			opt.write_pct = parse_long(a, v), i++;
		else if (!strcmp(a, "--layout") && v) {
			i++;
			if (!strcmp(v, "interleaved"))
				opt.interleaved = 1;
			else if (strcmp(v, "contiguous")) {
				say("ERROR --layout: unknown layout '%s'", v);
				exit(2);
			}
		} else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
	}
	if (opt.write_pct > 100) {
		say("ERROR --write-pct: at most 100");
		exit(2);
	}

	check_on_usr2(&check_requested);

	size = (size_t)opt.mb * 1024 * 1024;
	pages = size / PAGE;
	region = mmap(NULL, size ? size : PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		die("mmap region");
	/* Transparent huge pages would make untouched pages next to written
	 * ones present (zero-filled): keep the written size exact. */
	madvise(region, size ? size : PAGE, MADV_NOHUGEPAGE);
	if (opt.interleaved) {
		pages_written = 0;
		for (size_t i = 0; i < pages; i++)
			pages_written += (size_t)page_is_written(i);
	} else {
		pages_written = pages * (size_t)opt.write_pct / 100;
	}
	for (size_t i = 0; i < pages; i++)
		if (page_is_written(i))
			pattern_fill(region + i * PAGE, PAGE, SEED, i * PAGE / 8);

	say("READY pid=%d addr=%p size=%zu written=%zu pages_written=%zu layout=%s sum=0x%lx",
	    getpid(), (void *)region, size, pages_written * PAGE, pages_written,
	    opt.interleaved ? "interleaved" : "contiguous", written_sum());

	return serve_commands(&check_requested, do_check);
}
