// SPDX-License-Identifier: Apache-2.0
/*
 * stub-dp: a stand-in for the enforcer's userspace datapath (DP), for the
 * tests and `neuv-bpf demo`.
 *
 * It reads every frame arriving on the DP port (vth-neuv) with an AF_PACKET
 * socket, drops TCP/UDP frames whose destination port is on its --drop-port
 * list, and writes every other frame of a pair back into the same port
 * unchanged. Frames carrying no UCMAC (4e:65:75:56:xx:xx as destination or
 * source) are not the datapath's: they are counted as ignored and never sent
 * back.
 *
 * It writes back in every mode. In TAP the datapath must drop what it
 * injects; the counters of the BPF side (drop_inject) show it did.
 *
 * Counters, per UCMAC and per direction (to_wl: the UCMAC is the destination;
 * from_wl: it is the source), with a breakdown by kind ("udp/8080",
 * "tcp6/443", "icmp", "icmp6", "other"; the port is the lower of the two, so a
 * request and its reply land on the same key), are written as JSON:
 *   - to --out FILE (atomically: a temporary file renamed over it) at start,
 *     every --interval-ms when something changed, and at once on SIGUSR1
 *     (each write bumps "seq", so a reader can wait for a fresh one);
 *   - to stdout on SIGTERM/SIGINT, then it exits 0.
 *
 * The socket uses PACKET_VNET_HDR: a frame that reaches vth-neuv with its
 * checksum still to be computed (CHECKSUM_PARTIAL, e.g. from a host-side veth
 * with tx offload) or as a GSO super-frame is read with its virtio-net header
 * and written back with it, so the kernel still completes the checksum and
 * the segmentation. Frames it sent itself (PACKET_OUTGOING) are ignored, both
 * by PACKET_IGNORE_OUTGOING and by checking sll_pkttype. A frame larger than
 * its 64 KiB buffer (a BIG TCP GSO frame) is counted as truncated, not sent.
 *
 * Flow offload (--offload-after N, docs/flow-offload.md): the stub then also
 * plays a DP that hands decided flows back to the kernel. It counts the
 * frames of each IPv4 TCP/UDP flow (pair id + 5-tuple, both directions, the
 * key of struct neuv_flow_key) and, at the Nth frame of an allowed one,
 * writes an ALLOW entry into the pinned map <pin root>/neuv_flows with the
 * bpf syscall (BPF_OBJ_GET, BPF_MAP_UPDATE_ELEM; no libbpf), so its later
 * frames bypass the DP. A frame of a blocked port installs a DENY entry at
 * once. A TCP FIN or RST marks the flow closing: never offloaded again (the
 * datapath retires an ALLOW entry on FIN/RST and sends those frames here).
 * Frames of an offloaded flow that still arrive (in flight when the entry
 * was written, or after it expired or was evicted) count again from zero,
 * and N more re-offload it. --offload-timeout-ms / --offload-idle-ms set the
 * entries' deadline (from now) and idle timeout. The JSON gains "offloaded",
 * "denied", "offload_errors", and per flow table use "flows". Start it with
 * `nsenter --net=/run/netns/NAME`, not `ip netns exec NAME`: the latter
 * mounts a fresh /sys, which hides the bpffs at /sys/fs/bpf.
 *
 * Usage: stub-dp [--ifname vth-neuv] [--drop-port N]... [--out FILE]
 *                [--interval-ms 100] [--verbose]
 *                [--offload-after N [--pin-root /sys/fs/bpf/neuv]
 *                 [--offload-timeout-ms MS] [--offload-idle-ms MS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>
#include "neuv.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* linux >= 4.20 */
#endif /* PACKET_IGNORE_OUTGOING */

#define MAX_PAIRS 256
#define MAX_KINDS 32
#define MAX_DROP_PORTS 16
#define BUF_SIZE (sizeof(struct virtio_net_hdr) + 65536 + 64)
#define SOCK_BUF (16 << 20)

enum { DIR_TO_WL = 0, DIR_FROM_WL = 1, DIR_MAX };
static const char *const dir_names[DIR_MAX] = { "to_wl", "from_wl" };

