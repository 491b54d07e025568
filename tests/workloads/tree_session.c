/*
 * tree_session: a session whose leader has exited while its members live
 * on.
 *
 * The root R becomes a child subreaper (so the members, orphaned by their
 * leader, stay in R's tree) and forks S; S calls setsid() and forks M1 (in
 * S's group) and M2 (in a group of its own, M2), then exits; R reaps it, so
 * no process has S's pid any more, yet S's session and group live on in
 * M1, M2 and K, M1's child (in M1's group, S). On SIGUSR1 each process
 * checks its session and group are still those it recorded, and the
 * members that the leader is gone (no stand-in left behind with its pid);
 * each reports its parent. SIGTERM ends each.
 *
 *   READY member pid=<pid> sid=<S> pgid=<pgid> ppid=<R, or M1 for K>
 *   READY root pid=<R> leader=<S>
 *   PASS member pid=<pid> sid=<S> pgid=<pgid> ppid=<ppid> (on each SIGUSR1)
 *   PASS root pid=<R> sid=<R>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "workload.h"

/* SIGUSR1: check; SIGTERM: exit 0. */
static int serve(int (*check)(void))
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	for (;;) {
		if (sigwait(&set, &sig))
			die("sigwait");
		if (sig == SIGTERM)
			return 0;
		check();
	}
}

static pid_t leader, root, sid0, pgid0;

static int check_member(void)
{
	pid_t sid = getsid(0), pgid = getpgid(0), ppid = getppid();

	if (sid != sid0 || pgid != pgid0) {
		say("FAIL member %d: sid %d pgid %d (want %d %d)", getpid(), sid, pgid,
		    sid0, pgid0);
		return 1;
	}
	/*
	 * The leader is gone: no process with its pid is in the session (a
	 * stand-in crrestore-tree left behind would be its leader, pid ==
	 * sid). In the initial pid namespace another process of the machine
	 * may have been given the freed pid since: that one is in a session
	 * of its own and is not ours to fail on.
	 */
	if (kill(leader, 0) == 0 && getsid(leader) == sid0) {
		say("FAIL member %d: a process %d (the leader's pid) is in the session", getpid(),
		    leader);
		return 1;
	}
	if (kill(leader, 0) != 0 && errno != ESRCH && errno != EPERM) {
		say("FAIL member %d: kill(%d, 0): %s", getpid(), leader, strerror(errno));
		return 1;
	}
	say("PASS member pid=%d sid=%d pgid=%d ppid=%d", getpid(), sid, pgid, ppid);
	return 0;
}

static int check_root(void)
{
	if (getsid(0) != sid0 || getpgid(0) != pgid0) {
		say("FAIL root: sid %d pgid %d (want %d %d)", getsid(0), getpgid(0), sid0, pgid0);
		return 1;
	}
	say("PASS root pid=%d sid=%d", getpid(), getsid(0));
	return 0;
}

/* A member whose parent will be `parent` (the root, once the leader is
 * gone). */
static int member(int own_group, pid_t parent)
{
	if (own_group && setpgid(0, 0))
		die("setpgid");
	/* Until the leader is gone and R is the parent (at most 20 s). */
	for (int i = 0; i < 20000 && getppid() != parent; i++)
		usleep(1000);
	if (getppid() != parent)
		die("not reparented to the root");
	sid0 = getsid(0);
	pgid0 = getpgid(0);
	say("READY member pid=%d sid=%d pgid=%d ppid=%d", getpid(), sid0, pgid0, getppid());
	return serve(check_member);
}

int main(void)
{
	sigset_t set;
	int status;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	if (prctl(PR_SET_CHILD_SUBREAPER, 1))
		die("PR_SET_CHILD_SUBREAPER");
	root = getpid();
	leader = fork();
	if (leader < 0)
		die("fork");
	if (leader == 0) {
		pid_t m1, m2;

		if (setsid() < 0)
			die("setsid");
		leader = getpid();
		m1 = fork();
		if (m1 == 0) {
			pid_t m1_pid = getpid(), k = fork();

			if (k == 0)
				return member(0, m1_pid);
			if (k < 0)
				die("fork");
			return member(0, root);
		}
		m2 = fork();
		if (m2 == 0)
			return member(1, root);
		if (m1 < 0 || m2 < 0)
			die("fork");
		_exit(0);
	}
	if (waitpid(leader, &status, 0) != leader || status != 0)
		die("waitpid(leader)");
	sid0 = getsid(0);
	pgid0 = getpgid(0);
	say("READY root pid=%d leader=%d", root, leader);
	return serve(check_root);
}
