// SPDX-License-Identifier: Apache-2.0
/*
 * flow-offload: how a DP written in C hands a decided flow back to the
 * kernel (docs/flow-offload.md). Only libbpf: bpf_obj_get() on the pinned
 * map, bpf_map_update_elem() / bpf_map_delete_elem() on it, and before the
 * first entry the NEUV_CFG_FLOWS bit in neuv_config (the programs look flows
 * up only once it is set). The layouts come from bpf/neuv.h, the header the
 * BPF programs are built with.
 *
 *   flow-offload [--pin-root DIR] [--deny | --revoke] [--timeout-ms MS] [--idle-ms MS]
 *                ID tcp|udp SRC_ADDR:PORT DST_ADDR:PORT
 *
 * e.g. flow-offload 4660 tcp 10.0.0.1:40000 10.0.0.2:80 (either direction
 * names the same entry). Build: cc -I bpf examples/flow-offload.c -lbpf
 * (make builds it as build/flow-offload).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "neuv.h"

/*
 * Takes neuv_config's lock: the entry is written whole by several writers
 * (the loader, the tracer, whoever offloads flows), each changing its own
 * field with a read-modify-write, so each holds an flock on
 * <NEUV_BPF_LOCK_DIR or /run/neuv-bpf>/<pin root with / as _>.config.lock
 * from the lookup to the update. Returns the locked fd, or -1.
 */
