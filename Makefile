# The two commands of a fresh machine: `make demo` and `make test`.
# Both check and install system packages first (scripts/ensure-deps.sh).
#
# Everything builds in the dev profile so that RocksDB's C++ (from issue 2 on) is compiled
# once for `test` and once for `clippy`, never a third time for a release build.

CARGO ?= cargo

.PHONY: demo test deps fmt lint layering unit bench clean

deps:
	@./scripts/ensure-deps.sh

## The main job. Until the node exists it is the protocol's tour: identities, sealing,
## receiving, and the refusals of the receive pipeline.
demo: deps
	$(CARGO) run --locked -p aamas-protocol --example envelope_tour

## Formatting, lints (warnings are errors) and every test.
test: deps fmt lint layering unit

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## protocol/ stays pure; bincode (unmaintained, RUSTSEC-2025-0141) stays out.
layering:
	./scripts/check-layering.sh

## The multi-process tests in tests/ drive the real `aamas` binary: `cargo test` builds
## bins only as test harnesses, so build the binary itself first.
unit:
	$(CARGO) build --locked --workspace --bins
	$(CARGO) test --locked --workspace --all-targets
	$(CARGO) test --locked --workspace --doc

## Criterion benchmarks (release profile; not part of `make test`).
bench: deps
	$(CARGO) bench --locked -p aamas-protocol --bench envelope
	$(CARGO) bench --locked -p aamas-consensus --bench raft

clean:
	$(CARGO) clean
