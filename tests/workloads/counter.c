/*
 * counter: a self-checking victim for crimg (in the manner of CRIU's zdtm).
 *
 * It sets up many kinds of process state, prints READY with the facts a test
 * needs, then counts. When asked to check (SIGUSR2 or the stdin line "check")
 * it verifies every piece of state and prints PASS or FAIL with the reason.
 * The point is to run it, dump it, restore it (a new process with the old
 * memory) and ask the restored process to check itself.
 *
 * State it holds:
 *   - a tick counter printed as "TICK n" every --interval-ms (the test checks
 *     the stream has no gap or repeat across a restore); a shadow copy of it
 *     lives in a separate allocation and must agree;
 *   - --heap-mb MiB of malloc memory and a small brk-heap block, filled with a
 *     pattern; the brk end must not move;
 *   - --anon-mb MiB of anonymous mmap memory, first half patterned, second
 *     half never touched (must read back as zero);
 *   - a MAP_PRIVATE mapping of a file in --tmpdir whose even pages were
 *     written (copy-on-write) and odd pages were not (must come from the file);
 *   - r12-r15, ymm8-15 and (with AVX-512) zmm16-31 loaded with per-thread
 *     constants inside hand-written assembly that either spins (--sleep-in
 *     busy) or sits in nanosleep (--sleep-in nanosleep); the values are
 *     stored back and compared when the assembly returns, so a stop anywhere
 *     inside it that loses a register is caught;
 *   - a SIGUSR1 handler running on a sigaltstack (it prints "USR1 n
 *     altstack=1" when the handler's own frame is inside the altstack);
 *   - SIGRTMIN+1 blocked (a test may queue it before the dump: the check
 *     reports rt_pending=1);
 *   - --threads N workers with their own counters, TLS values and registers.
 *
 * Options:
 *   --interval-ms N   tick period (default 10)
 *   --heap-mb N       malloc'd patterned memory (default 64)
 *   --anon-mb N       anonymous mapping, half written (default 16)
 *   --file-pages N    pages of the file-backed private mapping (default 16)
 *   --threads N       worker threads (default 0)
 *   --sleep-in MODE   nanosleep (default) | busy | read
 *                     read: the main thread blocks in read() on stdin and
 *                     echoes every line as "GOT <line>"; no TICK lines
 *   --sleep-ms N      right after READY, sleep N ms in one nanosleep (resumed
 *                     after EINTR) and print "WOKE slept_ms=X interrupted=K"
 *   --tmpdir DIR      where the mapped file is created (default $TMPDIR, /tmp)
 *   --no-vector       do not use ymm/zmm registers
 *
 * Stdin commands: "check" (verify, print PASS/FAIL), "quit" (print BYE, exit 0).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define HEAP_SEED 0x1111111111111111ULL
#define BRK_SEED 0x2222222222222222ULL
#define ANON_SEED 0x3333333333333333ULL
#define FILE_SEED 0x4444444444444444ULL
#define COW_SEED 0x5555555555555555ULL
#define VEC_SEED 0x6666666666666666ULL
#define TLS_MAGIC 0x7ec0de5eed000000UL
#define BRK_BLOCK (64 * 1024UL)
#define MAX_THREADS 2048
#define ALTSTACK_SIZE (64 * 1024UL)
#define BLOCKED_SIGNAL (SIGRTMIN + 1)

/* Looked up by tests in the image and in the restored process's memory. */
char crimg_known_string[64] = "crimg-known-string-0123456789";

/* ---- registers held by hand-written assembly ------------------------- */

/* What the assembly loads into registers and what it finds there when it is
 * done. The offsets are used by the assembly below. */
struct vec_state {
	uint64_t gp_expect[4]; /* r12..r15 */
	uint64_t gp_seen[4];
	uint8_t ymm_expect[8][32]; /* ymm8..15 */
	uint8_t ymm_seen[8][32];
	uint8_t zmm_expect[16][64]; /* zmm16..31 */
	uint8_t zmm_seen[16][64];
	uint64_t use_zmm;
	uint64_t use_ymm;
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct vec_state, gp_seen) == 32, "asm offset");
_Static_assert(offsetof(struct vec_state, ymm_expect) == 64, "asm offset");
_Static_assert(offsetof(struct vec_state, ymm_seen) == 320, "asm offset");
_Static_assert(offsetof(struct vec_state, zmm_expect) == 576, "asm offset");
_Static_assert(offsetof(struct vec_state, zmm_seen) == 1600, "asm offset");
_Static_assert(offsetof(struct vec_state, use_zmm) == 2624, "asm offset");
_Static_assert(offsetof(struct vec_state, use_ymm) == 2632, "asm offset");

