/*
 * A thread waiting in rt_sigsuspend runs under a temporary signal mask:
 * SIGUSR1 and SIGUSR2 are blocked for real, the wait blocks only SIGUSR2.
 * A dump must record the real mask (the kernel's saved_sigmask); after a
 * dump that leaves it running, each SIGUSR1 must still be taken: it prints
 * "got" for each.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static void on_usr1(int sig)
{
	(void)sig;
	if (write(1, "got\n", 4) != 4)
		_exit(3);
}

int main(void)
{
	sigset_t block, wait_mask;
	struct sigaction sa = { 0 };

	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, 0);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigprocmask(SIG_BLOCK, &block, 0);
	sigemptyset(&wait_mask);
	sigaddset(&wait_mask, SIGUSR2);
	printf("READY pid=%d\n", (int)getpid());
	fflush(stdout);
	for (;;)
		sigsuspend(&wait_mask);
}
