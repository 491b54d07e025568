/*
 * sockets: unix socket pairs with data queued in both directions, and
 * listening and bound sockets, checked after a restore.
 *
 *   sockets DIR        set everything up (the unix listener's socket file
 *                      is DIR/listener), print READY with the ports and
 *                      names, then on stdin "check": verify every queue
 *                      byte for byte with its boundaries, the options, the
 *                      shutdown states; print LISTENING and accept one
 *                      connection on each listener (TCP v4, TCP v6, unix
 *                      path, unix abstract: each sends "ping", gets
 *                      "pong"), answer one datagram on the UDP socket;
 *                      PASS.
 *   sockets --established
 *                      a TCP connection to itself (both ends here), for
 *                      the refusal test; "check" says PASS if it still
 *                      carries a byte both ways.
 *
 * READY pid=P tcp=PORT tcp6=PORT udp=PORT path=DIR/listener abstract=NAME
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* One protocol line, flushed at once (the test reads a pipe). */
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

static int failed;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	char msg[512];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (!failed)
		say("FAIL sockets %s", msg);
	failed = 1;
}

static int opt(int fd, int level, int name)
{
	int v = -12345;
	socklen_t len = sizeof v;

	if (getsockopt(fd, level, name, &v, &len))
		return -99999;
	return v;
}

static void set(int fd, int level, int name, int v)
{
	if (setsockopt(fd, level, name, &v, sizeof v))
		die("setsockopt");
}

/* One message of `len` bytes of stream `seed` (bytes i of the stream). */
static void fill(unsigned char *b, size_t len, unsigned seed, size_t first)
{
	for (size_t i = 0; i < len; i++)
		b[i] = (unsigned char)((first + i) * 31 + seed * 7 + (first + i) / 251);
}

static void send_msg(int fd, size_t len, unsigned seed, size_t first)
{
	unsigned char b[4096];

	fill(b, len, seed, first);
	if (send(fd, b, len, MSG_NOSIGNAL) != (ssize_t)len)
		die("send");
}

/* Receive one message of exactly `len` bytes of stream `seed`. */
static void expect_msg(int fd, const char *what, size_t len, unsigned seed,
		       size_t first)
{
	unsigned char got[4096], want[4096];
	ssize_t n = recv(fd, got, sizeof got, MSG_DONTWAIT);

	if (n != (ssize_t)len) {
		fail("%s: received %zd bytes (%s), expected a message of %zu", what, n,
		     n < 0 ? strerror(errno) : "ok", len);
		return;
	}
	fill(want, len, seed, first);
	if (memcmp(got, want, len))
		fail("%s: the %zu-byte message differs", what, len);
}

/* Receive `total` stream bytes of `seed`, in any pieces. */
static void expect_stream(int fd, const char *what, size_t total, unsigned seed)
{
	unsigned char got[8192], want[8192];
	size_t have = 0;

	while (have < total) {
		ssize_t n = recv(fd, got + have, total - have, MSG_DONTWAIT);
		if (n <= 0) {
			fail("%s: %zu of %zu bytes, then %zd (%s)", what, have, total, n,
			     n < 0 ? strerror(errno) : "end of file");
			return;
		}
		have += (size_t)n;
	}
	fill(want, total, seed, 0);
	if (memcmp(got, want, total))
		fail("%s: the %zu bytes differ", what, total);
}

/* Nothing more waits (EAGAIN), or end of file when `eof`. */
static void expect_end(int fd, const char *what, int eof)
{
	char b[16];
	ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);

	if (eof && n != 0)
		fail("%s: expected end of file, got %zd (%s)", what, n,
		     n < 0 ? strerror(errno) : "data");
	if (!eof && !(n < 0 && errno == EAGAIN))
		fail("%s: expected an empty queue, got %zd (%s)", what, n,
		     n < 0 ? strerror(errno) : "data");
}

static int stream_pair[2], dgram_pair[2], seq_pair[2], orphan[2];
static int tcp4, tcp6, udp, unix_path, unix_abstract;
static struct {
	int sndbuf, passcred, rcvbuf_dgram, reuse, keepalive, nodelay, defer,
		fastopen, rcvbuf_tcp, v6only, broadcast, backlog;
} saved;
static char path[108], abstract_name[64];
static int tcp_port, tcp6_port, udp_port;

