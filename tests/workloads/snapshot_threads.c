/*
 * snapshot_threads: the state a copy-on-write snapshot dump
 * (`crdump --leave-running`) must take from the original process rather
 * than from its snapshot child: a second thread, memory areas a fork does
 * not copy as they are, pending signals of the process and of a thread,
 * and no trace of the child afterwards.
 *
 * Areas, each filled with its own pattern: private anonymous memory
 * (--private-mb N MiB, default 8), MAP_SHARED anonymous memory (shared with
 * the child), an MADV_DONTFORK area (absent in the child) and an
 * MADV_WIPEONFORK area (empty in the child), 16 pages each.
 * Signals: SIGUSR1 is pending for the worker thread (pthread_kill while
 * every thread blocks it), SIGUSR2 for the process (kill); the worker
 * waits on a condition variable. A SIGCHLD handler counts deliveries.
 *
 * Output:
 *   READY pid=<pid> worker=<tid> sum=0x<checksum of all areas>
 *   on the stdin line "check": every area holds its pattern, SIGUSR2 is
 *   pending for the process, the worker (released) takes its SIGUSR1, no
 *   SIGCHLD arrived, and the process has no child, not even a zombie
 *   (waitid with __WALL finds none):
 *   PASS snapshot_threads pid=<pid> areas=4 usr1=worker usr2=pending
 *        sigchld=0 children=none sum=0x..
 *   or   FAIL snapshot_threads <reason>
 * The stdin line "ping" prints "PONG pid=<pid>".
 * --thp gives the private area MADV_HUGEPAGE (2 MiB aligned) before it is
 * written.
 * --nproc N lowers RLIMIT_NPROC to N once both threads run (a clone
 * injected by crdump is then refused for a user without privileges).
 * --flip starts a third thread (every signal blocked) that turns
 * MADV_WIPEONFORK of the whole wipeonfork area off and on again without
 * pause: its flags change all the time, its place and contents never.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define SMALL (16 * PAGE)

struct area {
	const char *name;
	void *addr;
	size_t len;
	uint64_t seed;
};

static struct area areas[4];
static volatile sig_atomic_t sigchlds;
static pid_t worker_tid;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go;
static volatile sig_atomic_t usr1_in_worker;
static __thread volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static void on_chld(int sig)
{
	(void)sig;
	sigchlds++;
}

static void *worker(void *arg)
{
	sigset_t usr1;

	(void)arg;
	__atomic_store_n(&worker_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&lock);
	while (!go)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	usr1_in_worker = got_usr1;
	return NULL;
}

static void *flipper(void *arg)
{
	(void)arg;
	for (;;) {
		if (madvise(areas[3].addr, areas[3].len, MADV_KEEPONFORK) ||
		    madvise(areas[3].addr, areas[3].len, MADV_WIPEONFORK))
			die("madvise(flip)");
	}
	return NULL;
}

static void *map_area(size_t len, int flags, int advice)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	if (advice >= 0 && madvise(p, len, advice))
		die("madvise");
	return p;
}

/* Private memory, 2 MiB aligned and with MADV_HUGEPAGE when `thp`. */
static void *map_private(size_t len, int thp)
{
	size_t huge = 2UL << 20;
	char *p;

	if (!thp)
		return map_area(len, MAP_PRIVATE, -1);
	p = map_area(len + huge, MAP_PRIVATE, -1);
	p = (char *)(((uintptr_t)p + huge - 1) & ~(huge - 1));
	if (madvise(p, len, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p;
}

static uint64_t sum_all(void)
{
	uint64_t h = 0;

	for (int i = 0; i < 4; i++)
		h = h * 31 + checksum(areas[i].addr, areas[i].len);
	return h;
}

static int check(pthread_t t)
{
	uint64_t want, found;
	sigset_t pending;
	siginfo_t info;

	for (int i = 0; i < 4; i++) {
		long at = pattern_find_mismatch(areas[i].addr, areas[i].len, areas[i].seed, 0,
						&want, &found);
		if (at >= 0) {
			say("FAIL snapshot_threads %s area at offset %ld: 0x%llx, expected 0x%llx",
			    areas[i].name, at, (unsigned long long)found, (unsigned long long)want);
			return 1;
		}
	}
	sigpending(&pending);
	if (!sigismember(&pending, SIGUSR2)) {
		say("FAIL snapshot_threads SIGUSR2 is not pending for the process");
		return 1;
	}
	memset(&info, 0, sizeof info);
	if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | __WALL) == 0) {
		say("FAIL snapshot_threads a child exists (pid %d)", info.si_pid);
		return 1;
	}
	if (errno != ECHILD) {
		say("FAIL snapshot_threads waitid: %m");
		return 1;
	}
	pthread_mutex_lock(&lock);
	go = 1;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(t, NULL);
	if (!usr1_in_worker) {
		say("FAIL snapshot_threads the worker did not receive its pending SIGUSR1");
		return 1;
	}
	if (sigchlds) {
		say("FAIL snapshot_threads %d SIGCHLD arrived", (int)sigchlds);
		return 1;
	}
	say("PASS snapshot_threads pid=%d areas=4 usr1=worker usr2=pending sigchld=0 "
	    "children=none sum=0x%llx",
	    getpid(), (unsigned long long)sum_all());
	return 0;
}