struct kind_ctr {
	char name[16];
	uint64_t frames;
	uint64_t dropped;
};

struct dir_ctr {
	uint64_t frames;  /* seen */
	uint64_t bytes;
	uint64_t sent;    /* written back */
	uint64_t dropped; /* by the port rule */
	int nkinds;
	struct kind_ctr kinds[MAX_KINDS];
};

struct pair_ctr {
	int used;
	uint16_t id;
	struct dir_ctr dir[DIR_MAX];
};

static struct {
	uint64_t rx, sent, dropped, ignored, truncated, send_errors, seq;
	uint64_t offloaded, denied, offload_errors, flows;
	struct pair_ctr pairs[MAX_PAIRS];
} st;

static volatile sig_atomic_t want_exit, want_dump;
static int verbose;

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("stub-dp: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_dump = 1;
	else
		want_exit = 1;
}

/* ---------------------------------------------------------------- flow offload */

#define MAX_FLOWS 8192 /* the stub's own flow table (open addressing); full: no more offloads */

enum { FLOW_COUNTING = 0, FLOW_OFFLOADED = 1, FLOW_CLOSING = 2, FLOW_PENDING = 3 };

#define MAX_PENDING 64

struct flow {
	int used;
	struct neuv_flow_key key;
	uint32_t frames; /* since the flow started, or since it was last offloaded */
	int state;
};

static struct flow *flows;
static struct flow *pending[MAX_PENDING]; /* decided ALLOW, written once the socket queue is drained */
static int npending, pending_rounds;
static int flows_fd = -1, config_fd = -1, config_lock_fd = -1;
static long offload_after, offload_timeout_ms, offload_idle_ms;

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* Opens <pin_root>/<name> (a pinned map); dies with a clear message when it cannot. */
static int open_pinned(const char *pin_root, const char *name)
{
	char path[4096];
	union bpf_attr a;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", pin_root, name);
	memset(&a, 0, sizeof(a));
	a.pathname = (uint64_t)(unsigned long)path;
	fd = (int)sys_bpf(BPF_OBJ_GET, &a);
	if (fd < 0)
		die("open pinned map %s: %s (is the datapath loaded with this pin root? --pin-root)", path, strerror(errno));
	return fd;
}

/*
 * The flow key of an IPv4 TCP/UDP frame of pair id, normalised as the
 * datapath does (endpoint A = the lower (address, port) as big-endian
 * numbers); its TCP flags in *tcpflags. Returns -1 for anything else (not
 * IPv4, a fragment, not TCP/UDP, headers cut short).
 */
