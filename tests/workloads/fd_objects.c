/*
 * The kernel objects an event loop opens for itself, one of each kind, set
 * up before READY and checked on "check" (stdin) after a restore:
 *
 *   pipe      60 KiB buffered: every byte back, in order
 *   eventfd   a counter (5) and a semaphore (3, read through a dup too)
 *   signalfd  its mask; a SIGUSR1 sent (blocked) before the dump is read
 *   timerfd   periodic (300 ms), one expiration unread at the dump: read at
 *             once after, the next one within a period; an absolute
 *             CLOCK_REALTIME one-shot keeps its expiry
 *   inotify   watches on two directories, wd 1 and 3 (2 was removed): a file
 *             created in each gives an event with that wd
 *   epoll     EPOLLET, EPOLLONESHOT (one fired, one armed), EPOLLEXCLUSIVE,
 *             a nested epoll,
 *             an item on stdin: data values intact, the fired one-shot
 *             stays off until EPOLL_CTL_MOD re-arms it (by its fd number)
 *   flags     O_NONBLOCK and FD_CLOEXEC of every fd as they were
 *
 * Usage: fd_objects DIR [queued|stale] (the watched directories are made in
 * DIR). "queued" leaves an inotify event unread at READY, "stale" leaves an
 * epoll item whose fd number now names another file: both must be refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One protocol line (workload.h's protocol), flushed at once. */
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

#define PIPE_BYTES (60 * 1024)
#define PERIOD_MS 300

#define D_ET 0x1111222233334444ULL
#define D_PIPE 0xaaaaULL
#define D_FIRED 0x5555ULL
#define D_ARMED 0x6666ULL
#define D_NESTED 0x7777ULL
#define D_INNER 0x8888ULL
#define D_STDIN 0x9999ULL
#define D_EXCL 0xeeeeULL

static int pipe_r, pipe_w, ev_count, ev_sem, ev_sem_dup, ev_fired, ev_armed,
	ev_inner, ev_excl, sig_fd, timer_fd, shot_fd, abs_fd, ino_fd, ep, ep_inner;
static int wd_a, wd_b, held_fd;
static char dir_a[4096], dir_b[4096];
static time_t abs_expiry;

struct fd_flags {
	int *fd;
	const char *name;
	int nonblock, cloexec;
};

static struct fd_flags flags[] = {
	{ &pipe_r, "pipe_r", 0, 1 },	 { &pipe_w, "pipe_w", 1, 0 },
	{ &ev_count, "ev_count", 1, 0 }, { &ev_sem, "ev_sem", 1, 1 },
	{ &sig_fd, "signalfd", 1, 1 },	 { &timer_fd, "timerfd", 1, 0 },
	{ &abs_fd, "abs_timerfd", 0, 1 }, { &shot_fd, "shot_timerfd", 1, 1 }, { &ino_fd, "inotify", 1, 0 },
	{ &ep, "epoll", 0, 1 },		 { &ep_inner, "epoll_inner", 0, 0 },
};

static unsigned char pipe_byte(size_t i)
{
	return (unsigned char)(i * 7 + (i >> 8));
}

static void set_flags(int fd, int nonblock, int cloexec)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, nonblock ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0)
		die("F_SETFL");
	if (fcntl(fd, F_SETFD, cloexec ? FD_CLOEXEC : 0) < 0)
		die("F_SETFD");
}

static void add(int epfd, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event e = { .events = events, .data.u64 = data };

	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0)
		die("epoll_ctl add");
}

static void put(int fd, uint64_t n)
{
	if (write(fd, &n, 8) != 8)
		die("eventfd write");
}