/*
 * long crimg_workload_spin(struct vec_state *v, uint64_t iterations,
 *                          volatile uint64_t *counter);
 *   Loads the registers, increments *counter `iterations` times, stores the
 *   registers back into v. Pure user-mode code: a dump stops it here.
 * long crimg_workload_sleep(struct vec_state *v, const struct timespec *ts,
 *                           volatile sig_atomic_t *flag);
 *   Loads the registers, calls nanosleep(ts, NULL) directly (no libc), stores
 *   the registers back; returns the raw syscall result (0 or -errno), or
 *   -EINTR without sleeping when *flag is set. A dump stops it inside the
 *   syscall.
 * Both keep r12-r15 for themselves, so they save and restore them (the C ABI
 * says they are callee-saved); the vector registers are caller-saved.
 */
__asm__(
	".text\n"
	".macro CRIMG_LOAD_REGS\n"
	"	mov 0(%rdi), %r12\n"
	"	mov 8(%rdi), %r13\n"
	"	mov 16(%rdi), %r14\n"
	"	mov 24(%rdi), %r15\n"
	"	cmpq $0, 2632(%rdi)\n"
	"	je 8f\n"
	"	vmovdqu 64(%rdi), %ymm8\n"
	"	vmovdqu 96(%rdi), %ymm9\n"
	"	vmovdqu 128(%rdi), %ymm10\n"
	"	vmovdqu 160(%rdi), %ymm11\n"
	"	vmovdqu 192(%rdi), %ymm12\n"
	"	vmovdqu 224(%rdi), %ymm13\n"
	"	vmovdqu 256(%rdi), %ymm14\n"
	"	vmovdqu 288(%rdi), %ymm15\n"
	"	cmpq $0, 2624(%rdi)\n"
	"	je 8f\n"
	"	vmovdqu64 576(%rdi), %zmm16\n"
	"	vmovdqu64 640(%rdi), %zmm17\n"
	"	vmovdqu64 704(%rdi), %zmm18\n"
	"	vmovdqu64 768(%rdi), %zmm19\n"
	"	vmovdqu64 832(%rdi), %zmm20\n"
	"	vmovdqu64 896(%rdi), %zmm21\n"
	"	vmovdqu64 960(%rdi), %zmm22\n"
	"	vmovdqu64 1024(%rdi), %zmm23\n"
	"	vmovdqu64 1088(%rdi), %zmm24\n"
	"	vmovdqu64 1152(%rdi), %zmm25\n"
	"	vmovdqu64 1216(%rdi), %zmm26\n"
	"	vmovdqu64 1280(%rdi), %zmm27\n"
	"	vmovdqu64 1344(%rdi), %zmm28\n"
	"	vmovdqu64 1408(%rdi), %zmm29\n"
	"	vmovdqu64 1472(%rdi), %zmm30\n"
	"	vmovdqu64 1536(%rdi), %zmm31\n"
	"8:\n"
	".endm\n"
	".macro CRIMG_STORE_REGS\n"
	"	mov %r12, 32(%rdi)\n"
	"	mov %r13, 40(%rdi)\n"
	"	mov %r14, 48(%rdi)\n"
	"	mov %r15, 56(%rdi)\n"
	"	cmpq $0, 2632(%rdi)\n"
	"	je 9f\n"
	"	vmovdqu %ymm8, 320(%rdi)\n"
	"	vmovdqu %ymm9, 352(%rdi)\n"
	"	vmovdqu %ymm10, 384(%rdi)\n"
	"	vmovdqu %ymm11, 416(%rdi)\n"
	"	vmovdqu %ymm12, 448(%rdi)\n"
	"	vmovdqu %ymm13, 480(%rdi)\n"
	"	vmovdqu %ymm14, 512(%rdi)\n"
	"	vmovdqu %ymm15, 544(%rdi)\n"
	"	cmpq $0, 2624(%rdi)\n"
	"	je 7f\n"
	"	vmovdqu64 %zmm16, 1600(%rdi)\n"
	"	vmovdqu64 %zmm17, 1664(%rdi)\n"
	"	vmovdqu64 %zmm18, 1728(%rdi)\n"
	"	vmovdqu64 %zmm19, 1792(%rdi)\n"
	"	vmovdqu64 %zmm20, 1856(%rdi)\n"
	"	vmovdqu64 %zmm21, 1920(%rdi)\n"
	"	vmovdqu64 %zmm22, 1984(%rdi)\n"
	"	vmovdqu64 %zmm23, 2048(%rdi)\n"
	"	vmovdqu64 %zmm24, 2112(%rdi)\n"
	"	vmovdqu64 %zmm25, 2176(%rdi)\n"
	"	vmovdqu64 %zmm26, 2240(%rdi)\n"
	"	vmovdqu64 %zmm27, 2304(%rdi)\n"
	"	vmovdqu64 %zmm28, 2368(%rdi)\n"
	"	vmovdqu64 %zmm29, 2432(%rdi)\n"
	"	vmovdqu64 %zmm30, 2496(%rdi)\n"
	"	vmovdqu64 %zmm31, 2560(%rdi)\n"
	"7:\n"
	/* Leave the upper halves clean for the SSE code in libc. */
	"	vzeroupper\n"
	"9:\n"
	".endm\n"
	".macro CRIMG_PUSH_GP\n"
	"	push %r12\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	.cfi_rel_offset %r12, 0\n"
	"	push %r13\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	.cfi_rel_offset %r13, 0\n"
	"	push %r14\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	.cfi_rel_offset %r14, 0\n"
	"	push %r15\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	.cfi_rel_offset %r15, 0\n"
	".endm\n"
	".macro CRIMG_POP_GP\n"
	"	pop %r15\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	.cfi_restore %r15\n"
	"	pop %r14\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	.cfi_restore %r14\n"
	"	pop %r13\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	.cfi_restore %r13\n"
	"	pop %r12\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	.cfi_restore %r12\n"
	".endm\n"
	"\n"
	".globl crimg_workload_spin\n"
	".type crimg_workload_spin, @function\n"
	"crimg_workload_spin:\n"
	"	.cfi_startproc\n"
	"	CRIMG_PUSH_GP\n"
	"	CRIMG_LOAD_REGS\n"
	"1:	incq (%rdx)\n"
	"	pause\n"
	"	dec %rsi\n"
	"	jnz 1b\n"
	"	CRIMG_STORE_REGS\n"
	"	CRIMG_POP_GP\n"
	"	xor %eax, %eax\n"
	"	ret\n"
	"	.cfi_endproc\n"
	".size crimg_workload_spin, .-crimg_workload_spin\n"
	"\n"
	".globl crimg_workload_sleep\n"
	".type crimg_workload_sleep, @function\n"
	"crimg_workload_sleep:\n"
	"	.cfi_startproc\n"
	"	CRIMG_PUSH_GP\n"
	"	push %rdi\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	CRIMG_LOAD_REGS\n"
	"	mov %rsi, %rdi\n"
	"	xor %esi, %esi\n"
	/* See "Waking up for a check" in workload.h. */
	".globl crimg_sleep_window_start\n"
	"crimg_sleep_window_start:\n"
	"	cmpl $0, (%rdx)\n"
	"	jne crimg_sleep_eintr\n"
	"	mov $35, %eax\n" /* SYS_nanosleep */
	"	syscall\n"
	".globl crimg_sleep_window_end\n"
	"crimg_sleep_window_end:\n"
	"	jmp 2f\n"
	".globl crimg_sleep_eintr\n"
	"crimg_sleep_eintr:\n"
	"	mov $-4, %rax\n"
	"2:	pop %rdi\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	CRIMG_STORE_REGS\n"
	"	CRIMG_POP_GP\n"
	"	ret\n"
	"	.cfi_endproc\n"
	".size crimg_workload_sleep, .-crimg_workload_sleep\n");