static int lock_config(const char *pin_root)
{
	const char *dir = getenv("NEUV_BPF_LOCK_DIR");
	char path[4096];
	int n, i, fd;

	if (!dir || !*dir)
		dir = "/run/neuv-bpf";
	mkdir(dir, 0700); /* EEXIST is fine; open() reports the rest */
	n = snprintf(path, sizeof(path), "%s/", dir);
	if (n < 0 || (size_t)n + strlen(pin_root) + sizeof(".config.lock") > sizeof(path)) {
		fprintf(stderr, "flow-offload: lock path for %s too long\n", pin_root);
		return -1;
	}
	for (i = 0; pin_root[i]; i++)
		path[n + i] = pin_root[i] == '/' ? '_' : pin_root[i];
	strcpy(path + n + i, ".config.lock");
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX)) {
		fprintf(stderr, "flow-offload: lock %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/*
 * Sets NEUV_CFG_FLOWS in neuv_config.flags if it is clear: until then the
 * vin/vex programs do not look neuv_flows up (a node that never offloads pays
 * nothing for it). Set it before writing an entry; never clear it. Once set
 * it stays set, so only setting it takes the lock.
 */
static int enable_flow_lookups(const char *pin_root)
{
	struct neuv_config c;
	char path[4096];
	uint32_t zero = 0;
	int fd, lock = -1, err;

	snprintf(path, sizeof(path), "%s/neuv_config", pin_root);
	fd = bpf_obj_get(path);
	if (fd < 0) {
		fprintf(stderr, "flow-offload: open %s: %s\n", path, strerror(errno));
		return -1;
	}
	err = bpf_map_lookup_elem(fd, &zero, &c);
	if (!err && !(c.flags & NEUV_CFG_FLOWS)) {
		lock = lock_config(pin_root);
		if (lock < 0) {
			close(fd);
			return -1;
		}
		err = bpf_map_lookup_elem(fd, &zero, &c); /* again, under the lock */
		if (!err && !(c.flags & NEUV_CFG_FLOWS)) {
			c.flags |= NEUV_CFG_FLOWS;
			err = bpf_map_update_elem(fd, &zero, &c, BPF_ANY);
		}
	}
	if (err)
		fprintf(stderr, "flow-offload: neuv_config: %s\n", strerror(errno));
	if (lock >= 0)
		close(lock); /* releases the flock */
	close(fd);
	return err ? -1 : 0;
}

/*
 * The key of a flow: pair id (host order), IP protocol, and the two
 * endpoints with A the lower (address, port) compared as big-endian numbers,
 * so that both directions give the same key. Addresses and ports stay in
 * network order, as they are in the packet.
 */
static struct neuv_flow_key flow_key(uint16_t id, uint8_t proto, struct in_addr sa, uint16_t sport_n,
				     struct in_addr da, uint16_t dport_n)
{
	struct neuv_flow_key k;
	int src_is_a = ntohl(sa.s_addr) < ntohl(da.s_addr) ||
		       (sa.s_addr == da.s_addr && ntohs(sport_n) <= ntohs(dport_n));

	memset(&k, 0, sizeof(k)); /* the padding is part of the key: zero it */
	k.id = id;
	k.proto = proto;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		sport_n = dport_n = 0; /* other protocols have no ports in the key */
	k.addr_a = src_is_a ? sa.s_addr : da.s_addr;
	k.port_a = src_is_a ? sport_n : dport_n;
	k.addr_b = src_is_a ? da.s_addr : sa.s_addr;
	k.port_b = src_is_a ? dport_n : sport_n;
	return k;
}

/* CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns(), which the deadline is compared with. */
static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int endpoint(const char *s, struct in_addr *a, uint16_t *port_n)
{
	char buf[64];
	char *colon;
	long p;

	snprintf(buf, sizeof(buf), "%s", s);
	colon = strrchr(buf, ':');
	if (!colon)
		return -1;
	*colon = 0;
	p = strtol(colon + 1, NULL, 10);
	if (p < 0 || p > 65535 || inet_pton(AF_INET, buf, a) != 1)
		return -1;
	*port_n = htons((uint16_t)p);
	return 0;
}

static void usage(void)
{
	fputs("usage: flow-offload [--pin-root DIR] [--deny | --revoke] [--timeout-ms MS] [--idle-ms MS]\n"
	      "                    ID tcp|udp SRC_ADDR:PORT DST_ADDR:PORT\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *pin_root = "/sys/fs/bpf/neuv";
	char path[4096];
	struct neuv_flow_key k;
	struct neuv_flow v;
	struct in_addr sa, da;
	uint16_t sp, dp;
	long timeout_ms = 0, idle_ms = 0, id;
	int deny = 0, revoke = 0, i, fd, err;
	uint8_t proto;

	for (i = 1; i < argc && !strncmp(argv[i], "--", 2); i++) {
		if (!strcmp(argv[i], "--deny"))
			deny = 1;
		else if (!strcmp(argv[i], "--revoke"))
			revoke = 1;
		else if (!strcmp(argv[i], "--pin-root") && i + 1 < argc)
			pin_root = argv[++i];
		else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
			timeout_ms = strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc)
			idle_ms = strtol(argv[++i], NULL, 10);
		else
			usage();
	}
	if (argc - i != 4)
		usage();
	id = strtol(argv[i], NULL, 10);
	proto = !strcmp(argv[i + 1], "tcp") ? IPPROTO_TCP : !strcmp(argv[i + 1], "udp") ? IPPROTO_UDP : 0;
	if (id < 0 || id > 65535 || !proto || endpoint(argv[i + 2], &sa, &sp) || endpoint(argv[i + 3], &da, &dp) ||
	    timeout_ms < 0 || idle_ms < 0)
		usage();

	snprintf(path, sizeof(path), "%s/neuv_flows", pin_root);
	fd = bpf_obj_get(path); /* the pinned map, by path; needs CAP_BPF (or root) */
	if (fd < 0) {
		fprintf(stderr, "flow-offload: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	k = flow_key((uint16_t)id, proto, sa, sp, da, dp);
	if (!revoke && enable_flow_lookups(pin_root)) {
		close(fd);
		return 1;
	}
	if (revoke) {
		err = bpf_map_delete_elem(fd, &k); /* its frames go to the DP again */
	} else {
		memset(&v, 0, sizeof(v));
		v.verdict = deny ? NEUV_FLOW_DENY : NEUV_FLOW_ALLOW;
		v.deadline_ns = timeout_ms ? now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
		v.idle_ns = (uint64_t)idle_ms * 1000000ull; /* counted from the first frame: last_ns stays 0 */
		err = bpf_map_update_elem(fd, &k, &v, BPF_ANY);
	}
	if (err) {
		fprintf(stderr, "flow-offload: %s: %s\n", revoke ? "delete" : "update", strerror(errno));
		close(fd);
		return 1;
	}
	printf("%s pair %ld %s %s -> %s\n", revoke ? "revoked" : deny ? "denied" : "offloaded", id, argv[i + 1],
	       argv[i + 2], argv[i + 3]);
	close(fd);
	return 0;
}
