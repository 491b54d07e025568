/*
 * tree_mem: PROCS processes (the root and PROCS-1 children), each with MB
 * MiB of its own memory, every page written after the fork (so nothing is
 * shared copy-on-write), then each prints a TICK line every INTERVAL ms: a
 * restored tree has resumed once every process printed one. For the tree
 * bench.
 *
 *   tree_mem [--procs N] [--mb MB] [--interval-ms MS]
 *
 *   READY pid=<pid> index=<i> sum=<checksum of its memory>   (each)
 *   TICK pid=<pid> n=<n>                                      (each, forever)
 */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <time.h>

#include "workload.h"

int main(int argc, char **argv)
{
	long procs = 4, mb = 64, interval = 2;
	int index = 0;
	size_t len;
	uint64_t *mem;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--procs"))
			procs = parse_long(argv[i], argv[i + 1]), i++;
		else if (!strcmp(argv[i], "--mb"))
			mb = parse_long(argv[i], argv[i + 1]), i++;
		else if (!strcmp(argv[i], "--interval-ms"))
			interval = parse_long(argv[i], argv[i + 1]), i++;
		else {
			say("ERROR unknown argument %s", argv[i]);
			return 2;
		}
	}
	for (int i = 1; i < procs; i++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork");
		if (pid == 0) {
			index = i;
			break;
		}
	}
	len = (size_t)mb << 20;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	pattern_fill(mem, len, 0x51ULL + (uint64_t)index, 0);
	say("READY pid=%d index=%d sum=%016lx", getpid(), index, (unsigned long)checksum(mem, len));
	for (unsigned long n = 1;; n++) {
		struct timespec pause = { interval / 1000, (interval % 1000) * 1000000 };

		nanosleep(&pause, NULL);
		say("TICK pid=%d n=%lu", getpid(), n);
	}
}
