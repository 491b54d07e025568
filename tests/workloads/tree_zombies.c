/*
 * tree_zombies: a parent with two zombie children and a child in a process
 * group of its own (with a grandchild in that group).
 *
 *   child A   _exit(7): a zombie the parent has not reaped
 *   child B   killed by SIGTERM: a zombie too
 *   child C   setpgid(0, 0), forks D (in C's group); both wait for SIGTERM
 *
 * The parent sees A and B exit without reaping them (waitid WNOWAIT), then
 * waits for SIGUSR1: it reaps A and B and checks their statuses, then
 * reaps C. C and D report a SIGTERM sent to their group and exit; C reaps D
 * first.
 *
 *   READY member pid=<pid> pgid=<pgid>          (C, D)
 *   READY parent pid=<pid> a=<pid> b=<pid> c=<pid>
 *   PASS zombies a=exited:7 b=signaled:15
 *   TERM pid=<pid> pgid=<pgid>                  (C, D)
 *   PASS group c=exited:0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/wait.h>

#include "workload.h"

static void wait_signal(int signo)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, signo);
	if (sigwait(&set, &sig))
		die("sigwait");
}

static void block(int signo)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, signo);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
}

/* C or D: wait for the group's SIGTERM, say so, exit 0. */
static int member(pid_t child)
{
	int status;

	say("READY member pid=%d pgid=%d", getpid(), getpgid(0));
	wait_signal(SIGTERM);
	say("TERM pid=%d pgid=%d", getpid(), getpgid(0));
	if (child > 0 && (waitpid(child, &status, 0) != child || status != 0)) {
		say("FAIL member %d: its child %d ended with 0x%x", getpid(), child, status);
		return 1;
	}
	return 0;
}

/* Wait until `pid` has exited, leaving it a zombie. */
static void wait_zombie(pid_t pid)
{
	siginfo_t info;

	if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT))
		die("waitid WNOWAIT");
}

static const char *describe(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited:%d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "signaled:%d", WTERMSIG(status));
	else
		snprintf(buf, len, "raw:0x%x", status);
	return buf;
}

int main(void)
{
	pid_t a, b, c;
	int sa, sb, sc;
	char da[32], db[32], dc[32];

	block(SIGUSR1);
	a = fork();
	if (a < 0)
		die("fork");
	if (a == 0)
		_exit(7);
	b = fork();
	if (b < 0)
		die("fork");
	if (b == 0) {
		kill(getpid(), SIGTERM);
		_exit(99);
	}
	c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		pid_t d;

		if (setpgid(0, 0))
			die("setpgid");
		block(SIGTERM);
		d = fork();
		if (d < 0)
			die("fork");
		return member(d);
	}
	/* Both set it: whichever runs first, C is in its group before READY. */
	if (setpgid(c, c) && errno != EACCES)
		die("setpgid(c)");
	wait_zombie(a);
	wait_zombie(b);
	say("READY parent pid=%d a=%d b=%d c=%d", getpid(), a, b, c);
	wait_signal(SIGUSR1);
	if (waitpid(a, &sa, WNOHANG) != a || waitpid(b, &sb, WNOHANG) != b) {
		say("FAIL zombies: waitpid found no exited child a=%d b=%d: %m", a, b);
		return 1;
	}
	describe(sa, da, sizeof(da));
	describe(sb, db, sizeof(db));
	if (strcmp(da, "exited:7") || strcmp(db, "signaled:15")) {
		say("FAIL zombies a=%s b=%s (want exited:7 and signaled:15)", da, db);
		return 1;
	}
	say("PASS zombies a=%s b=%s", da, db);
	if (waitpid(c, &sc, 0) != c) {
		say("FAIL group waitpid(%d): %m", c);
		return 1;
	}
	describe(sc, dc, sizeof(dc));
	if (strcmp(dc, "exited:0")) {
		say("FAIL group c=%s", dc);
		return 1;
	}
	say("PASS group c=%s", dc);
	return 0;
}