long crimg_workload_spin(struct vec_state *v, uint64_t iterations,
			 volatile uint64_t *counter);
long crimg_workload_sleep(struct vec_state *v, const struct timespec *ts,
			  volatile sig_atomic_t *flag);
extern const char crimg_sleep_window_start[], crimg_sleep_window_end[],
	crimg_sleep_eintr[];

/* ---- options and global state ----------------------------------------- */

enum sleep_mode { SLEEP_NANOSLEEP, SLEEP_BUSY, SLEEP_READ };

static struct {
	long interval_ms;
	long heap_mb;
	long anon_mb;
	long file_pages;
	int threads;
	enum sleep_mode mode;
	long sleep_ms;
	const char *tmpdir;
	int vector;
} opt = { 10, 64, 16, 16, 0, SLEEP_NANOSLEEP, 0, NULL, 1 };

static const char *mode_names[] = { "nanosleep", "busy", "read" };

/* One per thread, the main thread is workers[0]. */
struct worker {
	int index;
	pthread_t thread;
	pid_t tid;
	volatile uint64_t ticks;
	uint64_t spins;
	uint64_t vec_rounds;
	struct vec_state vec;
	volatile int failed;
	char error[256];
};

static struct worker workers[MAX_THREADS + 1];
static __thread uint64_t tls_value;