static const size_t dgram_sizes[] = { 1, 100, 0, 1000, 7 };
static const size_t seq_sizes[] = { 10, 20, 30 };

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;

	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		die("getsockname");
	return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					     : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int backlog_of(int fd)
{
	struct tcp_info info;
	socklen_t len = sizeof info;

	memset(&info, 0, sizeof info);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len))
		return -1;
	return (int)info.tcpi_sacked;
}

static void setup(const char *dir)
{
	/* Stream pair: 3000 bytes one way in three writes, 500 the other. */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, stream_pair))
		die("socketpair stream");
	set(stream_pair[0], SOL_SOCKET, SO_SNDBUF, 65536);
	set(stream_pair[1], SOL_SOCKET, SO_PASSCRED, 1);
	for (int i = 0; i < 3; i++)
		send_msg(stream_pair[0], 1000, 1, (size_t)i * 1000);
	send_msg(stream_pair[1], 500, 2, 0);
	/* A peek offset the task uses: 10 bytes peeked at. */
	set(stream_pair[0], SOL_SOCKET, SO_PEEK_OFF, 0);
	{
		char b[10];
		if (recv(stream_pair[0], b, sizeof b, MSG_PEEK) != 10)
			die("peek");
	}
	saved.sndbuf = opt(stream_pair[0], SOL_SOCKET, SO_SNDBUF);
	saved.passcred = opt(stream_pair[1], SOL_SOCKET, SO_PASSCRED);

	/* Datagrams, a zero-length one among them; two the other way. */
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram_pair))
		die("socketpair dgram");
	set(dgram_pair[1], SOL_SOCKET, SO_RCVBUF, 100000);
	saved.rcvbuf_dgram = opt(dgram_pair[1], SOL_SOCKET, SO_RCVBUF);
	for (size_t i = 0; i < sizeof dgram_sizes / sizeof *dgram_sizes; i++)
		send_msg(dgram_pair[0], dgram_sizes[i], 3, i);
	send_msg(dgram_pair[1], 50, 4, 0);
	send_msg(dgram_pair[1], 60, 4, 1);

	/* Records one way; one back, then that end shuts down for sending. */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, seq_pair))
		die("socketpair seqpacket");
	for (size_t i = 0; i < 3; i++)
		send_msg(seq_pair[0], seq_sizes[i], 5, i);
	send_msg(seq_pair[1], 40, 6, 0);
	if (shutdown(seq_pair[1], SHUT_WR))
		die("shutdown");

	/* A stream whose peer wrote 77 bytes and closed. */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, orphan))
		die("socketpair orphan");
	send_msg(orphan[1], 77, 7, 0);
	close(orphan[1]);

	/* TCP over IPv4 on a free loopback port, with options. */
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	tcp4 = socket(AF_INET, SOCK_STREAM, 0);
	set(tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
	set(tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
	set(tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
	set(tcp4, IPPROTO_TCP, TCP_DEFER_ACCEPT, 3);
	set(tcp4, IPPROTO_TCP, TCP_FASTOPEN, 5);
	set(tcp4, SOL_SOCKET, SO_RCVBUF, 150000);
	if (bind(tcp4, (struct sockaddr *)&a4, sizeof a4) || listen(tcp4, 7))
		die("tcp4 listen");
	tcp_port = port_of(tcp4);
	saved.reuse = opt(tcp4, SOL_SOCKET, SO_REUSEADDR);
	saved.keepalive = opt(tcp4, SOL_SOCKET, SO_KEEPALIVE);
	saved.nodelay = opt(tcp4, IPPROTO_TCP, TCP_NODELAY);
	saved.defer = opt(tcp4, IPPROTO_TCP, TCP_DEFER_ACCEPT);
	saved.fastopen = opt(tcp4, IPPROTO_TCP, TCP_FASTOPEN);
	saved.rcvbuf_tcp = opt(tcp4, SOL_SOCKET, SO_RCVBUF);
	saved.backlog = backlog_of(tcp4);

	/* TCP over IPv6, v6 only. */
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	tcp6 = socket(AF_INET6, SOCK_STREAM, 0);
	set(tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	if (bind(tcp6, (struct sockaddr *)&a6, sizeof a6) || listen(tcp6, 3))
		die("tcp6 listen");
	tcp6_port = port_of(tcp6);
	saved.v6only = opt(tcp6, IPPROTO_IPV6, IPV6_V6ONLY);

	/* UDP, bound. */
	udp = socket(AF_INET, SOCK_DGRAM, 0);
	set(udp, SOL_SOCKET, SO_BROADCAST, 1);
	if (bind(udp, (struct sockaddr *)&a4, sizeof a4))
		die("udp bind");
	udp_port = port_of(udp);
	saved.broadcast = opt(udp, SOL_SOCKET, SO_BROADCAST);

	/* Unix listeners: on a path, and abstract. */
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	snprintf(path, sizeof path, "%s/listener", dir);
	memcpy(un.sun_path, path, strlen(path) + 1);
	unix_path = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(unix_path, (struct sockaddr *)&un, sizeof un) || listen(unix_path, 5) ||
	    chmod(path, 0711))
		die("unix path listen");
	snprintf(abstract_name, sizeof abstract_name, "crimg-sockets-%d", getpid());
	memset(&un, 0, sizeof un);
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path + 1, abstract_name, strlen(abstract_name));
	unix_abstract = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(unix_abstract, (struct sockaddr *)&un,
		 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(abstract_name))) ||
	    listen(unix_abstract, 4))
		die("unix abstract listen");
}