static void setup(const char *dir)
{
	int p[2];
	size_t i;
	static unsigned char buf[PIPE_BYTES];

	if (pipe(p) < 0)
		die("pipe");
	pipe_r = p[0];
	pipe_w = p[1];
	for (i = 0; i < PIPE_BYTES; i++)
		buf[i] = pipe_byte(i);
	/* Several writes: several pipe buffers. */
	for (i = 0; i < PIPE_BYTES; i += 1000) {
		size_t n = PIPE_BYTES - i < 1000 ? PIPE_BYTES - i : 1000;

		if (write(pipe_w, buf + i, n) != (ssize_t)n)
			die("pipe write");
	}

	ev_count = eventfd(5, 0);
	ev_sem = eventfd(3, EFD_SEMAPHORE);
	ev_fired = eventfd(1, EFD_NONBLOCK);
	ev_armed = eventfd(0, EFD_NONBLOCK);
	ev_inner = eventfd(0, EFD_NONBLOCK);
	ev_excl = eventfd(0, EFD_NONBLOCK);
	if (ev_count < 0 || ev_sem < 0 || ev_fired < 0 || ev_armed < 0 || ev_inner < 0 ||
	    ev_excl < 0)
		die("eventfd");
	ev_sem_dup = dup(ev_sem);

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigaddset(&usr1, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	sig_fd = signalfd(-1, &usr1, 0);
	if (sig_fd < 0)
		die("signalfd");
	kill(getpid(), SIGUSR1);

	timer_fd = timerfd_create(CLOCK_MONOTONIC, 0);
	shot_fd = timerfd_create(CLOCK_MONOTONIC, 0);
	abs_fd = timerfd_create(CLOCK_REALTIME, 0);
	if (timer_fd < 0 || shot_fd < 0 || abs_fd < 0)
		die("timerfd_create");
	struct itimerspec its = {
		.it_interval = { 0, PERIOD_MS * 1000000L },
		.it_value = { 0, PERIOD_MS * 1000000L },
	};
	if (timerfd_settime(timer_fd, 0, &its, NULL) < 0)
		die("timerfd_settime");
	struct itimerspec shot = { .it_value = { 0, 1000000 } };
	if (timerfd_settime(shot_fd, 0, &shot, NULL) < 0)
		die("timerfd_settime shot");
	abs_expiry = time(NULL) + 1000;
	struct itimerspec abs_its = { .it_value = { abs_expiry, 0 } };
	if (timerfd_settime(abs_fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &abs_its, NULL) < 0)
		die("timerfd_settime abs");

	snprintf(dir_a, sizeof dir_a, "%s/watch_a", dir);
	snprintf(dir_b, sizeof dir_b, "%s/watch_b", dir);
	char gap[4096];
	snprintf(gap, sizeof gap, "%s/gap", dir);
	if (mkdir(dir_a, 0700) < 0 || mkdir(dir_b, 0700) < 0 || mkdir(gap, 0700) < 0)
		die("mkdir");
	ino_fd = inotify_init1(IN_NONBLOCK);
	if (ino_fd < 0)
		die("inotify_init");
	wd_a = inotify_add_watch(ino_fd, dir_a, IN_CREATE);
	int wd_gap = inotify_add_watch(ino_fd, gap, IN_CREATE);
	if (wd_gap < 0 || inotify_rm_watch(ino_fd, wd_gap) < 0)
		die("inotify gap");
	/* A file held open in a watched directory (opened after the inotify
	   instance, so a restore opens it again after the watches exist). */
	char held[4200];
	snprintf(held, sizeof held, "%s/held", dir_b);
	wd_b = inotify_add_watch(ino_fd, dir_b, IN_CREATE | IN_DELETE | IN_OPEN | IN_ONLYDIR);
	held_fd = open(held, O_CREAT | O_RDWR, 0600);
	if (held_fd < 0)
		die("open held");
	if (wd_a != 1 || wd_b != 3) {
		say("ERROR inotify wds %d %d", wd_a, wd_b);
		exit(2);
	}
	/* The IN_IGNORED of the removed watch, the creation and opening of
	   the held file: read, so none is queued. */
	char ev[4096] __attribute__((aligned(8)));
	while (read(ino_fd, ev, sizeof ev) > 0)
		;

	ep = epoll_create1(0);
	ep_inner = epoll_create1(0);
	if (ep < 0 || ep_inner < 0)
		die("epoll_create1");
	add(ep, ev_count, EPOLLIN | EPOLLET, D_ET);
	add(ep, pipe_r, EPOLLIN, D_PIPE);
	add(ep, ev_fired, EPOLLIN | EPOLLONESHOT, D_FIRED);
	add(ep, ev_armed, EPOLLIN | EPOLLONESHOT, D_ARMED);
	add(ep_inner, ev_inner, EPOLLIN, D_INNER);
	add(ep, ep_inner, EPOLLIN, D_NESTED);
	add(ep, 0, EPOLLIN, D_STDIN);
	add(ep, ev_excl, EPOLLIN | EPOLLEXCLUSIVE, D_EXCL);
	/* Fire the one-shot (and take the edge of the ET item). */
	struct epoll_event got[8];
	int n = epoll_wait(ep, got, 8, 0), fired = 0;
	for (int k = 0; k < n; k++)
		fired |= got[k].data.u64 == D_FIRED;
	if (!fired) {
		say("ERROR the one-shot item did not fire");
		exit(2);
	}

	for (i = 0; i < sizeof flags / sizeof flags[0]; i++)
		set_flags(*flags[i].fd, flags[i].nonblock, flags[i].cloexec);
	set_flags(ev_sem_dup, 1, 0);

	/* Mid-period with one expiration unread, and a one-shot that expired
	   unread: wait for them, do not read. */
	struct pollfd pfd[2] = { { .fd = timer_fd, .events = POLLIN },
				 { .fd = shot_fd, .events = POLLIN } };
	for (i = 0; i < 2; i++)
		if (poll(&pfd[i], 1, 5000) != 1)
			die("poll timerfd");
}

static char why[512];

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (!(cond)) {                                        \
			snprintf(why, sizeof why, __VA_ARGS__);       \
			return -1;                                    \
		}                                                     \
	} while (0)