static uint64_t tick;
static uint64_t *tick_shadow; /* a second copy, in another allocation */
static volatile sig_atomic_t check_requested;
static volatile sig_atomic_t usr1_count;
static volatile sig_atomic_t usr1_off_altstack;

static uint8_t *heap;
static size_t heap_bytes;
static uint64_t heap_sum;
static uint8_t *brk_block;
static void *brk_end;
static uint8_t *anon;
static size_t anon_bytes;
static uint64_t anon_sum;
static uint8_t *filemap;
static size_t file_bytes;
static uint64_t file_sum;
static char file_path[4096];
static uint8_t *altstack;

static int stdin_open = 1;
static char line_buf[4096];
static size_t line_len;

/* ---- per-thread register and TLS checks ------------------------------- */

static void vec_setup(struct worker *w)
{
	uint64_t seed = VEC_SEED + (uint64_t)w->index;

	memset(&w->vec, 0, sizeof(w->vec));
	for (int i = 0; i < 4; i++)
		w->vec.gp_expect[i] = pattern_word(seed, 1000 + i);
	pattern_fill(w->vec.ymm_expect, sizeof(w->vec.ymm_expect), seed, 0);
	pattern_fill(w->vec.zmm_expect, sizeof(w->vec.zmm_expect), seed, 100);
	__builtin_cpu_init();
	w->vec.use_ymm = opt.vector && __builtin_cpu_supports("avx");
	w->vec.use_zmm = w->vec.use_ymm && __builtin_cpu_supports("avx512f");
}

static void worker_fail(struct worker *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void worker_fail(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	if (w->failed)
		return; /* keep the first reason: later ones follow from it */
	va_start(ap, fmt);
	vsnprintf(w->error, sizeof(w->error), fmt, ap);
	va_end(ap);
	w->failed = 1;
}

/* Compare what the assembly found in the registers with what it loaded. */
static void vec_verify(struct worker *w, const char *where)
{
	struct vec_state *v = &w->vec;

	w->vec_rounds++;
	for (int i = 0; i < 4; i++)
		if (v->gp_seen[i] != v->gp_expect[i])
			worker_fail(w,
				    "thread %d r%d after %s: expected 0x%lx found 0x%lx",
				    w->index, 12 + i, where, v->gp_expect[i],
				    v->gp_seen[i]);
	for (int r = 0; v->use_ymm && r < 8; r++)
		for (int b = 0; b < 32; b++)
			if (v->ymm_seen[r][b] != v->ymm_expect[r][b]) {
				worker_fail(w,
					    "thread %d ymm%d byte %d after %s: expected 0x%02x found 0x%02x",
					    w->index, 8 + r, b, where,
					    v->ymm_expect[r][b], v->ymm_seen[r][b]);
				break;
			}
	for (int r = 0; v->use_zmm && r < 16; r++)
		for (int b = 0; b < 64; b++)
			if (v->zmm_seen[r][b] != v->zmm_expect[r][b]) {
				worker_fail(w,
					    "thread %d zmm%d byte %d after %s: expected 0x%02x found 0x%02x",
					    w->index, 16 + r, b, where,
					    v->zmm_expect[r][b], v->zmm_seen[r][b]);
				break;
			}
	if (tls_value != (TLS_MAGIC ^ (uint64_t)w->index))
		worker_fail(w, "thread %d TLS value: expected 0x%lx found 0x%lx",
			    w->index, TLS_MAGIC ^ (uint64_t)w->index, tls_value);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Sleep for `ns` in the register-holding nanosleep; returns 0 or -errno. */
static long vec_sleep(struct worker *w, uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ULL),
			       (long)(ns % 1000000000ULL) };
	/* Workers never see SIGUSR2: their flag stays clear. */
	static volatile sig_atomic_t never;
	long rc = crimg_workload_sleep(&w->vec, &ts,
				       w->index == 0 ? &check_requested : &never);

	vec_verify(w, "nanosleep");
	return rc;
}

/* Spin in the register-holding loop until `deadline_ns`, or until a check is
 * requested (main thread only). */
static void vec_spin_until(struct worker *w, uint64_t deadline_ns)
{
	while (now_ns() < deadline_ns && !(w->index == 0 && check_requested)) {
		crimg_workload_spin(&w->vec, 2000, &w->spins);
		vec_verify(w, "spin");
	}
}