static void check_equal(const char *what, int now, int then)
{
	if (now != then)
		fail("%s is %d, was %d", what, now, then);
}

static void check_queues(void)
{
	check_equal("stream SO_PEEK_OFF", opt(stream_pair[0], SOL_SOCKET, SO_PEEK_OFF), 10);
	set(stream_pair[0], SOL_SOCKET, SO_PEEK_OFF, -1);
	expect_stream(stream_pair[1], "stream a->b", 3000, 1);
	expect_end(stream_pair[1], "stream a->b", 0);
	expect_stream(stream_pair[0], "stream b->a", 500, 2);
	expect_end(stream_pair[0], "stream b->a", 0);
	check_equal("stream SO_SNDBUF", opt(stream_pair[0], SOL_SOCKET, SO_SNDBUF), saved.sndbuf);
	check_equal("stream SO_PASSCRED", opt(stream_pair[1], SOL_SOCKET, SO_PASSCRED),
		    saved.passcred);
	/* Still connected both ways. */
	send_msg(stream_pair[0], 5, 8, 0);
	expect_stream(stream_pair[1], "stream after", 5, 8);

	for (size_t i = 0; i < sizeof dgram_sizes / sizeof *dgram_sizes; i++)
		expect_msg(dgram_pair[1], "dgram a->b", dgram_sizes[i], 3, i);
	expect_end(dgram_pair[1], "dgram a->b", 0);
	expect_msg(dgram_pair[0], "dgram b->a", 50, 4, 0);
	expect_msg(dgram_pair[0], "dgram b->a", 60, 4, 1);
	expect_end(dgram_pair[0], "dgram b->a", 0);
	check_equal("dgram SO_RCVBUF", opt(dgram_pair[1], SOL_SOCKET, SO_RCVBUF),
		    saved.rcvbuf_dgram);

	for (size_t i = 0; i < 3; i++)
		expect_msg(seq_pair[1], "seqpacket a->b", seq_sizes[i], 5, i);
	expect_end(seq_pair[1], "seqpacket a->b", 0);
	expect_msg(seq_pair[0], "seqpacket b->a", 40, 6, 0);
	expect_end(seq_pair[0], "seqpacket b->a (shut down)", 1);
	if (send(seq_pair[1], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("seqpacket: the end shut down for sending can send again");

	expect_stream(orphan[0], "orphan", 77, 7);
	expect_end(orphan[0], "orphan (peer closed)", 1);

	check_equal("tcp SO_REUSEADDR", opt(tcp4, SOL_SOCKET, SO_REUSEADDR), saved.reuse);
	check_equal("tcp SO_KEEPALIVE", opt(tcp4, SOL_SOCKET, SO_KEEPALIVE), saved.keepalive);
	check_equal("tcp TCP_NODELAY", opt(tcp4, IPPROTO_TCP, TCP_NODELAY), saved.nodelay);
	check_equal("tcp TCP_DEFER_ACCEPT", opt(tcp4, IPPROTO_TCP, TCP_DEFER_ACCEPT), saved.defer);
	check_equal("tcp TCP_FASTOPEN", opt(tcp4, IPPROTO_TCP, TCP_FASTOPEN), saved.fastopen);
	check_equal("tcp SO_RCVBUF", opt(tcp4, SOL_SOCKET, SO_RCVBUF), saved.rcvbuf_tcp);
	check_equal("tcp backlog", backlog_of(tcp4), saved.backlog);
	check_equal("tcp port", port_of(tcp4), tcp_port);
	check_equal("tcp6 IPV6_V6ONLY", opt(tcp6, IPPROTO_IPV6, IPV6_V6ONLY), saved.v6only);
	check_equal("tcp6 port", port_of(tcp6), tcp6_port);
	check_equal("udp SO_BROADCAST", opt(udp, SOL_SOCKET, SO_BROADCAST), saved.broadcast);
	check_equal("udp port", port_of(udp), udp_port);
	{
		struct stat st;
		if (stat(path, &st) || !S_ISSOCK(st.st_mode))
			fail("%s is not a socket", path);
		else
			check_equal("unix listener's file mode", (int)(st.st_mode & 07777), 0711);
	}
}

/* Wait up to 20 s for `fd` to be readable. */
static int wait_readable(int fd, const char *what)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, 20000) != 1) {
		fail("%s: nothing came in 20 s", what);
		return 0;
	}
	return 1;
}

