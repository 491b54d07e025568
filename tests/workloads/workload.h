/*
 * Shared pieces of the crimg test workloads (zdtm-style victims).
 *
 * Every workload speaks the same line protocol on stdout, one fact line at a
 * time, flushed at once so a test reading a pipe sees it immediately:
 *
 *   READY pid=<pid> key=value ...   setup done, state is in place
 *   PASS <workload> key=value ...   a check found every piece of state intact
 *   FAIL <workload> <reason>        a check found something wrong (the reason
 *                                   names the piece of state and the values)
 *
 * A check is triggered by SIGUSR2 or by the line "check" on stdin.
 */
#ifndef CRIMG_WORKLOAD_H
#define CRIMG_WORKLOAD_H

/* A workload uses only some of these helpers. */
#pragma GCC diagnostic ignored "-Wunused-function"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

/* Print one protocol line and flush it: the test reads a pipe, which would
 * otherwise be fully buffered. */
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

/* A failure during setup is not a test result: say why and stop. */
static void die(const char *what) __attribute__((noreturn));
static void die(const char *what)
{
	say("ERROR %s: %m", what);
	exit(2);
}

/* xorshift64: a cheap pattern that differs on every 8-byte word, so a page
 * restored at the wrong address or from the wrong offset is caught. */
static inline uint64_t pattern_next(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* The pattern word number `index` of stream `seed` depends only on both, so
 * any word can be checked on its own. Seeds must be non-zero. */
static inline uint64_t pattern_word(uint64_t seed, uint64_t index)
{
	uint64_t s = seed ^ (index * 0x9e3779b97f4a7c15ULL);

	if (s == 0)
		s = 1;
	return pattern_next(&s);
}

/* Fill `len` bytes (a multiple of 8) of `buf` with the pattern of `seed`,
 * where the first word has index `first`. */
static void pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t first)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pattern_word(seed, first + i);
}

/* Find the first word of `buf` that differs from the pattern; returns its
 * byte offset or -1 when all match. */
static long pattern_find_mismatch(const void *buf, size_t len, uint64_t seed,
				  uint64_t first, uint64_t *expected,
				  uint64_t *found)
{
	const uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++) {
		uint64_t want = pattern_word(seed, first + i);

		if (w[i] != want) {
			*expected = want;
			*found = w[i];
			return (long)(i * 8);
		}
	}
	return -1;
}

/* FNV-1a style 64-bit checksum over words: reported at READY and at PASS so
 * the test can also compare the values across a dump and restore. */
static uint64_t checksum(const void *buf, size_t len)
{
	const uint64_t *w = buf;
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len / 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ULL;
	return h;
}

/* First offset of a non-zero byte, or -1. */
static long find_nonzero(const void *buf, size_t len)
{
	const unsigned char *b = buf;

	for (size_t i = 0; i < len; i++)
		if (b[i])
			return (long)i;
	return -1;
}

/*
 * Waking up for a check without a race.
 *
 * A check is requested by SIGUSR2, whose handler sets a flag. A workload
 * that tests the flag and then blocks in a syscall would miss a signal that
 * arrives between the two. So the blocking syscalls are made by small
 * assembly sequences that test the flag right before the `syscall`
 * instruction, and the handler, when it interrupts such a sequence before
 * the syscall started, moves the saved instruction pointer to code that
 * returns -EINTR (what glibc does for thread cancellation). A signal during
 * the syscall interrupts it as usual (no SA_RESTART).
 *
 * long crimg_checked_read(int fd, void *buf, size_t len,
 *                         volatile sig_atomic_t *flag);
 *   read(fd, buf, len), or -EINTR if *flag is set; returns the raw result.
 */
