# cevm — the two commands of the quick start are `make demo` and `make test`;
# both run the idempotent set-up first.

SWIFT ?= swift
BIN_PATH = $(shell $(SWIFT) build --show-bin-path 2>/dev/null)

.PHONY: all setup guest debian-guest build test unit-test verify-protocols demo clean

all: build

setup:
	bash scripts/setup

guest:
	bash scripts/build-guest

# The Debian guest (Debian 12, systemd, PostgreSQL) of DebianGuestTests;
# cached, so only the first run builds it (a few minutes, network needed).
debian-guest: setup
	bash scripts/build-debian-guest

build:
	$(SWIFT) build

# Every test: unit tests, end-to-end tests on the bundled guest under TCG,
# and the spin models of the disk protocols. The build refuses a module that
# imports a target it does not declare. Tests run one at a time: the
# end-to-end ones boot TCG guests, and on two cores running them all at once
# turns every timeout into a coin toss.
test: setup debian-guest
	bash scripts/fuzz
	bash scripts/fuzz-nbd
	bash scripts/fuzz-stream
	$(SWIFT) build --build-tests --explicit-target-dependency-import-check error
	CEVM_BIN="$(BIN_PATH)/cevm" $(SWIFT) test --skip-build --no-parallel
	bash scripts/verify-protocols

verify-protocols:
	bash scripts/verify-protocols

demo: setup build
	CEVM_BIN="$(BIN_PATH)/cevm" bash scripts/demo

clean:
	rm -rf .build