static int flow_key_of(const uint8_t *f, size_t len, uint16_t id, struct neuv_flow_key *k, uint8_t *tcpflags)
{
	const uint8_t *ip = f + ETH_HLEN, *l4;
	size_t ihl;
	uint32_t sa, da;
	uint16_t sp, dp;
	int proto;

	if (len < ETH_HLEN + 20 || (f[12] << 8 | f[13]) != ETH_P_IP || ip[0] >> 4 != 4)
		return -1;
	ihl = (size_t)(ip[0] & 0x0f) * 4;
	proto = ip[9];
	if (ihl < 20 || ((ip[6] << 8 | ip[7]) & 0x3fff) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return -1;
	l4 = ip + ihl;
	if (len < ETH_HLEN + ihl + (proto == IPPROTO_TCP ? 14 : 4))
		return -1;
	memcpy(&sa, ip + 12, 4); /* network order, as in the key */
	memcpy(&da, ip + 16, 4);
	memcpy(&sp, l4, 2);
	memcpy(&dp, l4 + 2, 2);
	*tcpflags = proto == IPPROTO_TCP ? l4[13] : 0;
	memset(k, 0, sizeof(*k));
	k->id = id;
	k->proto = (uint8_t)proto;
	if (ntohl(sa) < ntohl(da) || (sa == da && ntohs(sp) <= ntohs(dp))) {
		k->addr_a = sa;
		k->port_a = sp;
		k->addr_b = da;
		k->port_b = dp;
	} else {
		k->addr_a = da;
		k->port_a = dp;
		k->addr_b = sa;
		k->port_b = sp;
	}
	return 0;
}

static struct flow *flow_of(const struct neuv_flow_key *k)
{
	uint32_t h = 2166136261u; /* FNV-1a over the key */
	const uint8_t *b = (const uint8_t *)k;

	for (size_t i = 0; i < sizeof(*k); i++)
		h = (h ^ b[i]) * 16777619u;
	for (uint32_t i = 0; i < MAX_FLOWS; i++) {
		struct flow *fl = &flows[(h + i) % MAX_FLOWS];

		if (!fl->used) {
			fl->used = 1;
			fl->key = *k;
			st.flows++;
			return fl;
		}
		if (!memcmp(&fl->key, k, sizeof(*k)))
			return fl;
	}
	return NULL;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of bpf_ktime_get_ns() */
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Opens neuv_config's lock file (src/config.ts, docs/flow-offload.md):
 * <NEUV_BPF_LOCK_DIR or /run/neuv-bpf>/<pin root with / as _>.config.lock.
 */
static int open_config_lock(const char *pin_root)
{
	const char *dir = getenv("NEUV_BPF_LOCK_DIR");
	char path[4096];
	int n, i, fd;

	if (!dir || !*dir)
		dir = "/run/neuv-bpf";
	if (mkdir(dir, 0700) && errno != EEXIST)
		die("mkdir %s: %s", dir, strerror(errno));
	n = snprintf(path, sizeof(path), "%s/", dir);
	if (n < 0 || (size_t)n + strlen(pin_root) + sizeof(".config.lock") > sizeof(path))
		die("lock path for %s too long", pin_root);
	for (i = 0; pin_root[i]; i++)
		path[n + i] = pin_root[i] == '/' ? '_' : pin_root[i];
	strcpy(path + n + i, ".config.lock");
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	return fd;
}

/*
 * Sets NEUV_CFG_FLOWS in neuv_config.flags if it is clear (the programs look
 * neuv_flows up only then): before every write, as bpf/neuv.h asks of a
 * writer. The read-modify-write holds neuv_config's lock, as every writer of
 * the entry does (the tracer could otherwise put back flags without the bit).
 * Returns 0 or -errno.
 */
static int enable_flow_lookups(void)
{
	struct neuv_config c;
	uint32_t zero = 0;
	union bpf_attr a;
	int err = 0;

	memset(&a, 0, sizeof(a));
	a.map_fd = (uint32_t)config_fd;
	a.key = (uint64_t)(unsigned long)&zero;
	a.value = (uint64_t)(unsigned long)&c;
	if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a))
		return -errno;
	if (c.flags & NEUV_CFG_FLOWS)
		return 0; /* set stays set: no lock needed to see it */
	if (flock(config_lock_fd, LOCK_EX))
		return -errno;
	if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a))
		err = -errno;
	else if (!(c.flags & NEUV_CFG_FLOWS)) {
		c.flags |= NEUV_CFG_FLOWS;
		a.flags = BPF_ANY;
		if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a))
			err = -errno;
	}
	flock(config_lock_fd, LOCK_UN);
	return err;
}

/* Writes the decision for a flow into neuv_flows. Returns 0 or -errno. */
static int flow_write(const struct neuv_flow_key *k, uint8_t verdict)
{
	struct neuv_flow v;
	union bpf_attr a;
	int err = enable_flow_lookups();

	if (err)
		return err;

	memset(&v, 0, sizeof(v));
	v.verdict = verdict;
	if (offload_timeout_ms > 0)
		v.deadline_ns = mono_ns() + (uint64_t)offload_timeout_ms * 1000000ull;
	v.idle_ns = (uint64_t)offload_idle_ms * 1000000ull;
	memset(&a, 0, sizeof(a));
	a.map_fd = (uint32_t)flows_fd;
	a.key = (uint64_t)(unsigned long)k;
	a.value = (uint64_t)(unsigned long)&v;
	a.flags = BPF_ANY;
	return sys_bpf(BPF_MAP_UPDATE_ELEM, &a) ? -errno : 0;
}