__asm__(
	".text\n"
	".globl crimg_checked_read\n"
	".type crimg_checked_read, @function\n"
	"crimg_checked_read:\n"
	"	.cfi_startproc\n"
	".globl crimg_read_window_start\n"
	"crimg_read_window_start:\n"
	"	cmpl $0, (%rcx)\n"
	"	jne crimg_read_eintr\n"
	"	xor %eax, %eax\n" /* SYS_read */
	"	syscall\n"
	".globl crimg_read_window_end\n"
	"crimg_read_window_end:\n"
	"	ret\n"
	".globl crimg_read_eintr\n"
	"crimg_read_eintr:\n"
	"	mov $-4, %rax\n"
	"	ret\n"
	"	.cfi_endproc\n"
	".size crimg_checked_read, .-crimg_checked_read\n");

long crimg_checked_read(int fd, void *buf, size_t len,
			volatile sig_atomic_t *flag);
extern const char crimg_read_window_start[], crimg_read_window_end[],
	crimg_read_eintr[];

/* From a SA_SIGINFO handler: if the interrupted code is inside
 * [start, end), which ends just after a `syscall` instruction, and that
 * syscall has not run yet, continue at `eintr` instead. */
static void redirect_if_in_window(void *ucontext, const char *start,
				  const char *end, const char *eintr)
{
	ucontext_t *uc = ucontext;
	greg_t *rip = &uc->uc_mcontext.gregs[REG_RIP];

	if (*rip >= (greg_t)start && *rip < (greg_t)end)
		*rip = (greg_t)eintr;
}

/* Block until a check is requested (used once stdin is closed): a read from
 * a pipe nobody writes, through the race-free checked read. */
static void wait_for_check(volatile sig_atomic_t *flag)
{
	static int idle_pipe[2] = { -1, -1 };
	char byte;

	if (idle_pipe[0] < 0 && pipe(idle_pipe))
		die("pipe");
	crimg_checked_read(idle_pipe[0], &byte, 1, flag);
}

/* The flag the SIGUSR2 handler of check_on_usr2() sets. */
static volatile sig_atomic_t *usr2_check_flag;

static void usr2_requests_check(int sig, siginfo_t *info, void *ucontext)
{
	(void)sig;
	(void)info;
	*usr2_check_flag = 1;
	redirect_if_in_window(ucontext, crimg_read_window_start,
			      crimg_read_window_end, crimg_read_eintr);
}

/* SIGUSR2 asks for a check: it sets *flag, and a checked read it
 * interrupts returns EINTR (no SA_RESTART), so serve_commands runs it. */
static void check_on_usr2(volatile sig_atomic_t *flag)
{
	struct sigaction sa;

	usr2_check_flag = flag;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = usr2_requests_check;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction SIGUSR2");
}

/* The command loop of a workload on stdin, one command a line: "check"
 * runs do_check, "quit" says BYE and returns 0. A check is also run when
 * *check_requested is set (a signal handler sets it; the checked read
 * makes that race-free). Once stdin is closed only signals ask. */
static int serve_commands(volatile sig_atomic_t *check_requested,
			  void (*do_check)(void))
{
	char line[256];
	size_t len = 0;

	for (;;) {
		ssize_t n = crimg_checked_read(0, line + len,
					       sizeof(line) - 1 - len,
					       check_requested);
		char *nl;

		if (n == 0) {
			for (;;) {
				wait_for_check(check_requested);
				if (*check_requested)
					do_check();
			}
		}
		if (n > 0) {
			len += (size_t)n;
			line[len] = 0;
			while ((nl = strchr(line, '\n'))) {
				*nl = 0;
				if (!strcmp(line, "check"))
					do_check();
				else if (!strcmp(line, "quit")) {
					say("BYE");
					return 0;
				}
				len -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, len + 1);
			}
			if (len == sizeof(line) - 1)
				len = 0;
		} else if (n != -EINTR) {
			errno = (int)-n;
			die("read stdin");
		}
		if (*check_requested)
			do_check();
	}
}

/* A non-negative decimal option value; exits with status 2 on anything else. */
static long parse_long(const char *name, const char *value)
{
	char *end;
	long v;

	if (!value) {
		say("ERROR %s needs a value", name);
		exit(2);
	}
	v = strtol(value, &end, 10);
	if (*end || v < 0) {
		say("ERROR %s: '%s' is not a non-negative number", name, value);
		exit(2);
	}
	return v;
}

#endif
