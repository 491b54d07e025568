/*
 * blockers: a process holding several things crdump cannot save at once,
 * for the refusal, --check-only and --force tests.
 *
 * Options (any combination):
 *   --socketpair   a socketpair
 *   --tcp          a loopback TCP listener and an established connection:
 *                  its client end C (O_RDWR, FD_CLOEXEC) and accepted end A
 *                  (no cloexec); established TCP is not saved, so after a
 *                  forced dump both must be /dev/null
 *   --io-uring     an io_uring instance (raw io_uring_setup)
 *   --sqpoll       ... with an SQPOLL kernel thread (iou-sqp-PID)
 *   --deleted      a file in --tmpdir (default /tmp), open and unlinked
 *   --vfork        after READY, vfork a child that waits forever: the main
 *                  (only) thread then sleeps in vfork's uninterruptible
 *                  wait and never stops for ptrace (no ticks)
 *   --interval-ms N  tick period (default 20)
 *
 * Prints "READY pid=P sock_a=.. sock_b=.. tcp_listen=.. tcp_client=C
 * tcp_accepted=A uring=.. deleted=.." (the fds it holds, -1 for none), then
 * "TICK n" every interval. On the stdin line "check" it verifies that the
 * connection's fds are now /dev/null (a forced dump dropped them): the
 * character device 1:3, the same access mode and FD_CLOEXEC as before,
 * writes accepted and reads at end of file; it prints "PASS blockers
 * ticks=n" or "FAIL blockers <reason>" (the original, with its sockets,
 * fails: the check can fail).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One protocol line, flushed (the test reads a pipe). */
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

static int sock_a = -1, sock_b = -1;
static int tcp_listen = -1, tcp_client = -1, tcp_accepted = -1;
static int uring = -1, deleted = -1;

static int is_dev_null(int fd, int want_cloexec, const char **why)
{
	struct stat st;
	char c;
	int fdfl = fcntl(fd, F_GETFD);
	int fl = fcntl(fd, F_GETFL);

	if (fstat(fd, &st) != 0) {
		*why = "fstat failed";
		return 0;
	}
	if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 1 || minor(st.st_rdev) != 3) {
		*why = "not /dev/null";
		return 0;
	}
	if ((fl & O_ACCMODE) != O_RDWR) {
		*why = "access mode is not O_RDWR";
		return 0;
	}
	if (!!(fdfl & FD_CLOEXEC) != want_cloexec) {
		*why = "FD_CLOEXEC differs";
		return 0;
	}
	if (write(fd, "x", 1) != 1 || read(fd, &c, 1) != 0) {
		*why = "does not read/write like /dev/null";
		return 0;
	}
	return 1;
}

static void setup_tcp(void)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof addr;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int c = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) ||
	    listen(l, 4) || getsockname(l, (struct sockaddr *)&addr, &len) ||
	    connect(c, (struct sockaddr *)&addr, sizeof addr))
		die("tcp");
	tcp_listen = l;
	tcp_client = c;
	tcp_accepted = accept(l, 0, 0);
	if (tcp_accepted < 0 || fcntl(c, F_SETFD, FD_CLOEXEC))
		die("accept");
}

static void setup_io_uring(int sqpoll)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof p);
	if (sqpoll) {
		p.flags = IORING_SETUP_SQPOLL;
		p.sq_thread_idle = 60000;
	}
	uring = (int)syscall(__NR_io_uring_setup, 8, &p);
	if (uring < 0)
		die("io_uring_setup");
}

static void setup_deleted(const char *tmpdir)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof path, "%s/blockers-XXXXXX", tmpdir);
	fd = mkstemp(path);
	/* 1 GiB (sparse): beyond what an image keeps of a deleted file. */
	if (fd < 0 || write(fd, "data", 4) != 4 || ftruncate(fd, 1L << 30) ||
	    unlink(path))
		die("deleted file");
	deleted = fd;
}

/* The vfork child never returns from here: it may only wait (it shares our
 * memory and stack); the parent returns once it is gone. */
static __attribute__((noinline)) void vfork_and_wait(void)
{
	if (vfork() == 0)
		for (;;)
			pause();
}

int main(int argc, char **argv)
{
	const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int interval = 20;
	int want_pair = 0, want_tcp = 0, want_uring = 0, sqpoll = 0, want_deleted = 0;
	int want_vfork = 0;
	unsigned long ticks = 0;
	char line[128];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--socketpair"))
			want_pair = 1;
		else if (!strcmp(argv[i], "--tcp"))
			want_tcp = 1;
		else if (!strcmp(argv[i], "--io-uring"))
			want_uring = 1;
		else if (!strcmp(argv[i], "--sqpoll"))
			want_uring = sqpoll = 1;
		else if (!strcmp(argv[i], "--deleted"))
			want_deleted = 1;
		else if (!strcmp(argv[i], "--vfork"))
			want_vfork = 1;
		else if (!strcmp(argv[i], "--tmpdir") && i + 1 < argc)
			tmpdir = argv[++i];
		else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc)
			interval = atoi(argv[++i]);
		else {
			say("ERROR unknown option %s", argv[i]);
			return 2;
		}
	}
	if (want_pair) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
			die("socketpair");
		sock_a = sv[0];
		sock_b = sv[1];
	}
	if (want_tcp)
		setup_tcp();
	if (want_uring)
		setup_io_uring(sqpoll);
	if (want_deleted)
		setup_deleted(tmpdir);
	say("READY pid=%d sock_a=%d sock_b=%d tcp_listen=%d tcp_client=%d "
	    "tcp_accepted=%d uring=%d deleted=%d",
	    (int)getpid(), sock_a, sock_b, tcp_listen, tcp_client, tcp_accepted,
	    uring, deleted);
	if (want_vfork)
		vfork_and_wait();
	for (;;) {
		struct pollfd in = { .fd = 0, .events = POLLIN };
		int n = poll(&in, 1, interval);

		if (n == 0) {
			say("TICK %lu", ++ticks);
			continue;
		}
		if (n < 0)
			continue;
		if (!fgets(line, sizeof line, stdin))
			return 0;
		if (!strncmp(line, "check", 5)) {
			const char *why = "";

			if (tcp_client >= 0 && !is_dev_null(tcp_client, 1, &why))
				say("FAIL blockers fd %d: %s", tcp_client, why);
			else if (tcp_accepted >= 0 && !is_dev_null(tcp_accepted, 0, &why))
				say("FAIL blockers fd %d: %s", tcp_accepted, why);
			else
				say("PASS blockers ticks=%lu", ticks);
		}
	}
}
