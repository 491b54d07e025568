/*
 * fill_bench: how fast can a restore put N MiB of an image file (in the
 * page cache) into fresh private anonymous memory? The loader's eager fill
 * picks its method from these figures (see binfmt-loader/src/plan/vmas.rs).
 *
 *   cc -O2 -o /tmp/fill_bench tools/fill-bench/fill_bench.c
 *   /tmp/fill_bench FILE [MiB] [rounds] [METHOD...]
 *       (FILE: at least MiB long, e.g. head -c 1G /dev/urandom > FILE;
 *       every method unless some are named; the rounds of the methods
 *       alternate, so a busy machine slows them alike)
 *
 * Methods, each into a fresh mapping of the same size, best and median of
 * the rounds, in CPU seconds of the filling thread:
 *   pread            one pread per 64 MiB straight into the fresh area
 *                    (the kernel faults and zeroes every page inside pread)
 *   pread-2m         the same in 2 MiB preads
 *   populate+pread   MADV_POPULATE_WRITE of the area first, then pread
 *   thp+pread        MADV_HUGEPAGE first, then pread (2 MiB zeroing faults)
 *   uffd-copy-buf    userfaultfd: pread 2 MiB into a buffer, UFFDIO_COPY it
 *                    (no zeroing, two copies)
 *   uffd-copy-map    userfaultfd: UFFDIO_COPY from a read-only MAP_POPULATE
 *                    mapping of the file (no zeroing, one copy; the
 *                    mapping's and unmapping's time counted)
 *   uffd-copy-lazymap  the same from a mapping without MAP_POPULATE (the
 *                    copy faults the source in)
 *   memcpy-map       memcpy from that mapping into the fresh area (faults
 *                    and zeroing as pread, for comparison)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static size_t size;
static int fd;

/* The thread's CPU time (user and kernel): on a busy machine the wall
 * time mostly says how long others ran; what a method costs is its CPU. */
static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static char *fresh(void)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void pread_all(char *dst, size_t len, off_t off, size_t unit)
{
	size_t done = 0;

	while (done < len) {
		size_t n = len - done < unit ? len - done : unit;
		ssize_t r = pread(fd, dst + done, n, off + done);

		if (r <= 0) {
			perror("pread");
			exit(1);
		}
		done += r;
	}
}

static int uffd_for(char *area)
{
	int u = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { (unsigned long)area, size },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (u < 0 || ioctl(u, UFFDIO_API, &api) ||
	    ioctl(u, UFFDIO_REGISTER, &reg)) {
		perror("userfaultfd");
		exit(1);
	}
	return u;
}

static void uffd_copy(int u, char *dst, const char *src, size_t len)
{
	struct uffdio_copy c = {
		.dst = (unsigned long)dst,
		.src = (unsigned long)src,
		.len = len,
	};

	if (ioctl(u, UFFDIO_COPY, &c) || c.copy != (long)len) {
		perror("UFFDIO_COPY");
		exit(1);
	}
}

#define UNIT (2UL << 20)

static double run(const char *m)
{
	char *a = fresh(), *buf = NULL, *map = NULL;
	double t0, t;
	int u = -1;

	if (!strcmp(m, "uffd-copy-buf"))
		buf = aligned_alloc(UNIT, UNIT);
	if (!strcmp(m, "memcpy-map"))
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE,
			   fd, 0);
	t0 = now();
	if (!strcmp(m, "uffd-copy-map") || !strcmp(m, "uffd-copy-lazymap"))
		map = mmap(NULL, size, PROT_READ,
			   MAP_PRIVATE | (m[10] == 'm' ? MAP_POPULATE : 0), fd,
			   0);
	if (!strcmp(m, "pread")) {
		pread_all(a, size, 0, 64UL << 20);
	} else if (!strcmp(m, "pread-2m")) {
		pread_all(a, size, 0, UNIT);
	} else if (!strcmp(m, "populate+pread")) {
		madvise(a, size, MADV_POPULATE_WRITE);
		pread_all(a, size, 0, 64UL << 20);
	} else if (!strcmp(m, "thp+pread")) {
		madvise(a, size, MADV_HUGEPAGE);
		pread_all(a, size, 0, 64UL << 20);
	} else if (!strcmp(m, "uffd-copy-buf")) {
		u = uffd_for(a);
		for (size_t o = 0; o < size; o += UNIT) {
			pread_all(buf, UNIT, o, UNIT);
			uffd_copy(u, a + o, buf, UNIT);
		}
	} else if (!strcmp(m, "uffd-copy-map") ||
		   !strcmp(m, "uffd-copy-lazymap")) {
		u = uffd_for(a);
		for (size_t o = 0; o < size; o += UNIT)
			uffd_copy(u, a + o, map + o, UNIT);
	} else if (!strcmp(m, "memcpy-map")) {
		memcpy(a, map, size);
	}
	if (u >= 0)
		close(u);
	/* The source mapping's teardown is part of the method's cost (the
	 * loader unmaps it before the task runs). */
	if (map && strcmp(m, "memcpy-map")) {
		munmap(map, size);
		map = NULL;
	}
	t = now() - t0;
	if (memcmp(a + size - 4096, a + size - 4096, 1))
		abort();
	munmap(a, size);
	if (map)
		munmap(map, size);
	free(buf);
	return t;
}

static int cmp(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return a < b ? -1 : a > b;
}

int main(int argc, char **argv)
{
	static const char *methods[] = {
		"pread",	 "pread-2m",	  "populate+pread", "thp+pread",
		"uffd-copy-buf", "uffd-copy-map", "uffd-copy-lazymap", "memcpy-map",
	};
	long mb = argc > 2 ? atol(argv[2]) : 1024;
	int rounds = argc > 3 ? atoi(argv[3]) : 5;

	if (argc < 2) {
		fprintf(stderr, "usage: fill_bench FILE [MiB] [rounds]\n");
		return 2;
	}
	size = (size_t)mb << 20;
	fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	{
		char *warm = malloc(UNIT);

		for (size_t o = 0; o < size; o += UNIT)
			pread_all(warm, UNIT, o, UNIT);
		free(warm);
	}
	{
		size_t n = 0;
		const char *pick[16];
		double t[16][64];

		for (size_t k = 0; k < sizeof(methods) / sizeof(*methods); k++)
			for (int a = 4; a <= argc; a++)
				if (argc == 4 || (a < argc && !strcmp(argv[a], methods[k]))) {
					pick[n++] = methods[k];
					break;
				}
		if (rounds > 64)
			rounds = 64;
		for (int r = 0; r < rounds; r++)
			for (size_t k = 0; k < n; k++)
				t[k][r] = run(pick[k]);
		for (size_t k = 0; k < n; k++) {
			qsort(t[k], rounds, sizeof(double), cmp);
			printf("%-18s %ld MiB: min %.3f s  median %.3f s CPU  (%.2f GB/s best)\n",
			       pick[k], mb, t[k][0], t[k][rounds / 2],
			       size / t[k][0] / 1e9);
		}
	}
	return 0;
}
