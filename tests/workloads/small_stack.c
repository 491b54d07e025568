/*
 * A thread on a 16 KiB stack of its own (mmap, a guard page below it) has
 * less room below its stack pointer than crdump borrows for injected
 * syscalls. crdump must refuse it by name rather than borrow other memory
 * of the task (such as the heap below), which a dumper killed meanwhile
 * would leave overwritten.
 *
 * Prints "READY pid=P tid=T" once the thread waits in pause(). On the stdin
 * line "check" it verifies a patterned heap buffer and that the thread is
 * still alive, then prints "PASS small_stack pid=P" or "FAIL small_stack
 * <reason>".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define STACK_LEN (16 * 1024)
#define HEAP_WORDS (64 * 1024 / 8)

static volatile pid_t thread_tid;
static volatile uint64_t thread_alive;

static void *waiter(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		thread_alive++;
		pause();
	}
	return 0;
}

int main(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *block = mmap(0, STACK_LEN + page, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *heap = malloc(HEAP_WORDS * 8);
	pthread_attr_t attr;
	pthread_t t;
	char line[64];

	if (block == MAP_FAILED || !heap)
		return 2;
	for (size_t i = 0; i < HEAP_WORDS; i++)
		heap[i] = i * 0x9e3779b97f4a7c15ull;
	if (mprotect(block, page, PROT_NONE))
		return 2;
	pthread_attr_init(&attr);
	if (pthread_attr_setstack(&attr, block + page, STACK_LEN))
		return 2;
	if (pthread_create(&t, &attr, waiter, 0))
		return 2;
	while (!thread_tid || !thread_alive)
		usleep(1000);
	printf("READY pid=%d tid=%d\n", (int)getpid(), (int)thread_tid);
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		if (strncmp(line, "check", 5) != 0)
			continue;
		for (size_t i = 0; i < HEAP_WORDS; i++) {
			if (heap[i] != i * 0x9e3779b97f4a7c15ull) {
				printf("FAIL small_stack heap word %zu changed\n", i);
				fflush(stdout);
				return 1;
			}
		}
		if (syscall(SYS_tgkill, getpid(), thread_tid, 0) != 0) {
			printf("FAIL small_stack the thread is gone\n");
			fflush(stdout);
			return 1;
		}
		printf("PASS small_stack pid=%d\n", (int)getpid());
		fflush(stdout);
	}
	return 0;
}