/*
 * The offload policy for one frame the DP has just decided (dropped: the
 * blocked port). Called after the frame was written back (allowed) or
 * dropped, so the frames before the entry all went through the DP.
 */
static void offload_policy(const uint8_t *f, size_t len, uint16_t id, int dropped)
{
	struct neuv_flow_key k;
	struct flow *fl;
	uint8_t tcpflags;
	int err;

	if (flow_key_of(f, len, id, &k, &tcpflags))
		return;
	fl = flow_of(&k);
	if (!fl)
		return;
	if (tcpflags & 0x05) { /* FIN or RST: the flow ends, never offload it again */
		fl->state = FLOW_CLOSING;
		return;
	}
	if (fl->state == FLOW_CLOSING)
		return;
	if (dropped) {
		/* Every blocked frame that still reaches the DP (the first, one in flight, or the entry expired) writes it again. */
		err = flow_write(&k, NEUV_FLOW_DENY);
		if (err) {
			st.offload_errors++;
			fprintf(stderr, "stub-dp: write a DENY entry: %s\n", strerror(-err));
			return;
		}
		st.denied++;
		fl->state = FLOW_OFFLOADED;
		fl->frames = 0;
		return;
	}
	if (fl->state == FLOW_PENDING || ++fl->frames < (uint32_t)offload_after)
		return;
	/*
	 * Not written at once: frames of the flow may still wait in the
	 * socket queue, and the ones after the entry would overtake them. The
	 * entry is written when the queue is drained (offload_flush()).
	 */
	fl->state = FLOW_PENDING;
	if (npending < MAX_PENDING)
		pending[npending++] = fl;
	else
		fl->state = FLOW_COUNTING; /* try again at the next frame */
}

/* Writes the ALLOW entries decided while the socket queue was busy. */
static void offload_flush(void)
{
	for (int i = 0; i < npending; i++) {
		struct flow *fl = pending[i];
		int err;

		if (fl->state != FLOW_PENDING)
			continue; /* a FIN/RST came meanwhile */
		err = flow_write(&fl->key, NEUV_FLOW_ALLOW);
		if (err) {
			st.offload_errors++;
			fprintf(stderr, "stub-dp: write an ALLOW entry: %s\n", strerror(-err));
			fl->state = FLOW_COUNTING;
			fl->frames = 0;
			continue;
		}
		st.offloaded++;
		fl->state = FLOW_OFFLOADED;
		fl->frames = 0;
		if (verbose)
			fprintf(stderr, "stub-dp: offloaded a %s flow of id %u\n", fl->key.proto == IPPROTO_TCP ? "tcp" : "udp", fl->key.id);
	}
	npending = 0;
	pending_rounds = 0;
}

static struct pair_ctr *pair_of(uint16_t id)
{
	unsigned int h = id % MAX_PAIRS;

	for (unsigned int i = 0; i < MAX_PAIRS; i++) {
		struct pair_ctr *p = &st.pairs[(h + i) % MAX_PAIRS];

		if (!p->used) {
			p->used = 1;
			p->id = id;
			return p;
		}
		if (p->id == id)
			return p;
	}
	return NULL; /* table full: not counted per pair */
}

static struct kind_ctr *kind_of(struct dir_ctr *d, const char *name)
{
	for (int i = 0; i < d->nkinds; i++)
		if (!strcmp(d->kinds[i].name, name))
			return &d->kinds[i];
	if (d->nkinds == MAX_KINDS)
		return NULL;
	snprintf(d->kinds[d->nkinds].name, sizeof(d->kinds[0].name), "%s", name);
	return &d->kinds[d->nkinds++];
}

static int is_ucmac(const uint8_t *m)
{
	return m[0] == 0x4e && m[1] == 0x65 && m[2] == 0x75 && m[3] == 0x56;
}

/*
 * Classifies an Ethernet frame: writes its kind into name and returns the
 * TCP/UDP destination port, or -1 when it has none (not TCP/UDP, or a
 * non-first fragment).
 */