/* The data values epoll reports now (timeout in ms): a bit per kind. */
static int reported(int epfd, int timeout, uint64_t want)
{
	struct epoll_event got[8];
	int n = epoll_wait(epfd, got, 8, timeout);

	for (int k = 0; k < n; k++)
		if (got[k].data.u64 == want)
			return 1;
	return 0;
}

static uint64_t take(int fd)
{
	uint64_t v = 0;

	if (read(fd, &v, 8) != 8)
		return 0;
	return v;
}

static long ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static int fdinfo_has(int fd, const char *text)
{
	char path[64], buf[8192];

	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, text) != NULL;
}

static int inotify_event_for(int wd, const char *name)
{
	char buf[4096] __attribute__((aligned(8)));
	struct pollfd pfd = { .fd = ino_fd, .events = POLLIN };

	if (poll(&pfd, 1, 2000) != 1)
		return 0;
	ssize_t n = read(ino_fd, buf, sizeof buf);
	for (char *p = buf; n > 0 && p < buf + n;) {
		struct inotify_event *e = (struct inotify_event *)p;
		if (e->wd == wd && (e->mask & IN_CREATE) && e->len && !strcmp(e->name, name))
			return 1;
		p += sizeof *e + e->len;
	}
	return 0;
}

static int check(long *ticks_out, long *next_ms_out)
{
	size_t i;
	char path[4200], buf[4096] __attribute__((aligned(8)));

	for (i = 0; i < sizeof flags / sizeof flags[0]; i++) {
		int fd = *flags[i].fd;
		int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
		CHECK(fl >= 0 && fdfl >= 0, "fd %d (%s) is not open", fd, flags[i].name);
		CHECK(!!(fl & O_NONBLOCK) == flags[i].nonblock, "fd %d (%s) O_NONBLOCK is %d",
		      fd, flags[i].name, !!(fl & O_NONBLOCK));
		CHECK(!!(fdfl & FD_CLOEXEC) == flags[i].cloexec, "fd %d (%s) FD_CLOEXEC is %d",
		      fd, flags[i].name, !!(fdfl & FD_CLOEXEC));
	}

	/* inotify: nothing queued (no IN_IGNORED of the restore's own). */
	CHECK(read(ino_fd, buf, sizeof buf) < 0 && errno == EAGAIN,
	      "inotify has events queued after the restore");
	char want_text[128];
	snprintf(want_text, sizeof want_text, "sigmask:\t%016llx",
		 (1ULL << (SIGUSR1 - 1)) | (1ULL << (SIGRTMIN + 2 - 1)));
	CHECK(fdinfo_has(sig_fd, want_text), "signalfd mask differs (want %s)", want_text);
	snprintf(want_text, sizeof want_text, "tfd: %8d events: %8x data: %16llx", 0,
		 EPOLLIN | EPOLLERR | EPOLLHUP, (unsigned long long)D_STDIN);
	CHECK(fdinfo_has(ep, want_text), "the epoll item on stdin is missing");

	/* epoll, before anything is read: the pipe is ready, the fired
	   one-shot and the armed one on an empty eventfd are not. */
	struct epoll_event got[8];
	int n = epoll_wait(ep, got, 8, 0), pipe_seen = 0;
	for (int k = 0; k < n; k++) {
		CHECK(got[k].data.u64 != D_FIRED, "the fired one-shot item reports again");
		CHECK(got[k].data.u64 != D_ARMED, "the armed one-shot reports with nothing to read");
		CHECK(got[k].data.u64 != D_NESTED, "the nested epoll reports with nothing ready");
		pipe_seen |= got[k].data.u64 == D_PIPE;
	}
	CHECK(pipe_seen, "the pipe's item (data %#llx) is not reported", (unsigned long long)D_PIPE);

	/* The pipe's bytes. */
	int queued = 0;
	CHECK(ioctl(pipe_r, FIONREAD, &queued) == 0 && queued == PIPE_BYTES,
	      "the pipe holds %d bytes, not %d", queued, PIPE_BYTES);
	for (size_t at = 0; at < PIPE_BYTES;) {
		ssize_t k = read(pipe_r, buf, sizeof buf);
		CHECK(k > 0, "pipe read after %zu bytes", at);
		for (ssize_t j = 0; j < k; j++)
			CHECK((unsigned char)buf[j] == pipe_byte(at + j), "pipe byte %zu differs",
			      at + j);
		at += k;
	}

	/* eventfds. */
	uint64_t count = take(ev_count);
	CHECK(count == 5, "the eventfd's count is %llu, not 5", (unsigned long long)count);
	reported(ep, 0, 0); /* drain */
	put(ev_count, 1);
	CHECK(reported(ep, 1000, D_ET), "the EPOLLET item does not report a write");
	CHECK(!reported(ep, 0, D_ET), "the EPOLLET item reports twice for one write");
	take(ev_count);
	CHECK(take(ev_sem_dup) == 1 && take(ev_sem) == 1 && take(ev_sem) == 1,
	      "the semaphore eventfd does not give 1 three times");
	CHECK(take(ev_sem) == 0 && errno == EAGAIN, "the semaphore eventfd gives a fourth");

	/* One-shots: the fired one comes back with MOD, on its fd number. */
	struct epoll_event rearm = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = D_FIRED };
	CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, ev_fired, &rearm) == 0,
	      "EPOLL_CTL_MOD of the fired one-shot: %s", strerror(errno));
	CHECK(reported(ep, 1000, D_FIRED), "the re-armed one-shot does not report");
	CHECK(!reported(ep, 0, D_FIRED), "the re-armed one-shot reports twice");
	put(ev_armed, 1);
	CHECK(reported(ep, 1000, D_ARMED), "the armed one-shot does not report");
	CHECK(!reported(ep, 0, D_ARMED), "the armed one-shot reports twice");

	/* Nested. */
	put(ev_inner, 1);
	CHECK(reported(ep, 1000, D_NESTED), "the nested epoll does not report");
	CHECK(reported(ep_inner, 0, D_INNER), "the inner epoll's item does not report");

	/* Exclusive: still so (MOD refuses it), and reporting. */
	snprintf(want_text, sizeof want_text, "tfd: %8d events: %8x data: %16llx", ev_excl,
		 EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLEXCLUSIVE, (unsigned long long)D_EXCL);
	CHECK(fdinfo_has(ep, want_text), "the EPOLLEXCLUSIVE item differs");
	struct epoll_event excl = { .events = EPOLLIN, .data.u64 = D_EXCL };
	CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, ev_excl, &excl) < 0 && errno == EINVAL,
	      "EPOLL_CTL_MOD of the EPOLLEXCLUSIVE item did not fail with EINVAL");
	put(ev_excl, 1);
	CHECK(reported(ep, 1000, D_EXCL), "the EPOLLEXCLUSIVE item does not report");

	/* signalfd. */
	struct signalfd_siginfo si;
	CHECK(read(sig_fd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1,
	      "the signalfd does not read the pending SIGUSR1");

	/* timerfd: the unread expiration at once, the next within a period. */
	struct itimerspec now;
	CHECK(timerfd_gettime(timer_fd, &now) == 0 && now.it_interval.tv_sec == 0 &&
		      now.it_interval.tv_nsec == PERIOD_MS * 1000000L,
	      "the timerfd's period is %ld.%09ld", (long)now.it_interval.tv_sec,
	      now.it_interval.tv_nsec);
	uint64_t shot = take(shot_fd);
	CHECK(shot == 1, "the expired one-shot timerfd reads %llu expirations (%s), not 1",
	      (unsigned long long)shot, strerror(errno));
	uint64_t ticks = take(timer_fd);
	CHECK(ticks >= 1, "the timerfd's unread expiration is lost (%s)", strerror(errno));
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct pollfd pfd = { .fd = timer_fd, .events = POLLIN };
	CHECK(poll(&pfd, 1, 5000) == 1, "the timerfd does not expire again");
	long next_ms = ms_since(&t0);
	CHECK(next_ms <= PERIOD_MS + 250, "the next expiry came after %ld ms", next_ms);
	CHECK(timerfd_gettime(abs_fd, &now) == 0, "timerfd_gettime of the absolute timer");
	long left = now.it_value.tv_sec;
	long want = (long)(abs_expiry - time(NULL));
	CHECK(left >= want - 2 && left <= want + 1 && now.it_interval.tv_sec == 0,
	      "the absolute timerfd has %ld s left, not %ld", left, want);
	CHECK(fdinfo_has(abs_fd, "settime flags: 03"), "the absolute timerfd's flags differ");

	/* inotify: the same wds. */
	snprintf(path, sizeof path, "%s/made_a", dir_a);
	int f = open(path, O_CREAT | O_WRONLY, 0600);
	CHECK(f >= 0, "create %.200s", path);
	close(f);
	CHECK(inotify_event_for(wd_a, "made_a"), "no IN_CREATE with wd %d", wd_a);
	snprintf(path, sizeof path, "%s/made_b", dir_b);
	f = open(path, O_CREAT | O_WRONLY, 0600);
	CHECK(f >= 0, "create %.200s", path);
	close(f);
	CHECK(inotify_event_for(wd_b, "made_b"), "no IN_CREATE with wd %d", wd_b);

	*ticks_out = (long)ticks;
	*next_ms_out = next_ms;
	return 0;
}

