# neuv-bpf: `make test` and `make demo` work as the first command on a fresh machine.
.DELETE_ON_ERROR:
.PHONY: all deps build bpf ts fixtures stub-dp nvdp-run nvdp examples containers image test test-unit test-kernel test-full demo bench lint clean clean-vagrant vagrant-test docs install-hook

V ?= 0
ifeq ($(V),1)
Q :=
else
Q := @
endif

CLANG ?= clang
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I bpf -I/usr/include/$(MULTIARCH)
BPF_OBJ := build/neuv.bpf.o
BPF_SRC := bpf/neuv.bpf.c
BPF_HDR := $(wildcard bpf/*.h)
DEPS_STAMP := node_modules/.neuv-deps-stamp
TS_SRC := $(shell find src harness test bench -name '*.ts' 2>/dev/null) tsconfig.json
TS_STAMP := dist/.stamp

all: build

deps: $(DEPS_STAMP)
$(DEPS_STAMP): package.json package-lock.json scripts/deps.sh
	$(Q)./scripts/deps.sh

build: bpf ts fixtures stub-dp nvdp-run examples containers
bpf: $(BPF_OBJ)
$(BPF_OBJ): $(BPF_SRC) $(BPF_HDR) | $(DEPS_STAMP)
	@mkdir -p build
	@[ "$(V)" = 1 ] || echo "  CLANG  $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# Test fixtures: layout-drifted copies of the datapath (a struct; a flag value) and a verifier-refused object.
FIXTURES := build/fixtures/drift.bpf.o build/fixtures/drift-flag.bpf.o build/fixtures/reject.bpf.o
fixtures: $(FIXTURES)
build/fixtures/%.bpf.o: test/fixtures/%.bpf.c $(BPF_SRC) $(BPF_HDR) | $(DEPS_STAMP)
	@mkdir -p build/fixtures
	@[ "$(V)" = 1 ] || echo "  CLANG  $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -I build/fixtures -c $< -o $@
# bpf/neuv.h with NEUV_F_SELF_PEER moved from bit 3 to bit 4 (the sed must have changed it).
build/fixtures/drift-flag.bpf.o: build/fixtures/drift-flag.h
build/fixtures/drift-flag.h: bpf/neuv.h
	@mkdir -p build/fixtures
	$(Q)sed 's/NEUV_F_SELF_PEER *= 1U << 3,/NEUV_F_SELF_PEER = 1U << 4,/' $< > $@.tmp
	$(Q)grep -q 'NEUV_F_SELF_PEER = 1U << 4,' $@.tmp && mv $@.tmp $@

# The stub enforcer DP of the tests and the demo (tools/stub-dp.c).
HOSTCC ?= gcc
STUB_DP := build/stub-dp
stub-dp: $(STUB_DP)
$(STUB_DP): tools/stub-dp.c $(BPF_HDR) | $(DEPS_STAMP)
	@mkdir -p build
	@[ "$(V)" = 1 ] || echo "  CC     $@"
	$(Q)$(HOSTCC) -O2 -Wall -Wextra -Werror -I bpf -o $@ $<

# The launcher of NeuVector's real DP: private /tmp, enforcer netns (docs/neuvector-dp.md).
NVDP_RUN := build/nvdp-run
nvdp-run: $(NVDP_RUN)
$(NVDP_RUN): tools/nvdp-run.c | $(DEPS_STAMP)
	@mkdir -p build
	@[ "$(V)" = 1 ] || echo "  CC     $@"
	$(Q)$(HOSTCC) -O2 -Wall -Wextra -Werror -o $@ $<

# NeuVector's DP itself (docs/neuvector-dp.md): built from the tarball in third_party/neuvector-dp/
# (or $$NEUV_BPF_NVDP_TARBALL) into build/nvdp/dp, again only when the tarball changes; prints how
# to start it. Not part of build: the suites, the demo and the benchmarks build it on first use.
nvdp: ts nvdp-run
	$(Q)node scripts/nvdp.js

# A DP written in C offloading a flow with plain libbpf calls (docs/flow-offload.md).
EXAMPLES := build/flow-offload
examples: $(EXAMPLES)
build/flow-offload: examples/flow-offload.c $(BPF_HDR) | $(DEPS_STAMP)
	@mkdir -p build
	@[ "$(V)" = 1 ] || echo "  CC     $@"
	$(Q)$(HOSTCC) -O2 -Wall -Wextra -Werror -I bpf -o $@ $< -lbpf

# The container test image's root filesystem (busybox-static, a static echo server and
# the first-packet sender), imported with podman by test/containers.test.ts and
# test/oci-hook.test.ts; see docs/containers.md.
CTR_ROOTFS := build/containers/rootfs.tar
CTR_TOOLS := build/containers/echo-server build/containers/udp-burst
containers: $(CTR_ROOTFS)
build/containers/%: tools/%.c | $(DEPS_STAMP)
	@mkdir -p build/containers
	@[ "$(V)" = 1 ] || echo "  CC     $@"
	$(Q)$(HOSTCC) -static -O2 -Wall -Wextra -Werror -o $@ $<
$(CTR_ROOTFS): $(CTR_TOOLS) scripts/container-rootfs.sh
	@[ "$(V)" = 1 ] || echo "  TAR    $@"
	$(Q)./scripts/container-rootfs.sh $@ --deb busybox-static $(foreach a,sh sleep cat ip ping nc ls,--link /bin/$(a)=busybox) $(CTR_TOOLS)

# The service's OCI image (docs/deploy.md): the same rootfs builder with Debian's
# libbpf1, iproute2, ethtool, nsenter (util-linux), bpftool and busybox (a shell and
# env), Node from the npm registry (scripts/vagrant-node.sh), the package's production
# node_modules (npm ci --omit=dev, koffi's binary included), dist/src, the BPF
# object and deploy/ (the DaemonSet's init container installs CRI-O's hook from
# it); imported with podman (no base image) and saved as an OCI archive. Each
# piece is rebuilt only when its inputs change.
IMAGE_DIR := build/image
IMAGE_TAG ?= localhost/neuv-bpf:$(shell node -p 'require("./package.json").version')
IMAGE := $(IMAGE_DIR)/neuv-bpf.oci.tar
IMAGE_ROOTFS := $(IMAGE_DIR)/rootfs.tar
IMAGE_NODE := $(IMAGE_DIR)/node/bin/node
IMAGE_MODULES := $(IMAGE_DIR)/modules/.stamp
IMAGE_DEBS := libbpf1 iproute2 ethtool util-linux bpftool libstdc++6 busybox-static
image: $(IMAGE)
$(IMAGE_NODE): scripts/vagrant-node.sh
	$(Q)PREFIX=$(CURDIR)/$(IMAGE_DIR)/node NEUV_BPF_NODE_SOURCE=npm ./scripts/vagrant-node.sh
	$(Q)strip $@ # its debug information: 99 MB -> 86 MB
	$(Q)touch $@
$(IMAGE_MODULES): package.json package-lock.json | $(DEPS_STAMP)
	@[ "$(V)" = 1 ] || echo "  NPM    $(IMAGE_DIR)/modules (production dependencies)"
	$(Q)rm -rf $(IMAGE_DIR)/modules && mkdir -p $(IMAGE_DIR)/modules
	$(Q)cp package.json package-lock.json $(IMAGE_DIR)/modules/
	$(Q)cd $(IMAGE_DIR)/modules && npm ci --omit=dev --include=optional --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error
	$(Q)touch $@
$(IMAGE_ROOTFS): $(TS_STAMP) $(BPF_OBJ) $(IMAGE_NODE) $(IMAGE_MODULES) bin/neuv-bpf package.json $(wildcard deploy/*) scripts/container-rootfs.sh Makefile
	@[ "$(V)" = 1 ] || echo "  TAR    $@"
	$(Q)./scripts/container-rootfs.sh $@ $(addprefix --deb ,$(IMAGE_DEBS)) --skip debconf \
	  --copy $(IMAGE_NODE)=/usr/bin/node --copy $(IMAGE_DIR)/modules/node_modules=/opt/neuv-bpf/node_modules \
	  --copy package.json=/opt/neuv-bpf/package.json --copy bin=/opt/neuv-bpf/bin --copy dist/src=/opt/neuv-bpf/dist/src --copy dist/harness=/opt/neuv-bpf/dist/harness \
	  --copy $(BPF_OBJ)=/opt/neuv-bpf/$(BPF_OBJ) --copy deploy=/opt/neuv-bpf/deploy --link /usr/bin/neuv-bpf=/opt/neuv-bpf/bin/neuv-bpf \
	  --link /bin/sh=busybox --link /usr/bin/env=busybox
$(IMAGE): $(IMAGE_ROOTFS) scripts/image.sh
	@[ "$(V)" = 1 ] || echo "  IMAGE  $@ ($(IMAGE_TAG))"
	$(Q)./scripts/image.sh $(IMAGE_ROOTFS) $@ $(IMAGE_TAG)

# src/layout/generated.ts: every struct and enum of bpf/neuv.h, from the object's BTF
# (scripts/gen-layout.ts, compiled alone: it needs only src/bpf/btf.ts). Committed, so a
# fresh clone type-checks without clang; rewritten only when its text changes.
LAYOUT_TS := src/layout/generated.ts
GEN_LAYOUT := build/gen/scripts/gen-layout.js
$(GEN_LAYOUT): scripts/gen-layout.ts scripts/tsconfig.gen-layout.json src/bpf/btf.ts src/bpf/lib.ts src/errors.ts src/log.ts tsconfig.json | $(DEPS_STAMP)
	@[ "$(V)" = 1 ] || echo "  TSC    $@"
	$(Q)rm -rf build/gen
	$(Q)npx --no-install tsc -p scripts/tsconfig.gen-layout.json
$(LAYOUT_TS): $(BPF_OBJ) $(GEN_LAYOUT)
	@[ "$(V)" = 1 ] || echo "  GEN    $@"
	$(Q)node $(GEN_LAYOUT) $(BPF_OBJ) $@
	$(Q)touch $@

ts: $(TS_STAMP)
$(TS_STAMP): $(TS_SRC) $(LAYOUT_TS) $(DEPS_STAMP)
	@[ "$(V)" = 1 ] || echo "  TSC    dist/"
	@# From scratch: a moved or deleted .ts must not leave a stale .js behind (dist/src/bpf.js would shadow dist/src/bpf/index.js).
	$(Q)rm -rf dist/src dist/harness dist/test dist/bench
	$(Q)npx --no-install tsc -p tsconfig.json
	$(Q)touch $@

# The whole suite: unit tests everywhere, kernel suites when root (they skip
# with a reason otherwise; CI fails on any kernel-suite skip, see .ci/run).
# Each file in a mocha process of its own, NEUV_BPF_TEST_JOBS (default 2) side
# by side, longest first; each file's output whole, then the run's summary and
# each file's time (scripts/test-run.js, test/timing-reporter.ts). The
# service's image too (test/image.test.ts runs it under podman): about 20 s of
# CPU from a clean clone (Node from the npm registry), then only what changed.
MOCHA_ARGS ?= --timeout 120000 --reporter dist/test/timing-reporter.js
MOCHA := npx --no-install mocha $(MOCHA_ARGS)
TEST_RUN := MOCHA_ARGS='$(MOCHA_ARGS)' node scripts/test-run.js
test: build image
	$(Q)$(TEST_RUN) $$(find dist/test -name '*.test.js' | sort)

test-unit: build
	$(Q)NEUV_BPF_UNIT_ONLY=1 $(TEST_RUN) $$(find dist/test -name '*.test.js' | sort)

# Reliability with full counts (docs/reliability.md): 100 reloads, 100 churned
# pairs and 1,000 mode switches per mode with traffic, every crash point in
# every mode, 40 random kills, 50,000 fuzzed argument vectors and 1,000 real
# CLI runs. make test runs the same suites with reduced counts.
SOAK_TESTS := dist/test/reliability.test.js dist/test/badinput.test.js dist/test/security.test.js dist/test/fuzz.test.js
.PHONY: soak
soak: build
	$(Q)NEUV_BPF_SOAK=1 $(MOCHA) --timeout 14400000 $(SOAK_TESTS)

# Everything at full length, for a release rather than each change (hours):
# every suite with the soak counts above, then every kernel suite in the 6.1 VM
# with the differential suite's 100,000 frames (CI's VM runs a subset, 20,000).
.PHONY: test-full
test-full: build nvdp
	$(Q)NEUV_BPF_SOAK=1 $(MOCHA) --timeout 14400000 'dist/test/**/*.test.js'
	$(Q)./scripts/vm-deps.sh
	$(Q)KERNEL=6.1 VM_TIMEOUT=$${VM_TIMEOUT:-14400} ./scripts/vm-test.sh

demo: build
	$(Q)./bin/neuv-bpf demo

# docs/cli.md from every command's --help (test/docs.test.ts fails when it is stale).
docs: ts
	$(Q)node scripts/gen-cli-docs.js

# The OCI hook for podman and CRI-O (docs/deploy.md): deploy/neuv-bpf-hook.json with this checkout's CLI.
# HOOK_ARGS: --netns NAME, --bpffs DIR, --default-mode MODE, --on-failure closed|open, --socket PATH.
HOOKS_DIR ?= /etc/containers/oci/hooks.d
install-hook: build
	$(Q)node scripts/install-hook.js --hooks-dir $(HOOKS_DIR) $(HOOK_ARGS)

bench: build
	$(Q)node dist/bench/run.js $(if $(QUICK),--quick,)

# Types, the BPF C, and imports running downhill (the layers of docs/architecture.md).
lint: build
	$(Q)npx --no-install tsc -p tsconfig.json --noEmit
	$(Q)node tools/check-imports.js
	$(Q)$(CLANG) $(BPF_CFLAGS) -fsyntax-only $(BPF_SRC)

# The same suites inside a qemu VM booted on a Debian kernel package (default
# 6.1, bookworm's), see docs/kernels.md. VM_TESTS='glob ...' for a subset;
# KVM when usable, else emulation. NeuVector's DP is built here first: the
# guest's writes go to a tmpfs, so it would build it again on each run, emulated.
KERNEL ?= 6.1
.PHONY: vm-test
vm-test: build nvdp
	$(Q)./scripts/vm-deps.sh
	$(Q)KERNEL='$(KERNEL)' ./scripts/vm-test.sh

# Vagrant (docs/vagrant.md): the VM of vagrant/Vagrantfile, up, provisioned,
# the tests inside as root, destroyed; the tests' exit code.
# NEUV_BPF_VAGRANT_BOX=local uses the Debian 12 box make vagrant-box builds
# from Debian's packages (for machines without Vagrant Cloud).
VAGRANT_BOX := build/vagrant/neuv-bpf-bookworm64.box
.PHONY: vagrant-box
vagrant-box: $(VAGRANT_BOX)
$(VAGRANT_BOX): scripts/vagrant-box.sh scripts/vagrant-node.sh scripts/deps.sh
	$(Q)./scripts/vagrant-deps.sh
	$(Q)./scripts/vagrant-box.sh

vagrant-test: $(DEPS_STAMP) $(if $(filter local,$(NEUV_BPF_VAGRANT_BOX)),$(VAGRANT_BOX) $(TS_STAMP))
	$(Q)./scripts/vagrant-deps.sh
	$(Q)./scripts/vagrant-test.sh

# vagrant validate for libvirt and virtualbox, each box; boots nothing.
.PHONY: vagrant-validate
vagrant-validate:
	$(Q)./scripts/vagrant-deps.sh
	$(Q)./scripts/vagrant-validate.sh

# clean keeps build/vagrant: make vagrant-box's 1.6 GB box and its cached root
# file system take ~20 minutes to rebuild. clean-vagrant removes them too.
clean:
	rm -rf dist $(filter-out build/vagrant,$(wildcard build/*))

clean-vagrant: clean
	rm -rf build
