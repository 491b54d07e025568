/*
 * wp_writers: memory written without pause while it is dumped, for the
 * write-protected snapshot of `crdump --leave-running --snapshot`: the
 * image must hold each page as it was at the freeze, though the threads
 * wrote it again before crdump read it.
 *
 * --threads N writer threads (default 3) share a private area of --mb M
 * MiB (default 64), a slice each; one more writes a MAP_SHARED area of 4
 * MiB. A writer's step s writes the first and the last word of every page
 * of its slice with a value of (writer, s, page), then counts the step in
 * its own counter and in a common one. A page from after the freeze in a
 * restored image is a page of the slice behind the writer's position
 * holding a later step's value: the check sees it. Every signal is
 * blocked; SIGUSR2 is pending for the process.
 * --drop-mb D: two more private areas of D MiB each, filled with a pattern
 * once: the stdin line "drop" empties the first (MADV_DONTNEED) and
 * unmaps the second, then prints "DROPPED".
 *
 * Output:
 *   READY pid=<pid> threads=<N>
 *   on the stdin line "check": every writer is stopped at the end of its
 *   step, then every page of every slice holds that step's value, the
 *   common counter is the sum of the writers', the drop areas hold their
 *   pattern (unless dropped) and SIGUSR2 is pending:
 *   PASS wp_writers steps=<total> dropped=<0|1>
 *   or   FAIL wp_writers <reason>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MAX_WRITERS 16
#define SHARED_LEN (4UL << 20)

struct writer {
	pthread_t thread;
	uint64_t *base;
	size_t pages;
	uint64_t id;
	volatile uint64_t steps;
};

static struct writer writers[MAX_WRITERS + 1];
static int nwriters;
static volatile int stop;
static volatile uint64_t total;
static void *drop_a, *drop_b;
static size_t drop_len;
static int dropped;

static uint64_t value(uint64_t id, uint64_t step, uint64_t page)
{
	return pattern_word(id * 0x100000001ULL + 1, step * 0x10000000ULL + page);
}

static void *write_loop(void *arg)
{
	struct writer *w = arg;

	for (uint64_t s = 1; !stop; s++) {
		for (size_t k = 0; k < w->pages; k++) {
			uint64_t v = value(w->id, s, k);
			uint64_t *p = w->base + k * WORDS;

			p[0] = v;
			p[WORDS - 1] = v;
		}
		w->steps = s;
		__atomic_add_fetch(&total, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

static void *map(size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static int pattern_ok(void *p, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < drop_len / 8; i++)
		if (w[i] != pattern_word(seed, i))
			return 0;
	return 1;
}

static void check(void)
{
	uint64_t sum = 0;
	sigset_t pending;

	stop = 1;
	for (int i = 0; i < nwriters; i++)
		pthread_join(writers[i].thread, NULL);
	for (int i = 0; i < nwriters; i++) {
		struct writer *w = &writers[i];

		sum += w->steps;
		for (size_t k = 0; k < w->pages; k++) {
			uint64_t want = value(w->id, w->steps, k);
			uint64_t *p = w->base + k * WORDS;

			if (p[0] != want || p[WORDS - 1] != want) {
				say("FAIL wp_writers writer %d page %zu of %zu: %#llx/%#llx, step %llu "
				    "wants %#llx",
				    i, k, w->pages, (unsigned long long)p[0],
				    (unsigned long long)p[WORDS - 1], (unsigned long long)w->steps,
				    (unsigned long long)want);
				return;
			}
		}
	}
	if (sum != total) {
		say("FAIL wp_writers the common counter is %llu, the writers' sum %llu",
		    (unsigned long long)total, (unsigned long long)sum);
		return;
	}
	if (drop_len && !dropped && (!pattern_ok(drop_a, 0xa1) || !pattern_ok(drop_b, 0xb2))) {
		say("FAIL wp_writers a drop area lost its pattern though not dropped");
		return;
	}
	sigpending(&pending);
	if (!sigismember(&pending, SIGUSR2)) {
		say("FAIL wp_writers SIGUSR2 is not pending");
		return;
	}
	say("PASS wp_writers steps=%llu dropped=%d", (unsigned long long)total, dropped);
}

int main(int argc, char **argv)
{
	int threads = 3;
	size_t mb = 64;
	sigset_t all;
	char line[64];

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--mb"))
			mb = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--drop-mb"))
			drop_len = strtoul(argv[i + 1], NULL, 10) << 20;
	}
	if (threads < 1 || threads > MAX_WRITERS)
		die("--threads");
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	kill(getpid(), SIGUSR2);

	size_t len = mb << 20;
	char *private = map(len, MAP_PRIVATE);
	size_t slice = len / PAGE / threads;
	for (int i = 0; i < threads; i++) {
		writers[i].base = (uint64_t *)(private + i * slice * PAGE);
		writers[i].pages = slice;
		writers[i].id = i + 1;
	}
	writers[threads].base = map(SHARED_LEN, MAP_SHARED);
	writers[threads].pages = SHARED_LEN / PAGE;
	writers[threads].id = threads + 1;
	nwriters = threads + 1;
	if (drop_len) {
		drop_a = map(drop_len, MAP_PRIVATE);
		drop_b = map(drop_len, MAP_PRIVATE);
		pattern_fill(drop_a, drop_len, 0xa1, 0);
		pattern_fill(drop_b, drop_len, 0xb2, 0);
	}
	for (int i = 0; i < nwriters; i++)
		if (pthread_create(&writers[i].thread, NULL, write_loop, &writers[i]))
			die("pthread_create");
	/* Every writer is past its first step. */
	for (int i = 0; i < nwriters; i++)
		while (!writers[i].steps)
			usleep(1000);
	say("READY pid=%d threads=%d", getpid(), threads);
	while (fgets(line, sizeof line, stdin)) {
		if (!strncmp(line, "check", 5)) {
			check();
			return 0;
		}
		if (!strncmp(line, "drop", 4) && drop_len) {
			if (madvise(drop_a, drop_len, MADV_DONTNEED) || munmap(drop_b, drop_len))
				die("drop");
			dropped = 1;
			say("DROPPED");
		}
		if (!strncmp(line, "ping", 4))
			say("PONG pid=%d", getpid());
	}
	return 0;
}
