/*
 * posix_timers: four POSIX timers (timer_create) that must survive a dump
 * and restore with their ids, clocks, signals, values and phase.
 *
 *   periodic  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1, sival_int 0x1234,
 *             every 20 ms, counted by a handler that checks si_value and
 *             si_timerid
 *   oneshot   CLOCK_REALTIME, SIGEV_SIGNAL SIGUSR1, sival_ptr 0xfeedfacecafe,
 *             one-shot in 3600 s (it must not fire)
 *   worker    CLOCK_MONOTONIC, SIGEV_THREAD_ID to the worker thread,
 *             SIGRTMIN+2, sival_int 0x5678, every 30 ms; the worker takes
 *             it with sigtimedwait (blocked in every thread)
 *   silent    CLOCK_BOOTTIME, SIGEV_NONE, in 5000 s then every 7 s
 *   held      CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+3 (blocked in every
 *             thread), sival_int 0x9abc, every 200 ms: its signal is
 *             pending at the dump, and the timer waits for it to be taken
 *             before it re-arms (Linux 6.13+)
 *
 * With the argument `foreign-clock`, a sixth timer counts the worker
 * thread's CPU time (pthread_getcpuclockid), which a restore cannot name:
 * the dump must refuse it by name and leave the task as it was.
 *
 * READY prints the ids and, once both periodic timers have ticked, the
 * counts. On "check" (stdin) it verifies: /proc/self/timers lists exactly
 * the same ids; timer_gettime shows the same intervals and a time left
 * within them (the one-shot's and the silent one's are printed for the
 * test to compare with the image); both periodic counts go on growing
 * with the right values, the worker's signal queued for the worker thread
 * itself (held pending there while it pauses, not for the process); the
 * one-shot never fired; the held timer's signal is pending once, as the
 * timer's own: taken after 300 ms more, it counts the periods missed
 * since it expired (a copy queued besides would come first, with none).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One protocol line (READY, PASS, FAIL), flushed at once: stdout is a pipe. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what)
{
	say("ERROR %s: %m", what);
	exit(2);
}

#define PERIODIC_VALUE 0x1234
#define WORKER_VALUE 0x5678
#define ONESHOT_VALUE 0xfeedfacecafeULL
#define HELD_VALUE 0x9abc

static timer_t periodic, oneshot, worker_timer, silent, held, foreign;
static int has_foreign;
static volatile sig_atomic_t periodic_count, oneshot_fired, bad_value;
static volatile int worker_count, worker_bad, worker_pause, worker_paused;
static volatile pid_t worker_tid;

static int id_of(timer_t t)
{
	return (int)(intptr_t)t;
}

static void on_periodic(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_code != SI_TIMER || si->si_value.sival_int != PERIODIC_VALUE ||
	    si->si_timerid != id_of(periodic))
		bad_value = 1;
	periodic_count++;
}

static void on_oneshot(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	oneshot_fired = 1;
}

static void *worker(void *arg)
{
	(void)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + 2);
	struct timespec wait = { 0, 50 * 1000 * 1000 };
	for (;;) {
		/* A new tid after some restores: read it each time. */
		__atomic_store_n(&worker_tid, gettid(), __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&worker_pause, __ATOMIC_SEQ_CST)) {
			__atomic_store_n(&worker_paused, 1, __ATOMIC_SEQ_CST);
			usleep(10 * 1000);
			continue;
		}
		siginfo_t si;
		if (sigtimedwait(&set, &si, &wait) < 0)
			continue;
		if (si.si_code != SI_TIMER || si.si_value.sival_int != WORKER_VALUE ||
		    si.si_timerid != id_of(worker_timer))
			__atomic_store_n(&worker_bad, 1, __ATOMIC_SEQ_CST);
		__atomic_add_fetch(&worker_count, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

static timer_t make(clockid_t clock, int notify, int signo, union sigval value,
		    pid_t tid)
{
	struct sigevent ev;
	memset(&ev, 0, sizeof ev);
	ev.sigev_notify = notify;
	ev.sigev_signo = signo;
	ev.sigev_value = value;
	ev._sigev_un._tid = tid;
	timer_t t;
	if (timer_create(clock, &ev, &t))
		die("timer_create");
	return t;
}

static void arm(timer_t t, time_t first_s, long first_ns, time_t every_s, long every_ns)
{
	struct itimerspec its = { { every_s, every_ns }, { first_s, first_ns } };
	if (timer_settime(t, 0, &its, NULL))
		die("timer_settime");
}

/* Sleep `ms` milliseconds whatever signal handlers run meanwhile (a
   handled signal ends nanosleep early, SA_RESTART or not). */
static void sleep_ms(long ms)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) != 0)
		;
}

