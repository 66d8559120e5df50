// SPDX-License-Identifier: Apache-2.0
/*
 * udp-burst: the first-packet workload of the container test image
 * (test/oci-hook.test.ts, docs/containers.md). As a container's process its
 * first action is to send: it reads the clock, opens a UDP socket and sends
 * COUNT datagrams to HOST:PORT, one every INTERVAL_US microseconds, then
 * exits 0. Linked statically (the image holds busybox and our tools only).
 *
 * Each datagram: "NBUB", the sequence number (from 1), the time of the first
 * send and of this one (CLOCK_REALTIME, ns; a container shares the host's
 * clock), big-endian: 4 + 4 + 8 + 8 bytes. The receiver can tell which
 * datagrams got through and when they were sent.
 *
 * Usage: udp-burst HOST PORT COUNT INTERVAL_US
 */
#include <arpa/inet.h>
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	uint64_t t0 = now_ns();
	struct sockaddr_in a = { .sin_family = AF_INET };
	long count, interval, port;
	unsigned char buf[24];
	int s;

	if (argc != 5 || inet_pton(AF_INET, argv[1], &a.sin_addr) != 1 || (port = strtol(argv[2], NULL, 10)) <= 0 || port > 65535 ||
	    (count = strtol(argv[3], NULL, 10)) <= 0 || (interval = strtol(argv[4], NULL, 10)) < 0) {
		fprintf(stderr, "usage: udp-burst HOST PORT COUNT INTERVAL_US\n");
		return 2;
	}
	a.sin_port = htons((uint16_t)port);
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		perror("udp-burst: socket");
		return 1;
	}
	for (long i = 1; i <= count; i++) {
		uint32_t magic = htonl(0x4e425542), seq = htonl((uint32_t)i);
		uint64_t first = htobe64(t0), t = htobe64(i == 1 ? t0 : now_ns());

		memcpy(buf, &magic, 4);
		memcpy(buf + 4, &seq, 4);
		memcpy(buf + 8, &first, 8);
		memcpy(buf + 16, &t, 8);
		/* ENETUNREACH and the like are the datapath's business: keep sending. */
		(void)sendto(s, buf, sizeof(buf), 0, (struct sockaddr *)&a, sizeof(a));
		if (interval && i < count) {
			struct timespec ts = { .tv_sec = interval / 1000000, .tv_nsec = (interval % 1000000) * 1000 };

			nanosleep(&ts, NULL);
		}
	}
	return 0;
}
