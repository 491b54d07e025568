/*
 * fd_sharing: open file descriptions shared between fds, a FIFO with both
 * ends and bytes in it, and a copy of stdin at a high fd.
 *
 *   fd 5, 6   one description of DIR/log (dup): one offset
 *   fd 7      a second open of DIR/log, read-only, at offset 4
 *   fd 8, 9   DIR/fifo: read end (O_NONBLOCK), write end (FD_CLOEXEC),
 *             3000 bytes buffered
 *   fd 10     dup(0): commands are read from it
 *   fd 11     the read end of a pipe whose write end is closed, "tail" in it
 *
 * With --share-pipe a child is forked that holds a pipe with the parent
 * (a pipe between processes: a single-process dump must refuse it), and
 * an eventfd at fd 12 that both hold.
 *
 * "check" on fd 10: writes a line through fd 5 and one through fd 6, then
 * checks that the log holds all four lines in order (separate offsets
 * would overwrite), fd 7's offset, the FIFO's bytes and every fd's flags.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "workload.h"

#define FIFO_BYTES 3000

static char dir[4096];

static int check(void)
{
	static const char want[] = "before 5\nbefore 6\nafter 5\nafter 6\n";
	char buf[256];
	uint64_t seed = 0x1234567;
	unsigned char fifo[FIFO_BYTES + 16];
	long n;

	if (write(5, "after 5\n", 8) != 8 || write(6, "after 6\n", 8) != 8) {
		say("FAIL fd_sharing write: %m");
		return 1;
	}
	n = pread(7, buf, sizeof(buf) - 1, 0);
	if (n < 0) {
		say("FAIL fd_sharing pread: %m");
		return 1;
	}
	buf[n] = 0;
	if (strcmp(buf, want)) {
		for (long i = 0; i < n; i++)
			if (buf[i] == '\n')
				buf[i] = '|';
		say("FAIL fd_sharing log holds '%s' (fds 5 and 6 no longer share an offset?)", buf);
		return 1;
	}
	if (lseek(5, 0, SEEK_CUR) != (off_t)strlen(want) || lseek(7, 0, SEEK_CUR) != 4) {
		say("FAIL fd_sharing offsets: fd 5 at %ld, fd 7 at %ld (want %zu, 4)",
		    (long)lseek(5, 0, SEEK_CUR), (long)lseek(7, 0, SEEK_CUR), strlen(want));
		return 1;
	}
	if (!(fcntl(8, F_GETFL) & O_NONBLOCK) || (fcntl(9, F_GETFL) & O_NONBLOCK)) {
		say("FAIL fd_sharing FIFO status flags: fd 8 %#x fd 9 %#x", fcntl(8, F_GETFL),
		    fcntl(9, F_GETFL));
		return 1;
	}
	if (fcntl(8, F_GETFD) != 0 || fcntl(9, F_GETFD) != FD_CLOEXEC || fcntl(10, F_GETFD) != 0) {
		say("FAIL fd_sharing FD_CLOEXEC: fd 8 %d fd 9 %d fd 10 %d", fcntl(8, F_GETFD),
		    fcntl(9, F_GETFD), fcntl(10, F_GETFD));
		return 1;
	}
	n = read(8, fifo, sizeof(fifo));
	if (n != FIFO_BYTES) {
		say("FAIL fd_sharing FIFO held %ld bytes, want %d", n, FIFO_BYTES);
		return 1;
	}
	for (long i = 0; i < n; i++) {
		if (fifo[i] != (unsigned char)pattern_next(&seed)) {
			say("FAIL fd_sharing FIFO byte %ld differs", i);
			return 1;
		}
	}
	/* A pipe whose writer is gone: its bytes, then end-of-file. */
	if (read(11, buf, sizeof(buf)) != 4 || memcmp(buf, "tail", 4) || read(11, buf, 1) != 0) {
		say("FAIL fd_sharing the writerless pipe at fd 11 lost its bytes or its end-of-file");
		return 1;
	}
	/* The FIFO still works both ways. */
	if (write(9, "x", 1) != 1 || read(8, fifo, 1) != 1 || fifo[0] != 'x') {
		say("FAIL fd_sharing FIFO does not pass a byte");
		return 1;
	}
	say("PASS fd_sharing log=%zu fifo=%d", strlen(want), FIFO_BYTES);
	return 0;
}

int main(int argc, char **argv)
{
	char path[4200], fifo_path[4200], line[64];
	int share_pipe = 0, child = 0;
	uint64_t seed = 0x1234567;
	unsigned char bytes[FIFO_BYTES];
	FILE *commands;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			snprintf(dir, sizeof(dir), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--share-pipe"))
			share_pipe = 1;
	}
	if (!dir[0])
		die("--dir DIR is required");
	snprintf(path, sizeof(path), "%s/log", dir);
	snprintf(fifo_path, sizeof(fifo_path), "%s/fifo", dir);

	if (dup2(open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600), 5) != 5 || dup2(5, 6) != 6)
		die("log");
	if (write(5, "before 5\n", 9) != 9 || write(6, "before 6\n", 9) != 9)
		die("write log");
	if (dup2(open(path, O_RDONLY), 7) != 7 || lseek(7, 4, SEEK_SET) != 4)
		die("log again");
	if (mkfifo(fifo_path, 0600))
		die("mkfifo");
	if (dup2(open(fifo_path, O_RDONLY | O_NONBLOCK), 8) != 8)
		die("fifo read end");
	if (dup2(open(fifo_path, O_WRONLY), 9) != 9 || fcntl(9, F_SETFD, FD_CLOEXEC))
		die("fifo write end");
	for (int i = 0; i < FIFO_BYTES; i++)
		bytes[i] = (unsigned char)pattern_next(&seed);
	if (write(9, bytes, FIFO_BYTES) != FIFO_BYTES)
		die("fill fifo");
	if (dup2(0, 10) != 10)
		die("dup stdin");
	{
		int p[2];

		if (pipe(p) || dup2(p[0], 11) != 11 || write(p[1], "tail", 4) != 4)
			die("writerless pipe");
		if (p[0] != 11)
			close(p[0]);
		close(p[1]);
	}
	if (share_pipe) {
		int p[2];

		if (pipe(p))
			die("pipe");
		/* An eventfd the child holds too. */
		if (dup2(eventfd(1, 0), 12) != 12)
			die("eventfd");
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			/* Gone with its parent, even when a test fails before
			 * its guard holds this pid. */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
				_exit(1);
			for (;;)
				pause();
		}
	}
	say("READY pid=%d child=%d log=%s fifo=%s", getpid(), child, path, fifo_path);
	commands = fdopen(10, "r");
	if (!commands)
		die("fdopen");
	while (fgets(line, sizeof(line), commands)) {
		if (!strcmp(line, "check\n"))
			check();
	}
	return 0;
}
