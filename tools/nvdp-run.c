// SPDX-License-Identifier: Apache-2.0
/*
 * nvdp-run: starts NeuVector's enforcer DP (or any program) in a private
 * mount namespace with its own tmpfs on /tmp and /var/log, inside a given
 * network namespace, for the tests, the demo and the benchmarks
 * (docs/neuvector-dp.md).
 *
 * The DP binds a fixed control socket path (/tmp/dp_listen.sock), sends its
 * logs to /tmp/ctrl_listen.sock and may write /var/log/dp.pol: with a tmpfs
 * of its own on each, two DPs never collide and the host's /tmp and
 * /var/log are never touched. A client reaches that /tmp through
 * /proc/<pid>/root/tmp (same pid namespace, so the same path works from the
 * DP's side for the replies).
 *
 *   nvdp-run --netns /run/netns/NAME -- /path/to/dp -s 1 -n 1
 *
 * Steps, then fexecve() (the pid stays the same, so the caller kills the DP
 * by the pid it spawned): PR_SET_PDEATHSIG SIGKILL (the DP dies with whoever
 * started it, also on SIGKILL of a test runner), the program opened (O_PATH),
 * unshare(CLONE_NEWNS), "/" made private recursively (nothing mounted here
 * leaks out), tmpfs on /tmp and /var/log (mode 1777 / 0755, /var/log/agent
 * created), setns() into the network namespace, then the program executed
 * from the fd opened before the mounts: a program under /tmp or /var/log (a
 * clone of the repository in /tmp) is hidden by the tmpfs by then. Any
 * failure: one line on stderr, exit 1 (2: usage).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static void die(const char *what)
{
	fprintf(stderr, "nvdp-run: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fputs("usage: nvdp-run --netns PATH -- PROGRAM [ARG]...\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *netns = NULL;
	int i, fd, prog;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--netns") && i + 1 < argc) {
			netns = argv[++i];
		} else if (!strcmp(argv[i], "--")) {
			i++;
			break;
		} else {
			usage();
		}
	}
	if (!netns || i >= argc || argv[i][0] != '/')
		usage();

	if (prctl(PR_SET_PDEATHSIG, SIGKILL))
		die("prctl(PR_SET_PDEATHSIG)");
	if (getppid() == 1) /* the parent is gone already */
		return 1;
	fd = open(netns, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(netns);
	/* Before the tmpfs mounts, which may hide it. An ELF binary: with O_CLOEXEC a script could not run. */
	prog = open(argv[i], O_PATH | O_CLOEXEC);
	if (prog < 0)
		die(argv[i]);
	if (unshare(CLONE_NEWNS))
		die("unshare(CLONE_NEWNS)");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die("make / private");
	if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m"))
		die("mount a tmpfs on /tmp");
	if (mount("tmpfs", "/var/log", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m"))
		die("mount a tmpfs on /var/log");
	if (mkdir("/var/log/agent", 0755) && errno != EEXIST)
		die("mkdir /var/log/agent");
	if (setns(fd, CLONE_NEWNET))
		die("setns into the network namespace");
	close(fd);
	fexecve(prog, &argv[i], environ);
	die(argv[i]);
	return 1;
}