static void serve_one(int listener, const char *what)
{
	char b[16];
	int c;

	if (!wait_readable(listener, what))
		return;
	c = accept(listener, NULL, NULL);
	if (c < 0) {
		fail("%s: accept: %s", what, strerror(errno));
		return;
	}
	if (!wait_readable(c, what))
		return;
	if (recv(c, b, sizeof b, 0) != 4 || memcmp(b, "ping", 4))
		fail("%s: the client did not say ping", what);
	else if (send(c, "pong", 4, MSG_NOSIGNAL) != 4)
		fail("%s: cannot answer: %s", what, strerror(errno));
	/* The client closes first, so the TIME_WAIT is on its side: one here
	 * would hold the port of the IPv6 listener (no SO_REUSEADDR) against
	 * a restore of the image taken before. */
	else if (wait_readable(c, what) && recv(c, b, sizeof b, 0) != 0)
		fail("%s: the client said more than ping", what);
	close(c);
}

static void serve(void)
{
	struct sockaddr_storage from;
	socklen_t len = sizeof from;
	char b[16];

	say("LISTENING");
	serve_one(tcp4, "tcp4 listener");
	serve_one(tcp6, "tcp6 listener");
	serve_one(unix_path, "unix path listener");
	serve_one(unix_abstract, "unix abstract listener");
	if (wait_readable(udp, "udp")) {
		ssize_t n = recvfrom(udp, b, sizeof b, 0, (struct sockaddr *)&from, &len);
		if (n != 4 || memcmp(b, "ping", 4))
			fail("udp: the datagram is not ping (%zd)", n);
		else if (sendto(udp, "pong", 4, 0, (struct sockaddr *)&from, len) != 4)
			fail("udp: cannot answer: %s", strerror(errno));
	}
}

static int established[2];

static void setup_established(void)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	socklen_t len = sizeof a4;
	int l = socket(AF_INET, SOCK_STREAM, 0);

	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l, (struct sockaddr *)&a4, sizeof a4) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a4, &len))
		die("listen");
	established[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(established[0], (struct sockaddr *)&a4, sizeof a4))
		die("connect");
	established[1] = accept(l, NULL, NULL);
	if (established[1] < 0)
		die("accept");
	close(l);
	tcp_port = ntohs(a4.sin_port);
}

int main(int argc, char **argv)
{
	char line[64];
	int est = argc > 1 && !strcmp(argv[1], "--established");

	if (argc < 2)
		die("usage: sockets DIR | sockets --established");
	if (est) {
		setup_established();
		say("READY pid=%d tcp=%d", getpid(), tcp_port);
	} else {
		setup(argv[1]);
		say("READY pid=%d tcp=%d tcp6=%d udp=%d path=%s abstract=%s", getpid(), tcp_port,
		    tcp6_port, udp_port, path, abstract_name);
	}
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "check", 5))
			continue;
		failed = 0;
		if (est) {
			char b;
			if (send(established[0], "e", 1, 0) != 1 || recv(established[1], &b, 1, 0) != 1 ||
			    b != 'e')
				fail("the connection does not carry a byte");
		} else {
			check_queues();
			if (!failed)
				serve();
		}
		if (!failed)
			say("PASS sockets");
	}
	return 0;
}