/* One tick period of `w` in the current mode. */
static void wait_one_interval(struct worker *w)
{
	uint64_t period = (uint64_t)opt.interval_ms * 1000000ULL;

	if (opt.mode == SLEEP_BUSY)
		vec_spin_until(w, now_ns() + period);
	else
		vec_sleep(w, period);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	sigset_t set;

	/* Signals for the process go to the main thread, which reports them. */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	tls_value = TLS_MAGIC ^ (uint64_t)w->index;
	w->tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		wait_one_interval(w);
		w->ticks++;
	}
	return NULL;
}

/* ---- signals ---------------------------------------------------------- */

/* Async-signal-safe decimal formatting for the SIGUSR1 report. */
static size_t format_u64(char *out, uint64_t v)
{
	char tmp[24];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

static void on_usr1(int sig)
{
	char local;
	int on_alt = &local >= (char *)altstack &&
		     &local < (char *)altstack + ALTSTACK_SIZE;
	char msg[64] = "USR1 ";
	size_t len = 5;
	int saved_errno = errno;

	(void)sig;
	usr1_count++;
	if (!on_alt)
		usr1_off_altstack++;
	len += format_u64(msg + len, (uint64_t)usr1_count);
	memcpy(msg + len, on_alt ? " altstack=1\n" : " altstack=0\n", 12);
	len += 12;
	/* One write(): the line reaches the pipe whole. */
	if (write(1, msg, len) < 0) {
		/* nothing to do from a handler */
	}
	errno = saved_errno;
}

static void on_usr2(int sig, siginfo_t *info, void *ucontext)
{
	(void)sig;
	(void)info;
	check_requested = 1;
	redirect_if_in_window(ucontext, crimg_sleep_window_start,
			      crimg_sleep_window_end, crimg_sleep_eintr);
	redirect_if_in_window(ucontext, crimg_read_window_start,
			      crimg_read_window_end, crimg_read_eintr);
}

static void setup_signals(void)
{
	struct sigaction sa;
	stack_t ss;
	sigset_t set;

	altstack = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (altstack == MAP_FAILED)
		die("mmap altstack");
	ss.ss_sp = altstack;
	ss.ss_size = ALTSTACK_SIZE;
	ss.ss_flags = 0;
	if (sigaltstack(&ss, NULL))
		die("sigaltstack");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction SIGUSR1");

	/* No SA_RESTART: a blocking read() or nanosleep returns EINTR, so the
	 * check runs at once. */
	sa.sa_sigaction = on_usr2;
	sa.sa_flags = SA_SIGINFO;
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction SIGUSR2");

	sigemptyset(&set);
	sigaddset(&set, BLOCKED_SIGNAL);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		die("sigprocmask");
}

/* ---- memory ------------------------------------------------------------ */

static void setup_memory(void)
{
	char tmpl[sizeof(file_path) - 64];
	int fd;

	heap_bytes = (size_t)opt.heap_mb * MIB;
	heap = malloc(heap_bytes ? heap_bytes : 8);
	if (!heap)
		die("malloc heap");
	pattern_fill(heap, heap_bytes, HEAP_SEED, 0);
	heap_sum = checksum(heap, heap_bytes);

	/* Below the mmap threshold: this one lives in the brk heap. */
	brk_block = malloc(BRK_BLOCK);
	tick_shadow = malloc(sizeof(*tick_shadow));
	if (!brk_block || !tick_shadow)
		die("malloc brk block");
	pattern_fill(brk_block, BRK_BLOCK, BRK_SEED, 0);
	*tick_shadow = 0;

	anon_bytes = (size_t)opt.anon_mb * MIB;
	if (anon_bytes) {
		anon = mmap(NULL, anon_bytes, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (anon == MAP_FAILED)
			die("mmap anon");
		/* Keep the untouched half truly untouched (no huge pages). */
		madvise(anon, anon_bytes, MADV_NOHUGEPAGE);
		/* Only the first half carries data; the rest stays untouched. */
		pattern_fill(anon, anon_bytes / 2, ANON_SEED, 0);
	}
	anon_sum = checksum(anon, anon_bytes / 2);

	file_bytes = (size_t)opt.file_pages * PAGE;
	if (file_bytes) {
		uint8_t *content = malloc(file_bytes);

		if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/crimg-counter-%d-XXXXXX",
			     opt.tmpdir, getpid()) >= sizeof(tmpl)) {
			say("ERROR --tmpdir: path too long");
			exit(2);
		}
		fd = mkstemp(tmpl);
		if (fd < 0 || !content)
			die("mkstemp mapped file");
		snprintf(file_path, sizeof(file_path), "%s", tmpl);
		pattern_fill(content, file_bytes, FILE_SEED, 0);
		if (write(fd, content, file_bytes) != (ssize_t)file_bytes)
			die("write mapped file");
		free(content);
		filemap = mmap(NULL, file_bytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE, fd, 0);
		if (filemap == MAP_FAILED)
			die("mmap file");
		close(fd); /* the mapping keeps the file */
		/* Copy-on-write the even pages; odd pages stay the file's. */
		for (size_t p = 0; p < (size_t)opt.file_pages; p += 2)
			pattern_fill(filemap + p * PAGE, PAGE, COW_SEED,
				     p * PAGE / 8);
		file_sum = checksum(filemap, file_bytes);
	}
}