/* Sleep until `*count` reaches `want`; 0 when it did within 5 s. */
static int wait_count(volatile int *count, int want)
{
	for (int i = 0; i < 500; i++) {
		if (__atomic_load_n(count, __ATOMIC_SEQ_CST) >= want)
			return 0;
		sleep_ms(10);
	}
	return -1;
}

static int periodic_now(void)
{
	return periodic_count;
}

/* Whether the 64-bit hex mask after `key` in `path` has signal `sig`. */
static int pending_in(const char *path, const char *key, int sig)
{
	FILE *f = fopen(path, "r");
	char line[256];
	int found = -1;
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, key, strlen(key)) == 0) {
			unsigned long long mask = strtoull(line + strlen(key), NULL, 16);
			found = (mask >> (sig - 1)) & 1;
		}
	}
	if (f)
		fclose(f);
	return found;
}

/* The ids /proc/self/timers lists, sorted, as "a,b,c". */
static void listed_ids(char *out, size_t len)
{
	int ids[16], n = 0;
	FILE *f = fopen("/proc/self/timers", "r");
	char line[128];
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "ID: ", 4) == 0 && n < 16)
			ids[n++] = atoi(line + 4);
	if (f)
		fclose(f);
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (ids[j] < ids[i]) {
				int x = ids[i];
				ids[i] = ids[j];
				ids[j] = x;
			}
	out[0] = 0;
	for (int i = 0; i < n; i++) {
		size_t at = strlen(out);
		snprintf(out + at, len - at, "%s%d", i ? "," : "", ids[i]);
	}
}

static void own_ids(char *out, size_t len)
{
	int ids[6] = { id_of(periodic), id_of(oneshot), id_of(worker_timer), id_of(silent),
		       id_of(held), id_of(foreign) };
	int n = has_foreign ? 6 : 5;
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (ids[j] < ids[i]) {
				int x = ids[i];
				ids[i] = ids[j];
				ids[j] = x;
			}
	out[0] = 0;
	for (int i = 0; i < n; i++) {
		size_t at = strlen(out);
		snprintf(out + at, len - at, "%s%d", i ? "," : "", ids[i]);
	}
}

