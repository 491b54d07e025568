/*
 * tree_refused: a parent and child that share something a tree restore
 * cannot place yet, so a tree dump must refuse it and leave both running.
 *
 *   tree_refused --kind socketpair   a unix stream socketpair: the parent
 *                                    keeps fd 3, the child fd 4
 *   tree_refused --kind epoll        one epoll instance at fd 3 in both,
 *                                    watching the read end (fd 4) of a pipe
 *                                    the child writes to (fd 5)
 *
 * On SIGUSR1 (to both) they use it: a ping and a pong over the socketpair,
 * or the child writes the pipe and the parent's epoll_wait sees it.
 *
 *   READY child pid=<pid>
 *   READY parent pid=<pid> child=<pid> kind=<kind>
 *   PASS child kind=<kind>
 *   PASS parent kind=<kind>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "workload.h"

static void wait_usr1(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigwait(&set, &sig))
		die("sigwait");
}

static int child_socketpair(void)
{
	char buf[4];

	close(3);
	say("READY child pid=%d", getpid());
	wait_usr1();
	if (read(4, buf, 4) != 4 || memcmp(buf, "ping", 4) || write(4, "pong", 4) != 4) {
		say("FAIL child socketpair: %m");
		return 1;
	}
	say("PASS child kind=socketpair");
	return 0;
}

static int parent_socketpair(void)
{
	char buf[4];

	if (write(3, "ping", 4) != 4 || read(3, buf, 4) != 4 || memcmp(buf, "pong", 4)) {
		say("FAIL parent socketpair: %m");
		return 1;
	}
	return 0;
}

static int child_epoll(void)
{
	say("READY child pid=%d", getpid());
	wait_usr1();
	if (write(5, "x", 1) != 1) {
		say("FAIL child epoll write: %m");
		return 1;
	}
	say("PASS child kind=epoll");
	return 0;
}

static int parent_epoll(void)
{
	struct epoll_event ev;
	int n = epoll_wait(3, &ev, 1, 20000);

	if (n != 1 || ev.data.fd != 4) {
		say("FAIL parent epoll_wait returned %d: %m", n);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *kind = argc == 3 && !strcmp(argv[1], "--kind") ? argv[2] : "";
	int epoll = !strcmp(kind, "epoll"), status;
	sigset_t set;
	pid_t child;

	if (!epoll && strcmp(kind, "socketpair")) {
		say("ERROR usage: tree_refused --kind socketpair|epoll");
		return 2;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	if (epoll) {
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = 4 };
		int p[2];

		if (epoll_create1(0) != 3 || pipe(p) || p[0] != 4 || p[1] != 5)
			die("epoll at fd 3, pipe at fds 4 and 5");
		if (epoll_ctl(3, EPOLL_CTL_ADD, 4, &ev))
			die("epoll_ctl");
	} else {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || sv[0] != 3 || sv[1] != 4)
			die("socketpair at fds 3 and 4");
	}
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0)
		return epoll ? child_epoll() : child_socketpair();
	if (!epoll)
		close(4);
	say("READY parent pid=%d child=%d kind=%s", getpid(), child, kind);
	wait_usr1();
	if (epoll ? parent_epoll() : parent_socketpair())
		return 1;
	if (waitpid(child, &status, 0) != child || status != 0) {
		say("FAIL parent child ended with 0x%x", status);
		return 1;
	}
	say("PASS parent kind=%s", kind);
	return 0;
}