static int classify(const uint8_t *f, size_t len, char *name, size_t nlen)
{
	uint16_t et;
	const uint8_t *l4;
	size_t left;
	int proto, v6;

	snprintf(name, nlen, "other");
	if (len < ETH_HLEN)
		return -1;
	et = (uint16_t)(f[12] << 8 | f[13]);
	if (et == ETH_P_IP) {
		size_t ihl;

		if (len < ETH_HLEN + 20)
			return -1;
		ihl = (size_t)(f[ETH_HLEN] & 0x0f) * 4;
		proto = f[ETH_HLEN + 9];
		if (ihl < 20 || len < ETH_HLEN + ihl)
			return -1;
		/* Fragment offset != 0: no L4 header in this frame. */
		if (((f[ETH_HLEN + 6] << 8 | f[ETH_HLEN + 7]) & 0x1fff) != 0) {
			snprintf(name, nlen, "ipfrag");
			return -1;
		}
		l4 = f + ETH_HLEN + ihl;
		left = len - ETH_HLEN - ihl;
		v6 = 0;
	} else if (et == ETH_P_IPV6) {
		if (len < ETH_HLEN + 40)
			return -1;
		proto = f[ETH_HLEN + 6]; /* extension headers are not walked */
		l4 = f + ETH_HLEN + 40;
		left = len - ETH_HLEN - 40;
		v6 = 1;
	} else if (et == ETH_P_ARP) {
		snprintf(name, nlen, "arp");
		return -1;
	} else {
		return -1;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		snprintf(name, nlen, v6 ? "icmp6" : "icmp");
		return -1;
	}
	if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) && left >= 4) {
		int sport = l4[0] << 8 | l4[1];
		int dport = l4[2] << 8 | l4[3];

		snprintf(name, nlen, "%s%s/%d", proto == IPPROTO_TCP ? "tcp" : "udp",
			 v6 ? "6" : "", sport < dport ? sport : dport);
		return dport;
	}
	snprintf(name, nlen, "%s/%d", v6 ? "ip6" : "ip", proto);
	return -1;
}

static void write_json(FILE *o)
{
	int first = 1;

	fprintf(o, "{\"seq\":%llu,\"rx\":%llu,\"sent\":%llu,\"dropped\":%llu,\"ignored\":%llu,\"truncated\":%llu,\"send_errors\":%llu,"
		"\"offloaded\":%llu,\"denied\":%llu,\"offload_errors\":%llu,\"flows\":%llu,\"pairs\":{",
		(unsigned long long)st.seq, (unsigned long long)st.rx, (unsigned long long)st.sent,
		(unsigned long long)st.dropped, (unsigned long long)st.ignored,
		(unsigned long long)st.truncated, (unsigned long long)st.send_errors,
		(unsigned long long)st.offloaded, (unsigned long long)st.denied,
		(unsigned long long)st.offload_errors, (unsigned long long)st.flows);
	for (int i = 0; i < MAX_PAIRS; i++) {
		const struct pair_ctr *p = &st.pairs[i];

		if (!p->used)
			continue;
		fprintf(o, "%s\"4e:65:75:56:%02x:%02x\":{\"id\":%u", first ? "" : ",",
			p->id >> 8, p->id & 0xff, p->id);
		first = 0;
		for (int d = 0; d < DIR_MAX; d++) {
			const struct dir_ctr *c = &p->dir[d];

			fprintf(o, ",\"%s\":{\"frames\":%llu,\"bytes\":%llu,\"sent\":%llu,\"dropped\":%llu,\"kinds\":{",
				dir_names[d], (unsigned long long)c->frames, (unsigned long long)c->bytes,
				(unsigned long long)c->sent, (unsigned long long)c->dropped);
			for (int k = 0; k < c->nkinds; k++)
				fprintf(o, "%s\"%s\":{\"frames\":%llu,\"dropped\":%llu}", k ? "," : "",
					c->kinds[k].name, (unsigned long long)c->kinds[k].frames,
					(unsigned long long)c->kinds[k].dropped);
			fputs("}}", o);
		}
		fputc('}', o);
	}
	fputs("}}\n", o);
}

