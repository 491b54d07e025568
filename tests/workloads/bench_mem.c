/*
 * bench_mem: the C workload of the roundtrip benchmark. It writes a known
 * amount of memory, then waits for commands on stdin and times its own
 * resumption after a restore.
 *
 * Options:
 *   --mb N            MiB written (default 64)
 *   --reserve-gib G   write inside a MAP_NORESERVE reservation of G GiB
 *                     (what an AddressSanitizer build looks like) instead of
 *                     a mapping of the written size
 *   --stride-pages S  write one page every S pages (default 1: contiguous);
 *                     with --reserve-gib 16384 --mb 32 --stride-pages 2 the
 *                     8192 written pages sit one page apart in 16 TiB
 *   --thp             MADV_HUGEPAGE on a 2 MiB-aligned area (default:
 *                     MADV_NOHUGEPAGE, so that exactly the written pages are
 *                     present)
 *   --step-mb M       the size of one "step" (default 10)
 *
 * Every 8-byte word of written page i holds word(i, j, gen[chunk of i]);
 * a chunk is --step-mb MiB of written pages and its generation grows by one
 * at each step.
 *
 * Stdin commands (one per line; the process otherwise blocks in read()):
 *   resume  prints "RESUMED t=<CLOCK_REALTIME ns>" as the first thing after
 *           the read() returns, then reads one word of every written page
 *           and prints "POPULATED t=<ns>", then checks every word and prints
 *           "PASS bench_mem ..." or "FAIL bench_mem <reason>"
 *   check   the check alone
 *   step    rewrites the next chunk with its next generation (round robin)
 *           and prints "STEPPED chunk=<n> gen=<g>"
 *   quit    prints BYE and exits 0
 *
 * Output at start:
 *   READY pid=<pid> addr=0x.. span=<bytes> written=<bytes> pages=<n>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define WORDS (PAGE / 8)

static struct {
	long mb, reserve_gib, stride, step_mb;
	int thp;
} opt = { 64, 0, 1, 10, 0 };

static uint8_t *base;
static size_t pages, span, pages_per_chunk, chunks, next_chunk;
static uint32_t *gen;

static uint64_t word(size_t page, size_t j, uint32_t g)
{
	return ((uint64_t)page << 20 | j) * 0x9e3779b97f4a7c15ULL ^
	       ((uint64_t)g << 32 | 0x5bd1e995);
}

static uint64_t *page_at(size_t i)
{
	return (uint64_t *)(base + i * (size_t)opt.stride * PAGE);
}

static void fill_page(size_t i)
{
	uint64_t *w = page_at(i);
	uint32_t g = gen[i / pages_per_chunk];

	for (size_t j = 0; j < WORDS; j++)
		w[j] = word(i, j, g);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void check(void)
{
	for (size_t i = 0; i < pages; i++) {
		const uint64_t *w = page_at(i);
		uint32_t g = gen[i / pages_per_chunk];

		for (size_t j = 0; j < WORDS; j++)
			if (w[j] != word(i, j, g)) {
				say("FAIL bench_mem page %zu (address %p) word %zu: expected 0x%lx found 0x%lx",
				    i, (void *)w, j, word(i, j, g), w[j]);
				return;
			}
	}
	say("PASS bench_mem pid=%d written=%zu", getpid(), pages * PAGE);
}

static void resume(void)
{
	volatile uint64_t sink = 0;
	uint64_t t = now_ns(), sum = 0;

	say("RESUMED t=%lu", t);
	for (size_t i = 0; i < pages; i++)
		sum += *(volatile uint64_t *)page_at(i);
	sink = sum;
	(void)sink;
	say("POPULATED t=%lu", now_ns());
	check();
}

static void step(void)
{
	size_t c = next_chunk;
	size_t end = (c + 1) * pages_per_chunk;

	next_chunk = (c + 1) % chunks;
	gen[c]++;
	for (size_t i = c * pages_per_chunk; i < end && i < pages; i++)
		fill_page(i);
	say("STEPPED chunk=%zu gen=%u", c, gen[c]);
}

int main(int argc, char **argv)
{
	char line[256];
	size_t len = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--mb"))
			opt.mb = parse_long(a, v), i++;
		else if (!strcmp(a, "--reserve-gib"))
			opt.reserve_gib = parse_long(a, v), i++;
		else if (!strcmp(a, "--stride-pages"))
			opt.stride = parse_long(a, v), i++;
		else if (!strcmp(a, "--step-mb"))
			opt.step_mb = parse_long(a, v), i++;
		else if (!strcmp(a, "--thp"))
			opt.thp = 1;
		else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
	}
	if (opt.mb < 1 || opt.stride < 1 || opt.step_mb < 1) {
		say("ERROR --mb, --stride-pages and --step-mb must be at least 1");
		exit(2);
	}

	pages = (size_t)opt.mb * 256;
	span = pages * (size_t)opt.stride * PAGE;
	if (opt.reserve_gib) {
		size_t reserve = (size_t)opt.reserve_gib << 30;

		if (reserve < span) {
			say("ERROR the reservation is smaller than the written span");
			exit(2);
		}
		span = reserve;
	}
	/* 2 MiB more, so that a huge-page aligned start fits. */
	base = mmap(NULL, span + HUGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		die("mmap");
	base = (uint8_t *)(((uintptr_t)base + HUGE - 1) & ~(HUGE - 1));
	if (madvise(base, span, opt.thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
		die("madvise");

	pages_per_chunk = (size_t)opt.step_mb * 256;
	chunks = (pages + pages_per_chunk - 1) / pages_per_chunk;
	gen = calloc(chunks, sizeof(*gen));
	if (!gen)
		die("calloc");
	for (size_t i = 0; i < pages; i++)
		fill_page(i);

	say("READY pid=%d addr=%p span=%zu written=%zu pages=%zu", getpid(),
	    (void *)base, span, pages * PAGE, pages);

	for (;;) {
		ssize_t n = read(0, line + len, sizeof(line) - 1 - len);
		char *nl;

		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read stdin");
		}
		len += (size_t)n;
		line[len] = 0;
		while ((nl = strchr(line, '\n'))) {
			*nl = 0;
			if (!strcmp(line, "resume"))
				resume();
			else if (!strcmp(line, "check"))
				check();
			else if (!strcmp(line, "step"))
				step();
			else if (!strcmp(line, "quit")) {
				say("BYE");
				return 0;
			}
			len -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len + 1);
		}
		if (len == sizeof(line) - 1)
			len = 0;
	}
}
