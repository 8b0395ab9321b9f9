/*
 * allocbench - allocation-heavy micro-benchmark for mcr's malloc interposition.
 *
 * Builds and tears down chained hash tables of heap strings: per round, N keys
 * of varied length are strdup'ed into nodes (malloc), a quarter of the values
 * grow by realloc, every key is looked up, half are deleted and reinserted,
 * then everything is freed. Bounded: ROUNDS rounds. Prints the CPU time and
 * the wall time in ms and a checksum (so the work cannot be optimized away).
 * Before the timed part it blocks once in poll() for 10 ms, as a server blocks
 * in its event loop: under mcr that is a quiescent point, so startup completes
 * there and the rounds run as post-startup work, like a server's requests.
 *
 *   allocbench [ROUNDS] [N]      defaults 40, 20000
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <poll.h>

struct node {
	char *key;
	char *val;
	size_t vlen;
	struct node *next;
};

static unsigned hash(const char *s)
{
	unsigned h = 2166136261u;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
}

static double ms(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 40;
	int n = argc > 2 ? atoi(argv[2]) : 20000;
	unsigned nb = 1;
	while (nb < (unsigned)n / 2)
		nb <<= 1;
	unsigned long sum = 0, rng = 88172645463325252ul;
	poll(NULL, 0, 10);
	double c0 = ms(CLOCK_PROCESS_CPUTIME_ID), w0 = ms(CLOCK_MONOTONIC);
	char buf[512];

	for (int r = 0; r < rounds && r < 100000; r++) {
		struct node **tab = calloc(nb, sizeof(*tab));
		if (!tab)
			return 1;
		for (int i = 0; i < n; i++) {
			rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
			int klen = 4 + (int)(rng % 40), vlen = 8 + (int)((rng >> 8) % 200);
			snprintf(buf, sizeof(buf), "k%d-%0*d", i, klen, r);
			struct node *e = malloc(sizeof(*e));
			if (!e || !(e->key = strdup(buf)) || !(e->val = malloc(vlen)))
				return 1;
			memset(e->val, 'a' + i % 26, vlen - 1);
			e->val[vlen - 1] = 0;
			e->vlen = vlen;
			unsigned b = hash(e->key) & (nb - 1);
			e->next = tab[b];
			tab[b] = e;
		}
		/* a quarter of the values grow (realloc), every key is read */
		for (unsigned b = 0; b < nb; b++)
			for (struct node *e = tab[b]; e; e = e->next) {
				if ((hash(e->key) & 3) == 0) {
					size_t nl = e->vlen * 2 + 16;
					char *v = realloc(e->val, nl);
					if (!v)
						return 1;
					memset(v + e->vlen - 1, 'z', nl - e->vlen);
					v[nl - 1] = 0;
					e->val = v;
					e->vlen = nl;
				}
				sum += strlen(e->val) + (unsigned char)e->key[1];
			}
		/* delete every other node of each chain and reinsert a copy */
		for (unsigned b = 0; b < nb; b++) {
			struct node **pp = &tab[b];
			int k = 0;
			while (*pp) {
				struct node *e = *pp;
				if (k++ & 1) {
					struct node *c = malloc(sizeof(*c));
					if (!c || !(c->key = strdup(e->key)) || !(c->val = strdup(e->val)))
						return 1;
					c->vlen = e->vlen;
					c->next = e->next;
					*pp = c;
					free(e->key);
					free(e->val);
					free(e);
					e = c;
				}
				pp = &e->next;
			}
		}
		for (unsigned b = 0; b < nb; b++) {
			struct node *e = tab[b];
			while (e) {
				struct node *nx = e->next;
				sum += e->vlen;
				free(e->key);
				free(e->val);
				free(e);
				e = nx;
			}
		}
		free(tab);
	}
	printf("%.3f %.3f %lu\n", ms(CLOCK_PROCESS_CPUTIME_ID) - c0, ms(CLOCK_MONOTONIC) - w0, sum);
	return 0;
}
