/*
 * N threads (argv[1], default 64) that each, in a loop, read their own uid
 * (the raw getuid: credentials are per thread) and then every sibling's
 * /proc/self/task/T/status "Uid:" line. A thread that sees a sibling with
 * another real uid than its own says "MIXED ..." once and sets a flag.
 * Before a dump every thread has the same ids; after a restore that lowers
 * them, a thread that runs its own code while a sibling still has the old
 * ids (the loader let it go too early) sees it on its first round.
 *
 * stdin "check": wait until every thread finished two more rounds, then
 * print "CHECKED uid=U mixed=M" (M: how many rounds saw mixed ids).
 * stdin "pause": stop every thread between two rounds until its uid
 * changes (see pause_until_uid_changes), then print "PAUSED".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 256

static int nthreads = 64;
static volatile pid_t tids[MAX_THREADS + 1];
static volatile unsigned long rounds[MAX_THREADS + 1];
static volatile int mixed;
static volatile int started;
static volatile int paused, npaused;

/* The real uid on the status file's Uid: line, or -1. */
static long uid_of(pid_t tid)
{
	char path[64], buf[2048];
	int fd;
	ssize_t n;
	char *line;

	snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	line = strstr(buf, "\nUid:");
	return line ? strtol(line + 5, NULL, 10) : -1;
}

/*
 * One round of thread `me`: its own uid against every sibling's. A round
 * that a dump and restore cut (its own uid read before the restore and
 * after it differ) is not judged: its first uid is the old one.
 */
static void check_round(int me)
{
	long own = syscall(SYS_getuid), seen = -1;
	int i, with = -1;

	for (i = 0; i <= nthreads; i++) {
		long other;

		if (i == me)
			continue;
		other = uid_of(tids[i]);
		if (other >= 0 && other != own && with < 0) {
			seen = other;
			with = i;
		}
	}
	if (with >= 0 && syscall(SYS_getuid) == own) {
		printf("MIXED thread %d (uid %ld) sees thread %d with uid %ld\n",
		       (int)tids[me], own, (int)tids[with], seen);
		fflush(stdout);
		__sync_fetch_and_add(&mixed, 1);
	}
	rounds[me]++;
}

/*
 * Paused (stdin "pause", before the dump: no thread has a status file open
 * then), a thread spins between rounds until its own uid changes: its
 * first instructions after a restore that lowered it start a round.
 */
static void pause_until_uid_changes(void)
{
	long uid = syscall(SYS_getuid);

	__sync_fetch_and_add(&npaused, 1);
	while (syscall(SYS_getuid) == uid)
		sched_yield();
}

static void *worker(void *arg)
{
	int me = (int)(long)arg, was_paused = 0;

	tids[me] = (pid_t)syscall(SYS_gettid);
	__sync_fetch_and_add(&started, 1);
	for (;;) {
		/* Once: the flag stays set in the restored memory. */
		if (paused && !was_paused) {
			pause_until_uid_changes();
			was_paused = 1;
		}
		check_round(me);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	char line[64];
	int i;

	if (argc > 1)
		nthreads = atoi(argv[1]);
	if (nthreads < 1 || nthreads > MAX_THREADS) {
		printf("ERROR threads: 1 to %d\n", MAX_THREADS);
		return 2;
	}
	tids[0] = (pid_t)syscall(SYS_gettid);
	for (i = 1; i <= nthreads; i++) {
		pthread_t t;
		pthread_attr_t attr;

		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 64 * 1024);
		if (pthread_create(&t, &attr, worker, (void *)(long)i)) {
			printf("ERROR pthread_create\n");
			return 2;
		}
	}
	while (started < nthreads)
		usleep(1000);
	printf("READY pid=%d threads=%d\n", (int)getpid(), nthreads);
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		unsigned long want[MAX_THREADS + 1];

		if (!strncmp(line, "pause", 5)) {
			paused = 1;
			while (npaused < nthreads)
				usleep(1000);
			printf("PAUSED\n");
			fflush(stdout);
			continue;
		}

		/* The main thread's own round first (it is a thread too). */
		check_round(0);
		for (i = 1; i <= nthreads; i++)
			want[i] = rounds[i] + 2;
		for (i = 1; i <= nthreads; i++)
			while (rounds[i] < want[i])
				usleep(100);
		printf("CHECKED uid=%ld mixed=%d\n", syscall(SYS_getuid), mixed);
		fflush(stdout);
	}
	return 0;
}