/* ---- the check ---------------------------------------------------------- */

static char fail_reasons[4096];

static void add_failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add_failure(const char *fmt, ...)
{
	size_t used = strlen(fail_reasons);
	va_list ap;

	if (used && used + 3 < sizeof(fail_reasons)) {
		strcat(fail_reasons, "; ");
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(fail_reasons + used, sizeof(fail_reasons) - used, fmt, ap);
	va_end(ap);
}

static void check_pattern(const char *what, const uint8_t *buf, size_t len,
			  uint64_t seed, uint64_t first)
{
	uint64_t want, got;
	long off = pattern_find_mismatch(buf, len, seed, first, &want, &got);

	if (off >= 0)
		add_failure("%s word at offset 0x%lx (address %p): expected 0x%lx found 0x%lx",
			    what, off, (const void *)(buf + off), want, got);
}

static int count_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void check_threads(char *ticks_out, size_t ticks_len)
{
	uint64_t before[MAX_THREADS + 1];
	uint64_t deadline = now_ns() + 2000000000ULL;
	int tasks = count_tasks();
	size_t used = 0;

	if (tasks != opt.threads + 1)
		add_failure("expected %d tasks in /proc/self/task, found %d",
			    opt.threads + 1, tasks);
	/* Every worker must still be counting. */
	for (int i = 1; i <= opt.threads; i++)
		before[i] = workers[i].ticks;
	for (int i = 1; i <= opt.threads; i++) {
		while (workers[i].ticks == before[i] && now_ns() < deadline) {
			struct timespec ms = { 0, 1000000 };

			nanosleep(&ms, NULL);
		}
		if (workers[i].ticks == before[i])
			add_failure("thread %d stopped counting at %lu", i,
				    before[i]);
	}
	ticks_out[0] = 0;
	for (int i = 1; i <= opt.threads && used + 24 < ticks_len; i++)
		used += (size_t)snprintf(ticks_out + used, ticks_len - used,
					 "%s%lu", i > 1 ? "," : "",
					 workers[i].ticks);
	for (int i = 0; i <= opt.threads; i++)
		if (workers[i].failed)
			add_failure("%s", workers[i].error);
}

static void check_signals(int *rt_pending)
{
	struct sigaction sa;
	stack_t ss;
	sigset_t set;

	if (sigaltstack(NULL, &ss))
		add_failure("sigaltstack query: %m");
	else if (ss.ss_sp != altstack || ss.ss_size != ALTSTACK_SIZE ||
		 ss.ss_flags != 0)
		add_failure("sigaltstack: expected sp=%p size=%lu flags=0, found sp=%p size=%zu flags=%d",
			    (void *)altstack, ALTSTACK_SIZE, ss.ss_sp,
			    ss.ss_size, ss.ss_flags);
	if (sigaction(SIGUSR1, NULL, &sa))
		add_failure("sigaction SIGUSR1 query: %m");
	else if (sa.sa_handler != on_usr1 || !(sa.sa_flags & SA_ONSTACK) ||
		 !(sa.sa_flags & SA_RESTART))
		add_failure("SIGUSR1 action: expected handler %p with SA_ONSTACK|SA_RESTART, found %p flags 0x%x",
			    (void *)on_usr1, (void *)sa.sa_handler, sa.sa_flags);
	if (sigaction(SIGUSR2, NULL, &sa))
		add_failure("sigaction SIGUSR2 query: %m");
	else if (sa.sa_sigaction != on_usr2 || (sa.sa_flags & SA_RESTART) ||
		 !(sa.sa_flags & SA_SIGINFO))
		add_failure("SIGUSR2 action: expected SA_SIGINFO handler %p without SA_RESTART, found %p flags 0x%x",
			    (void *)on_usr2, (void *)sa.sa_sigaction, sa.sa_flags);
	if (usr1_off_altstack)
		add_failure("SIGUSR1 handler ran off the altstack %d times",
			    (int)usr1_off_altstack);
	if (sigprocmask(SIG_BLOCK, NULL, &set))
		add_failure("sigprocmask query: %m");
	else {
		if (!sigismember(&set, BLOCKED_SIGNAL))
			add_failure("SIGRTMIN+1 is no longer blocked");
		if (sigismember(&set, SIGUSR1) || sigismember(&set, SIGUSR2))
			add_failure("SIGUSR1 or SIGUSR2 became blocked");
	}
	*rt_pending = 0;
	if (!sigpending(&set))
		*rt_pending = sigismember(&set, BLOCKED_SIGNAL);
}

static void do_check(void)
{
	char thread_ticks[1024];
	int rt_pending;
	void *brk_now = sbrk(0);

	check_requested = 0;
	fail_reasons[0] = 0;
	if (brk_now != brk_end)
		add_failure("brk end moved from %p to %p", brk_end, brk_now);
	if (*tick_shadow != tick)
		add_failure("tick %lu but its shadow copy is %lu", tick,
			    *tick_shadow);
	if (strcmp(crimg_known_string, "crimg-known-string-0123456789"))
		add_failure("known string changed to '%.63s'",
			    crimg_known_string);
	check_pattern("heap", heap, heap_bytes, HEAP_SEED, 0);
	check_pattern("brk block", brk_block, BRK_BLOCK, BRK_SEED, 0);
	if (anon_bytes) {
		long nz;

		check_pattern("anon", anon, anon_bytes / 2, ANON_SEED, 0);
		nz = find_nonzero(anon + anon_bytes / 2, anon_bytes / 2);
		if (nz >= 0)
			add_failure("untouched anon half has a non-zero byte at offset 0x%lx",
				    (long)(anon_bytes / 2) + nz);
	}
	for (long p = 0; p < opt.file_pages; p++) {
		size_t off = (size_t)p * PAGE;

		if (p % 2 == 0)
			check_pattern("file mapping written page", filemap + off,
				      PAGE, COW_SEED, off / 8);
		else
			check_pattern("file mapping clean page", filemap + off,
				      PAGE, FILE_SEED, off / 8);
	}
	check_signals(&rt_pending);
	check_threads(thread_ticks, sizeof(thread_ticks));
	if (workers[0].vec.use_ymm && opt.mode != SLEEP_READ &&
	    workers[0].vec_rounds == 0)
		add_failure("the register loop never ran");
	/* opendir() may have grown the brk heap: take the new end as normal. */
	brk_end = sbrk(0);

	if (fail_reasons[0])
		say("FAIL counter %s", fail_reasons);
	else
		say("PASS counter pid=%d tick=%lu heap_sum=0x%lx anon_sum=0x%lx file_sum=0x%lx usr1=%d rt_pending=%d vec_rounds=%lu thread_ticks=%s",
		    getpid(), tick, checksum(heap, heap_bytes),
		    checksum(anon, anon_bytes / 2), checksum(filemap, file_bytes),
		    (int)usr1_count, rt_pending, workers[0].vec_rounds,
		    thread_ticks[0] ? thread_ticks : "-");
}

/* ---- stdin commands ----------------------------------------------------- */

static void run_command(const char *line)
{
	if (opt.mode == SLEEP_READ)
		say("GOT %s", line);
	if (!strcmp(line, "check")) {
		do_check();
	} else if (!strcmp(line, "quit")) {
		say("BYE");
		exit(0);
	}
}

/* Read what stdin has (blocking or not) and run each complete line. */
static void read_stdin(int blocking)
{
	ssize_t n;
	char *nl;

	if (!stdin_open)
		return;
	if (!blocking) {
		struct pollfd p = { 0, POLLIN, 0 };

		if (poll(&p, 1, 0) <= 0)
			return;
	}
	n = crimg_checked_read(0, line_buf + line_len,
			       sizeof(line_buf) - 1 - line_len,
			       &check_requested);
	if (n < 0)
		return; /* EINTR: the caller looks at check_requested */
	if (n == 0) {
		stdin_open = 0;
		return;
	}
	line_len += (size_t)n;
	line_buf[line_len] = 0;
	while ((nl = strchr(line_buf, '\n'))) {
		*nl = 0;
		run_command(line_buf);
		line_len -= (size_t)(nl + 1 - line_buf);
		memmove(line_buf, nl + 1, line_len + 1);
	}
	if (line_len == sizeof(line_buf) - 1)
		line_len = 0; /* an over-long line is dropped */
}

/* ---- main --------------------------------------------------------------- */

static void parse_args(int argc, char **argv)
{
	opt.tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--interval-ms"))
			opt.interval_ms = parse_long(a, v), i++;
		else if (!strcmp(a, "--heap-mb"))
			opt.heap_mb = parse_long(a, v), i++;
		else if (!strcmp(a, "--anon-mb"))
			opt.anon_mb = parse_long(a, v), i++;
		else if (!strcmp(a, "--file-pages"))
			opt.file_pages = parse_long(a, v), i++;
		else if (!strcmp(a, "--threads"))
			opt.threads = (int)parse_long(a, v), i++;
		else if (!strcmp(a, "--sleep-ms"))
			opt.sleep_ms = parse_long(a, v), i++;
		else if (!strcmp(a, "--tmpdir") && v)
			opt.tmpdir = v, i++;
		else if (!strcmp(a, "--no-vector"))
			opt.vector = 0;
		else if (!strcmp(a, "--sleep-in") && v) {
			i++;
			if (!strcmp(v, "nanosleep"))
				opt.mode = SLEEP_NANOSLEEP;
			else if (!strcmp(v, "busy"))
				opt.mode = SLEEP_BUSY;
			else if (!strcmp(v, "read"))
				opt.mode = SLEEP_READ;
			else {
				say("ERROR --sleep-in: unknown mode '%s'", v);
				exit(2);
			}
		} else {
			say("ERROR unknown argument '%s'", a);
			exit(2);
		}
	}
	if (opt.threads > MAX_THREADS) {
		say("ERROR --threads: at most %d", MAX_THREADS);
		exit(2);
	}
	if (opt.interval_ms == 0)
		opt.interval_ms = 1;
}

