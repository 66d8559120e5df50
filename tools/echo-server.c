// SPDX-License-Identifier: Apache-2.0
/*
 * echo-server: the workload of the container test image (test/containers.test.ts,
 * docs/containers.md). Linked statically, it runs in an image that holds
 * nothing but busybox and itself.
 *
 * TCP and UDP echo on one port (default 8080), IPv4 and IPv6 (one dual-stack
 * socket each): a TCP connection gets back every byte it sends (one child
 * process per connection); a UDP datagram goes back to its sender as is.
 *
 * Usage: echo-server [PORT]
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int sock(int type, int port)
{
	int s = socket(AF_INET6, type, 0);
	int zero = 0, one = 1;
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_ANY_INIT };

	if (s < 0 || setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) ||
	    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) || bind(s, (struct sockaddr *)&a, sizeof(a)) ||
	    (type == SOCK_STREAM && listen(s, 64))) {
		perror("echo-server: socket");
		exit(1);
	}
	return s;
}

static void echo_tcp(int c)
{
	char buf[65536];
	ssize_t n;

	while ((n = read(c, buf, sizeof(buf))) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(c, buf + off, n - off);
			if (w < 0)
				_exit(0);
			off += w;
		}
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 8080;
	struct pollfd p[2];
	char buf[65536];

	if (port <= 0 || port > 65535) {
		fprintf(stderr, "echo-server: bad port %s\n", argv[1]);
		return 2;
	}
	signal(SIGCHLD, SIG_IGN); /* no zombies */
	p[0] = (struct pollfd){ .fd = sock(SOCK_STREAM, port), .events = POLLIN };
	p[1] = (struct pollfd){ .fd = sock(SOCK_DGRAM, port), .events = POLLIN };
	fprintf(stderr, "echo-server: tcp and udp echo on port %d\n", port);
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("echo-server: poll");
			return 1;
		}
		if (p[0].revents & POLLIN) {
			int c = accept(p[0].fd, NULL, NULL);
			if (c >= 0) {
				if (fork() == 0) {
					close(p[0].fd);
					close(p[1].fd);
					echo_tcp(c);
				}
				close(c);
			}
		}
		if (p[1].revents & POLLIN) {
			struct sockaddr_in6 from;
			socklen_t fl = sizeof(from);
			ssize_t n = recvfrom(p[1].fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
			if (n >= 0)
				sendto(p[1].fd, buf, n, 0, (struct sockaddr *)&from, fl);
		}
	}
}