int main(int argc, char **argv)
{
	long private_mb = 8;
	long nproc = -1;
	int thp = 0, flip = 0;
	struct sigaction sa;
	sigset_t both, all;
	pthread_t t, f;
	char line[64];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--private-mb") && i + 1 < argc) {
			private_mb = parse_long("--private-mb", argv[i + 1]);
			i++;
		} else if (!strcmp(argv[i], "--thp")) {
			thp = 1;
		} else if (!strcmp(argv[i], "--flip")) {
			flip = 1;
		} else if (!strcmp(argv[i], "--nproc") && i + 1 < argc) {
			nproc = parse_long("--nproc", argv[i + 1]);
			i++;
		} else {
			say("ERROR unknown option %s", argv[i]);
			return 2;
		}
	}
	areas[0] = (struct area){ "private", map_private((size_t)private_mb << 20, thp),
				  (size_t)private_mb << 20, 0x5a11 };
	areas[1] = (struct area){ "shared", map_area(SMALL, MAP_SHARED, -1), SMALL, 0x5a12 };
	areas[2] = (struct area){ "dontfork", map_area(SMALL, MAP_PRIVATE, MADV_DONTFORK), SMALL,
				  0x5a13 };
	areas[3] = (struct area){ "wipeonfork", map_area(SMALL, MAP_PRIVATE, MADV_WIPEONFORK),
				  SMALL, 0x5a14 };
	for (int i = 0; i < 4; i++)
		pattern_fill(areas[i].addr, areas[i].len, areas[i].seed, 0);

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_chld;
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	/* Blocked before the worker starts, so it inherits the mask. */
	pthread_sigmask(SIG_BLOCK, &both, NULL);
	if (pthread_create(&t, NULL, worker, NULL))
		die("pthread_create");
	while (__atomic_load_n(&worker_tid, __ATOMIC_SEQ_CST) == 0)
		usleep(1000);
	if (flip) {
		sigset_t mask;

		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &mask);
		if (pthread_create(&f, NULL, flipper, NULL))
			die("pthread_create");
		pthread_sigmask(SIG_SETMASK, &mask, NULL);
	}
	if (nproc >= 0) {
		struct rlimit rl = { (rlim_t)nproc, (rlim_t)nproc };

		if (setrlimit(RLIMIT_NPROC, &rl))
			die("setrlimit");
	}
	pthread_kill(t, SIGUSR1);
	kill(getpid(), SIGUSR2);
	setvbuf(stdout, NULL, _IOLBF, 0);
	say("READY pid=%d worker=%d sum=0x%llx", getpid(), worker_tid,
	    (unsigned long long)sum_all());
	while (fgets(line, sizeof line, stdin)) {
		if (!strncmp(line, "ping", 4))
			say("PONG pid=%d", getpid());
		else if (!strncmp(line, "check", 5))
			return check(t);
	}
	return 0;
}