int main(int argc, char **argv)
{
	char line[64];

	if (argc == 3 && !strcmp(argv[2], "queued"))
		;
	else if (argc == 3 && !strcmp(argv[2], "stale"))
		;
	else if (argc != 2) {
		say("ERROR usage: fd_objects DIR [queued|stale]");
		return 2;
	}
	setup(argv[1]);
	if (argc == 3 && !strcmp(argv[2], "queued")) {
		char path[4200];
		snprintf(path, sizeof path, "%s/unread", dir_a);
		int f = open(path, O_CREAT | O_WRONLY, 0600);
		if (f < 0)
			die("create");
		close(f);
	} else if (argc == 3) {
		/* The item stays (its file lives on at `keep`), keyed by a
		   number that names another file now. */
		int keep = dup(ev_armed);
		if (keep < 0 || dup2(ev_inner, ev_armed) < 0)
			die("dup2");
	}
	say("READY pid=%d", (int)getpid());
	while (fgets(line, sizeof line, stdin)) {
		long ticks = 0, next_ms = 0;

		if (strncmp(line, "check", 5) != 0)
			continue;
		if (check(&ticks, &next_ms) == 0)
			say("PASS fd_objects ticks=%ld next_ms=%ld", ticks, next_ms);
		else
			say("FAIL fd_objects %s", why);
	}
	return 0;
}