static int check(void)
{
	char listed[128], own[128];
	listed_ids(listed, sizeof listed);
	own_ids(own, sizeof own);
	if (strcmp(listed, own) != 0) {
		say("FAIL posix_timers /proc/self/timers lists ids %s, the task's own are %s",
		    listed, own);
		return 1;
	}
	struct itimerspec p, o, w, s;
	if (timer_gettime(periodic, &p) || timer_gettime(oneshot, &o) ||
	    timer_gettime(worker_timer, &w) || timer_gettime(silent, &s)) {
		say("FAIL posix_timers timer_gettime of an own id: %m");
		return 1;
	}
	if (p.it_interval.tv_sec != 0 || p.it_interval.tv_nsec != 20000000 ||
	    p.it_value.tv_sec != 0 || p.it_value.tv_nsec <= 0 ||
	    p.it_value.tv_nsec > 20000000) {
		say("FAIL posix_timers periodic: interval %ld.%09ld left %ld.%09ld",
		    (long)p.it_interval.tv_sec, p.it_interval.tv_nsec,
		    (long)p.it_value.tv_sec, p.it_value.tv_nsec);
		return 1;
	}
	if (w.it_interval.tv_sec != 0 || w.it_interval.tv_nsec != 30000000 ||
	    w.it_value.tv_sec != 0 || w.it_value.tv_nsec <= 0 ||
	    w.it_value.tv_nsec > 30000000) {
		say("FAIL posix_timers worker: interval %ld.%09ld left %ld.%09ld",
		    (long)w.it_interval.tv_sec, w.it_interval.tv_nsec,
		    (long)w.it_value.tv_sec, w.it_value.tv_nsec);
		return 1;
	}
	if (o.it_interval.tv_sec != 0 || o.it_interval.tv_nsec != 0 ||
	    o.it_value.tv_sec <= 0 || o.it_value.tv_sec >= 3600) {
		say("FAIL posix_timers oneshot: interval %ld.%09ld left %ld.%09ld",
		    (long)o.it_interval.tv_sec, o.it_interval.tv_nsec,
		    (long)o.it_value.tv_sec, o.it_value.tv_nsec);
		return 1;
	}
	if (s.it_interval.tv_sec != 7 || s.it_interval.tv_nsec != 0 ||
	    s.it_value.tv_sec <= 0 || s.it_value.tv_sec >= 5000) {
		say("FAIL posix_timers silent: interval %ld.%09ld left %ld.%09ld",
		    (long)s.it_interval.tv_sec, s.it_interval.tv_nsec,
		    (long)s.it_value.tv_sec, s.it_value.tv_nsec);
		return 1;
	}
	/* The counts go on. */
	int p0 = periodic_now(), w0 = __atomic_load_n(&worker_count, __ATOMIC_SEQ_CST);
	static volatile int periodic_seen;
	for (int i = 0; i < 500 && periodic_now() < p0 + 5; i++)
		sleep_ms(10);
	periodic_seen = periodic_now();
	if (periodic_seen < p0 + 5 || wait_count(&worker_count, w0 + 5)) {
		say("FAIL posix_timers counts stopped: periodic %d -> %d, worker %d -> %d", p0,
		    periodic_seen, w0, worker_count);
		return 1;
	}
	if (bad_value || worker_bad) {
		say("FAIL posix_timers a timer signal came with the wrong value, code or timer id (periodic %d, worker %d)",
		    bad_value, worker_bad);
		return 1;
	}
	/* The worker's signal is the worker's: paused, it stays pending on
	   the worker thread, not on the process. */
	__atomic_store_n(&worker_pause, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&worker_paused, __ATOMIC_SEQ_CST))
		usleep(1000);
	sleep_ms(100);
	char path[64];
	snprintf(path, sizeof path, "/proc/self/task/%d/status", worker_tid);
	int thread_pending = pending_in(path, "SigPnd:", SIGRTMIN + 2);
	int process_pending = pending_in("/proc/self/status", "ShdPnd:", SIGRTMIN + 2);
	if (thread_pending != 1 || process_pending != 0) {
		say("FAIL posix_timers the worker's timer signal is pending on the thread: %d, on the process: %d",
		    thread_pending, process_pending);
		return 1;
	}
	if (oneshot_fired) {
		say("FAIL posix_timers the one-shot timer (3600 s) fired");
		return 1;
	}
	/* The held timer: its signal pending, and once only. */
	sigset_t pend, held_set;
	sigemptyset(&held_set);
	sigaddset(&held_set, SIGRTMIN + 3);
	sigpending(&pend);
	if (!sigismember(&pend, SIGRTMIN + 3)) {
		say("FAIL posix_timers the held timer's signal is not pending");
		return 1;
	}
	sleep_ms(300);
	struct timespec now = { 0, 0 };
	siginfo_t si;
	if (sigtimedwait(&held_set, &si, &now) != SIGRTMIN + 3 || si.si_code != SI_TIMER ||
	    si.si_timerid != id_of(held) || si.si_value.sival_int != HELD_VALUE) {
		say("FAIL posix_timers the held timer's pending signal: code %d timer %d value %#x",
		    si.si_code, si.si_timerid, si.si_value.sival_int);
		return 1;
	}
	if (si.si_overrun < 1) {
		say("FAIL posix_timers the held timer's signal counts %d overruns after 300 ms of its 200 ms period: not the timer's own",
		    si.si_overrun);
		return 1;
	}
	int held_overrun = si.si_overrun;
	say("PASS posix_timers ids=%s periodic=%d worker=%d oneshot_left=%ld.%09ld silent_left=%ld.%09ld held_overrun=%d",
	    own, periodic_now(), worker_count, (long)o.it_value.tv_sec, o.it_value.tv_nsec,
	    (long)s.it_value.tv_sec, s.it_value.tv_nsec, held_overrun);
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sa.sa_sigaction = on_periodic;
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sa.sa_sigaction = on_oneshot;
	sigaction(SIGUSR1, &sa, NULL);
	/* The worker's signal is blocked everywhere: taken by sigtimedwait. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + 2);
	sigaddset(&set, SIGRTMIN + 3);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL))
		die("pthread_create");
	while (!__atomic_load_n(&worker_tid, __ATOMIC_SEQ_CST))
		usleep(1000);

	/* Timers made and deleted first: the ids kept are not the ones a
	   fresh process would be given (0, 1, …). */
	timer_t gone[3];
	for (int i = 0; i < 3; i++)
		gone[i] = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, (union sigval){ .sival_int = 0 }, 0);
	periodic = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1,
			(union sigval){ .sival_int = PERIODIC_VALUE }, 0);
	oneshot = make(CLOCK_REALTIME, SIGEV_SIGNAL, SIGUSR1,
		       (union sigval){ .sival_ptr = (void *)ONESHOT_VALUE }, 0);
	worker_timer = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGRTMIN + 2,
			    (union sigval){ .sival_int = WORKER_VALUE }, worker_tid);
	silent = make(CLOCK_BOOTTIME, SIGEV_NONE, 0, (union sigval){ .sival_int = 0 }, 0);
	held = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3,
		    (union sigval){ .sival_int = HELD_VALUE }, 0);
	for (int i = 0; i < 3; i++)
		timer_delete(gone[i]);
	arm(periodic, 0, 20000000, 0, 20000000);
	arm(oneshot, 3600, 0, 0, 0);
	arm(worker_timer, 0, 30000000, 0, 30000000);
	arm(silent, 5000, 0, 7, 0);
	arm(held, 0, 1000000, 0, 200000000);
	if (argc > 1 && strcmp(argv[1], "foreign-clock") == 0) {
		clockid_t cpu;
		if (pthread_getcpuclockid(t, &cpu))
			die("pthread_getcpuclockid");
		foreign = make(cpu, SIGEV_NONE, 0, (union sigval){ .sival_int = 0 }, 0);
		arm(foreign, 1000, 0, 0, 0);
		has_foreign = 1;
	}
	for (int i = 0; i < 500 && periodic_now() < 3; i++)
		sleep_ms(10);
	if (periodic_now() < 3 || wait_count(&worker_count, 3))
		die("the timers do not tick");
	sigset_t pend;
	sigpending(&pend);
	if (!sigismember(&pend, SIGRTMIN + 3))
		die("the held timer's signal is not pending");
	char own[128];
	own_ids(own, sizeof own);
	say("READY pid=%d worker=%d ids=%s oneshot=%d silent=%d", getpid(), worker_tid, own,
	    id_of(oneshot), id_of(silent));

	char line[64];
	while (fgets(line, sizeof line, stdin))
		if (strncmp(line, "check", 5) == 0)
			return check();
	return 0;
}
