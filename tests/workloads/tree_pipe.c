/*
 * tree_pipe: a producer and its consumer child joined by a pipe, with
 * BUFFERED bytes sitting in the pipe while both wait (the state a tree dump
 * must carry over: the pipe between two processes, and its data).
 *
 *   tree_pipe [--buffered BYTES] [--after BYTES]
 *
 * The parent (producer) writes the first BUFFERED bytes of a byte stream
 * that depends only on each byte's position, then both wait for SIGUSR1.
 * On SIGUSR1 the consumer reads to end of file and checks every byte
 * against its position (a byte lost, repeated or reordered shows as the
 * first mismatch); the producer writes AFTER more bytes, closes its end and
 * reaps the consumer.
 *
 *   READY consumer pid=<pid>
 *   READY producer pid=<pid> consumer=<pid> queued=<bytes in the pipe>
 *   PASS consumer bytes=<n> sum=<checksum of the stream>
 *   PASS producer sent=<n> consumer=exited:0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include "workload.h"

#define SEED 0x7ee9a11ULL

/* Byte `i` of the stream. */
static unsigned char stream_byte(uint64_t i)
{
	return (unsigned char)(pattern_word(SEED, i / 8) >> (8 * (i % 8)));
}

static void wait_usr1(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigwait(&set, &sig))
		die("sigwait");
}

static int consume(long expected)
{
	static unsigned char buf[65536];
	uint64_t at = 0, sum = 0xcbf29ce484222325ULL;

	wait_usr1();
	for (;;) {
		ssize_t n = read(3, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			say("FAIL consumer read at byte %lu: %m", (unsigned long)at);
			return 1;
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++, at++) {
			if (buf[i] != stream_byte(at)) {
				say("FAIL consumer byte %lu is 0x%02x, want 0x%02x (lost, repeated or reordered data)",
				    (unsigned long)at, buf[i], stream_byte(at));
				return 1;
			}
			sum = (sum ^ buf[i]) * 0x100000001b3ULL;
		}
	}
	if ((long)at != expected) {
		say("FAIL consumer got %lu bytes, want %ld", (unsigned long)at, expected);
		return 1;
	}
	say("PASS consumer bytes=%lu sum=%016lx", (unsigned long)at, (unsigned long)sum);
	return 0;
}

static int write_stream(int fd, uint64_t from, uint64_t to)
{
	static unsigned char buf[8192];

	while (from < to) {
		size_t len = 0;

		while (len < sizeof(buf) && from + len < to) {
			buf[len] = stream_byte(from + len);
			len++;
		}
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		from += (uint64_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	long buffered = 60 * 1024, after = 1024 * 1024;
	int p[2], status, queued = -1;
	sigset_t set;
	pid_t consumer;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--buffered"))
			buffered = parse_long(argv[i], argv[i + 1]), i++;
		else if (!strcmp(argv[i], "--after"))
			after = parse_long(argv[i], argv[i + 1]), i++;
		else {
			say("ERROR unknown argument %s", argv[i]);
			return 2;
		}
	}
	/* Blocked before the fork: a SIGUSR1 sent early waits for sigwait. */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	/* fd 3 the read end, fd 4 the write end. */
	if (pipe(p) || p[0] != 3 || p[1] != 4)
		die("pipe at fds 3 and 4");
	consumer = fork();
	if (consumer < 0)
		die("fork");
	if (consumer == 0) {
		close(4);
		say("READY consumer pid=%d", getpid());
		return consume(buffered + after);
	}
	close(3);
	if (write_stream(4, 0, (uint64_t)buffered))
		die("write the buffered part");
	if (ioctl(4, FIONREAD, &queued))
		die("FIONREAD");
	say("READY producer pid=%d consumer=%d queued=%d", getpid(), consumer, queued);
	wait_usr1();
	if (write_stream(4, (uint64_t)buffered, (uint64_t)(buffered + after))) {
		say("FAIL producer write: %m");
		return 1;
	}
	close(4);
	if (waitpid(consumer, &status, 0) != consumer) {
		say("FAIL producer waitpid(%d): %m", consumer);
		return 1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		say("FAIL producer consumer ended with status 0x%x", status);
		return 1;
	}
	say("PASS producer sent=%ld consumer=exited:0", buffered + after);
	return 0;
}