/* The one long sleep of --sleep-ms: resumed after every EINTR (a check or a
 * restore that could not restart the call) until the deadline. */
static void long_sleep(void)
{
	uint64_t start = now_ns(), deadline = start + (uint64_t)opt.sleep_ms * 1000000ULL;
	int interrupted = 0;

	for (;;) {
		uint64_t now = now_ns();

		if (now >= deadline)
			break;
		if (vec_sleep(&workers[0], deadline - now) == -EINTR)
			interrupted++;
		if (check_requested)
			do_check();
	}
	say("WOKE slept_ms=%lu interrupted=%d", (unsigned long)((now_ns() - start) / 1000000ULL),
	    interrupted);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	setup_signals();
	setup_memory();

	workers[0].index = 0;
	workers[0].tid = getpid();
	tls_value = TLS_MAGIC;
	vec_setup(&workers[0]);
	for (int i = 1; i <= opt.threads; i++) {
		workers[i].index = i;
		vec_setup(&workers[i]);
		if (pthread_create(&workers[i].thread, NULL, worker_main,
				   &workers[i]))
			die("pthread_create");
	}
	brk_end = sbrk(0);

	say("KNOWNSTR addr=%p value=%s", (void *)crimg_known_string,
	    crimg_known_string);
	say("FUNC name=crimg_workload_spin addr=%p", (void *)crimg_workload_spin);
	say("READY pid=%d mode=%s threads=%d interval_ms=%ld vec=%s heap=%p heap_bytes=%zu heap_sum=0x%lx brk=%p anon=%p anon_bytes=%zu anon_sum=0x%lx file=%s filemap=%p file_bytes=%zu file_sum=0x%lx altstack=%p altstack_size=%lu knownstr=%p spin=%p",
	    getpid(), mode_names[opt.mode], opt.threads, opt.interval_ms,
	    workers[0].vec.use_zmm ? "zmm" : workers[0].vec.use_ymm ? "ymm" : "none",
	    (void *)heap, heap_bytes, heap_sum, brk_end, (void *)anon,
	    anon_bytes, anon_sum, file_path[0] ? file_path : "-",
	    (void *)filemap, file_bytes, file_sum, (void *)altstack,
	    ALTSTACK_SIZE, (void *)crimg_known_string,
	    (void *)crimg_workload_spin);

	if (opt.sleep_ms)
		long_sleep();

	for (;;) {
		if (opt.mode == SLEEP_READ) {
			if (stdin_open)
				read_stdin(1);
			else
				wait_for_check(&check_requested);
		} else {
			wait_one_interval(&workers[0]);
			tick++;
			*tick_shadow = tick;
			say("TICK %lu", tick);
			read_stdin(0);
		}
		if (check_requested)
			do_check();
	}
}
