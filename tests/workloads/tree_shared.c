/*
 * tree_shared: a parent and its child sharing an anonymous shared mapping
 * and one open file description of FILE, opened with O_APPEND.
 *
 *   tree_shared --file FILE
 *
 * Before the dump each writes a value into the mapping and waits to see
 * the other's (the mapping is shared), then both append BEFORE records at
 * once; then both wait for SIGUSR1. On SIGUSR1 each checks it still sees
 * the other's value from before the dump, writes a new one and waits to see
 * the other's new one (still one mapping after the restore, not two private
 * copies), then both append AFTER records at once. The child then lets the
 * parent append a last record and checks that its own offset moved with it
 * (one description: one offset). The parent reaps the child and reads FILE
 * back: every record whole, each writer's numbers in order, none missing
 * (appends interleave, none overwrites another).
 *
 *   READY child pid=<pid>
 *   READY parent pid=<pid> child=<pid>
 *   PASS child offset=<n>
 *   PASS parent records=<n>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "workload.h"

#define BEFORE 50
#define AFTER 500
/* "P 0000\n": one write each. */
#define RECORD 7

struct shared {
	volatile uint64_t value[2][2]; /* [writer][0 before, 1 after] */
	volatile int child_done;
	volatile int parent_final;
};

static struct shared *shm;
static int fd;

static const uint64_t values[2][2] = {
	{ 0x9a4e47b3f00d0001ULL, 0x9a4e47b3f00d0002ULL },
	{ 0xc41d0b3ee5a70001ULL, 0xc41d0b3ee5a70002ULL },
};

/* Wait (polling, for at most 20 s) until *word == want. */
static int wait_for(volatile uint64_t *word, uint64_t want)
{
	struct timespec pause = { 0, 1000000 };

	for (int i = 0; i < 20000; i++) {
		if (*word == want)
			return 0;
		nanosleep(&pause, NULL);
	}
	return -1;
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

static int append(char who, int from, int to)
{
	char rec[RECORD + 1];

	for (int i = from; i < to; i++) {
		snprintf(rec, sizeof(rec), "%c %04d\n", who, i);
		if (write(fd, rec, RECORD) != RECORD)
			return -1;
	}
	return 0;
}

/* The part both run: `me` 0 (parent, 'P') or 1 (child, 'C'). */
static int exchange(int me, int phase, const char *name)
{
	shm->value[me][phase] = values[me][phase];
	if (wait_for(&shm->value[!me][phase], values[!me][phase])) {
		say("FAIL %s does not see the other's %s value in the shared mapping (it holds %016lx)",
		    name, phase ? "after-restore" : "before-dump",
		    (unsigned long)shm->value[!me][phase]);
		return -1;
	}
	return 0;
}

static int child(void)
{
	off_t off;
	struct stat st;

	if (exchange(1, 0, "child") || append('C', 0, BEFORE))
		return 1;
	say("READY child pid=%d", getpid());
	wait_usr1();
	if (shm->value[0][0] != values[0][0]) {
		say("FAIL child lost the parent's before-dump value (%016lx)",
		    (unsigned long)shm->value[0][0]);
		return 1;
	}
	if (exchange(1, 1, "child") || append('C', BEFORE, BEFORE + AFTER)) {
		say("FAIL child append: %m");
		return 1;
	}
	shm->child_done = 1;
	for (int i = 0; i < 20000 && !shm->parent_final; i++)
		usleep(1000);
	if (!shm->parent_final) {
		say("FAIL child: the parent's last record never came");
		return 1;
	}
	off = lseek(fd, 0, SEEK_CUR);
	if (fstat(fd, &st) || off != st.st_size) {
		say("FAIL child offset %ld, file size %ld: the parent's append did not move it (two descriptions?)",
		    (long)off, (long)st.st_size);
		return 1;
	}
	if (!(fcntl(fd, F_GETFL) & O_APPEND)) {
		say("FAIL child: O_APPEND is gone");
		return 1;
	}
	say("PASS child offset=%ld", (long)off);
	return 0;
}

/* FILE back: BEFORE+AFTER records of each writer in order, then P final. */
static int check_file(const char *path)
{
	static char buf[(2 * (BEFORE + AFTER) + 1) * RECORD + 64];
	int next[2] = { 0, 0 }, in = open(path, O_RDONLY);
	ssize_t n;

	if (in < 0) {
		say("FAIL parent open %s: %m", path);
		return -1;
	}
	n = read(in, buf, sizeof(buf));
	close(in);
	if (n != (2 * (BEFORE + AFTER) + 1) * RECORD) {
		say("FAIL parent %s holds %ld bytes, want %d (a record overwritten or lost)",
		    path, (long)n, (2 * (BEFORE + AFTER) + 1) * RECORD);
		return -1;
	}
	for (ssize_t at = 0; at + RECORD < n; at += RECORD) {
		char *r = buf + at;
		int who = r[0] == 'P' ? 0 : r[0] == 'C' ? 1 : -1;

		if (who < 0 || r[1] != ' ' || r[6] != '\n' || atoi(r + 2) != next[who]) {
			say("FAIL parent record at byte %ld is '%.6s' (want P %04d or C %04d)",
			    (long)at, r, next[0], next[1]);
			return -1;
		}
		next[who]++;
	}
	if (memcmp(buf + n - RECORD, "P last\n", RECORD)) {
		say("FAIL parent the last record is '%.6s', not 'P last'", buf + n - RECORD);
		return -1;
	}
	return (int)(n / RECORD);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	sigset_t set;
	pid_t pid;
	int status, records;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--file") && i + 1 < argc)
			path = argv[++i];
		else {
			say("ERROR unknown argument %s", argv[i]);
			return 2;
		}
	}
	if (!path) {
		say("ERROR --file FILE is needed");
		return 2;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
	shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		die("mmap");
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	if (fd < 0)
		die("open");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		return child();
	if (exchange(0, 0, "parent") || append('P', 0, BEFORE))
		return 1;
	say("READY parent pid=%d child=%d", getpid(), pid);
	wait_usr1();
	if (shm->value[1][0] != values[1][0]) {
		say("FAIL parent lost the child's before-dump value (%016lx)",
		    (unsigned long)shm->value[1][0]);
		return 1;
	}
	if (exchange(0, 1, "parent") || append('P', BEFORE, BEFORE + AFTER)) {
		say("FAIL parent append: %m");
		return 1;
	}
	for (int i = 0; i < 20000 && !shm->child_done; i++)
		usleep(1000);
	if (write(fd, "P last\n", RECORD) != RECORD) {
		say("FAIL parent last append: %m");
		return 1;
	}
	shm->parent_final = 1;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		say("FAIL parent child %d ended with status 0x%x", pid, status);
		return 1;
	}
	records = check_file(path);
	if (records < 0)
		return 1;
	say("PASS parent records=%d", records);
	return 0;
}