static void dump_file(const char *path)
{
	char tmp[4096];
	FILE *o;

	st.seq++;
	if (!path)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	o = fopen(tmp, "w");
	if (!o) {
		fprintf(stderr, "stub-dp: cannot write %s: %s\n", tmp, strerror(errno));
		return;
	}
	write_json(o);
	if (fclose(o) || rename(tmp, path))
		fprintf(stderr, "stub-dp: cannot write %s: %s\n", path, strerror(errno));
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int open_socket(const char *ifname, int *ifindex)
{
	struct sockaddr_ll sll = { 0 };
	int one = 1, size = SOCK_BUF;
	int fd;

	*ifindex = (int)if_nametoindex(ifname);
	if (!*ifindex)
		die("interface %s not found in this network namespace", ifname);
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (fd < 0)
		die("socket(AF_PACKET): %s (needs CAP_NET_RAW)", strerror(errno));
	/* Large buffers: FORCE as root, else whatever rmem_max allows. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)))
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)))
		die("PACKET_VNET_HDR: %s", strerror(errno));
	if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) && verbose)
		fprintf(stderr, "stub-dp: PACKET_IGNORE_OUTGOING unsupported (%s); filtering by pkttype\n",
			strerror(errno));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = *ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)))
		die("bind to %s: %s", ifname, strerror(errno));
	return fd;
}

static void usage(void)
{
	fputs("usage: stub-dp [--ifname vth-neuv] [--drop-port N]... [--out FILE] [--interval-ms MS] [--verbose]\n"
	      "               [--offload-after N [--pin-root DIR] [--offload-timeout-ms MS] [--offload-idle-ms MS]]\n",
	      stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *ifname = "vth-neuv", *out = NULL, *pin_root = "/sys/fs/bpf/neuv";
	int drop_ports[MAX_DROP_PORTS], ndrop = 0;
	long interval = 100;
	uint8_t *buf;
	uint64_t last = 0;
	int dirty = 0, fd, ifindex;
	struct sigaction sa = { 0 };

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--ifname") && v) {
			ifname = v;
			i++;
		} else if (!strcmp(a, "--drop-port") && v) {
			char *end;
			long p = strtol(v, &end, 10);

			if (*end || p < 1 || p > 65535 || ndrop == MAX_DROP_PORTS)
				usage();
			drop_ports[ndrop++] = (int)p;
			i++;
		} else if (!strcmp(a, "--out") && v) {
			out = v;
			i++;
		} else if (!strcmp(a, "--interval-ms") && v) {
			interval = strtol(v, NULL, 10);
			if (interval < 1)
				usage();
			i++;
		} else if (!strcmp(a, "--verbose")) {
			verbose = 1;
		} else if (!strcmp(a, "--pin-root") && v) {
			pin_root = v;
			i++;
		} else if ((!strcmp(a, "--offload-after") || !strcmp(a, "--offload-timeout-ms") ||
			    !strcmp(a, "--offload-idle-ms")) && v) {
			char *end;
			long n = strtol(v, &end, 10);

			if (*end || n < 0 || n > 1000000000L)
				usage();
			if (!strcmp(a, "--offload-after"))
				offload_after = n;
			else if (!strcmp(a, "--offload-timeout-ms"))
				offload_timeout_ms = n;
			else
				offload_idle_ms = n;
			i++;
		} else {
			usage();
		}
	}
	if (strlen(out ? out : "") > 4000)
		usage();

	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Die with whoever started us (a test or the demo killed with SIGKILL leaves no stub behind). */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() == 1)
		want_exit = 1;

	buf = malloc(BUF_SIZE);
	if (!buf)
		die("out of memory");
	if (offload_after > 0) {
		flows = calloc(MAX_FLOWS, sizeof(*flows));
		if (!flows)
			die("out of memory");
		flows_fd = open_pinned(pin_root, "neuv_flows");
		config_fd = open_pinned(pin_root, "neuv_config");
		config_lock_fd = open_config_lock(pin_root);
	}
	fd = open_socket(ifname, &ifindex);
	dump_file(out); /* seq 1: the reader knows the socket is bound */
	fprintf(stderr, "stub-dp: reading %s (ifindex %d), dropping TCP/UDP to %d port(s)\n",
		ifname, ifindex, ndrop);
	if (flows_fd >= 0)
		fprintf(stderr, "stub-dp: offloading allowed TCP/UDP flows after %ld frames, denying blocked ones, into %s/neuv_flows\n",
			offload_after, pin_root);

	while (!want_exit) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int n = poll(&pfd, 1, (int)(interval < 50 ? interval : 50));

		int drained = n <= 0;

		if (n < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		for (int burst = 0; n > 0 && burst < 256; burst++) {
			struct sockaddr_ll from;
			socklen_t flen = sizeof(from);
			/* MSG_TRUNC: the real length, so a frame larger than the buffer is seen, not cut. */
			ssize_t r = recvfrom(fd, buf, BUF_SIZE, MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &flen);
			struct virtio_net_hdr *vh = (struct virtio_net_hdr *)buf;
			const uint8_t *f = buf + sizeof(*vh);
			size_t len;
			char kind[16];
			int dport, dir, drop = 0;
			struct pair_ctr *p;
			uint16_t id;

			if (r < 0) {
				if (errno != EAGAIN && errno != EINTR)
					die("recvfrom: %s", strerror(errno));
				drained = errno == EAGAIN;
				break;
			}
			if (from.sll_pkttype == PACKET_OUTGOING)
				continue;
			if ((size_t)r < sizeof(*vh) + ETH_HLEN) {
				st.ignored++;
				continue;
			}
			if ((size_t)r > BUF_SIZE) {
				st.truncated++;
				continue;
			}
			len = (size_t)r - sizeof(*vh);
			st.rx++;
			dirty = 1;
			if (is_ucmac(f)) {
				dir = DIR_TO_WL;
				id = (uint16_t)(f[4] << 8 | f[5]);
			} else if (is_ucmac(f + 6)) {
				dir = DIR_FROM_WL;
				id = (uint16_t)(f[10] << 8 | f[11]);
			} else {
				st.ignored++;
				continue;
			}
			dport = classify(f, len, kind, sizeof(kind));
			for (int i = 0; i < ndrop; i++)
				if (dport == drop_ports[i])
					drop = 1;
			p = pair_of(id);
			if (p) {
				struct dir_ctr *c = &p->dir[dir];
				struct kind_ctr *k = kind_of(c, kind);

				c->frames++;
				c->bytes += len;
				if (k)
					k->frames++;
				if (drop) {
					c->dropped++;
					if (k)
						k->dropped++;
				}
			}
			if (verbose)
				fprintf(stderr, "stub-dp: id %u %s %s len %zu%s\n", id, dir_names[dir], kind, len,
					drop ? " DROP" : "");
			if (drop) {
				st.dropped++;
				if (flows_fd >= 0)
					offload_policy(f, len, id, 1);
				continue;
			}
			/* Back unchanged, with the same virtio-net header (checksum/GSO state). */
			vh->flags &= (uint8_t)~VIRTIO_NET_HDR_F_DATA_VALID;
			if (send(fd, buf, (size_t)r, 0) < 0) {
				st.send_errors++;
				if (verbose)
					fprintf(stderr, "stub-dp: send: %s\n", strerror(errno));
				continue;
			}
			st.sent++;
			if (p)
				p->dir[dir].sent++;
			if (flows_fd >= 0)
				offload_policy(f, len, id, 0);
		}
		/* Pending offloads: once nothing waits in the queue (or after a few busy bursts). */
		if (npending && (drained || ++pending_rounds >= 4))
			offload_flush();
		if (want_dump) {
			want_dump = 0;
			dump_file(out);
			dirty = 0;
			last = now_ms();
		} else if (dirty && now_ms() - last >= (uint64_t)interval) {
			dump_file(out);
			dirty = 0;
			last = now_ms();
		}
	}
	dump_file(out);
	write_json(stdout);
	fflush(stdout);
	close(fd);
	if (flows_fd >= 0)
		close(flows_fd);
	if (config_fd >= 0)
		close(config_fd);
	if (config_lock_fd >= 0)
		close(config_lock_fd);
	free(flows);
	free(buf);
	return 0;
}
