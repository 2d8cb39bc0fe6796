# The two commands of a fresh machine: `make demo` and `make test`.
# Both check and install system packages first (scripts/ensure-deps.sh).
#
# Everything builds in the dev profile, and RocksDB's C++ is compiled once for all of
# `make demo`, `make test` (build, clippy, tests) and `cargo test -p <crate>`: cargo
# reuses a build script's output whenever the script and its dependencies (bindgen, cc,
# ...) were built the same way. Two things used to break that, each costing another 9
# minutes: build dependencies got debug info only where cargo could share them with a
# normal dependency, which depends on the packages a command selects (fixed by
# `[profile.dev.build-override]` in Cargo.toml), and `cargo test -p aamas-consensus`
# resolved bindgen's `either` without `use_std` (fixed by consensus's build-dependency).
# No crate has cargo features any more, so `-p aamas-cli` and `--workspace` also share
# every crate of ours.

CARGO ?= cargo

.PHONY: demo tour test deps test-deps fmt lint layering unit bench clean sim-test

deps:
	@./scripts/ensure-deps.sh

## The main job: a local mesh of real nodes runs the template project through all eight
## phases while its president is killed (`aamas demo`; NODES=7 by default).
NODES ?= 7
demo: deps
	$(CARGO) run --locked -p aamas-cli --bin aamas -- demo --nodes $(NODES)

## The protocol's tour: identities, sealing, receiving, and the pipeline's refusals.
tour: deps
	$(CARGO) run --locked -p aamas-protocol --example envelope_tour

## Formatting, lints (warnings are errors) and every test.
test: deps test-deps fmt lint layering unit

## The outside checkers the tests run (the OpenAPI validator).
test-deps:
	@./scripts/ensure-test-deps.sh

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

## Every simulator scenario on 50 nodes (also part of `make test`), printing the reports.
sim-test: deps
	$(CARGO) test --locked -p aamas-sim --test scenarios -- --include-ignored --nocapture

## Criterion benchmarks (release profile; not part of `make test`).
bench: deps
	$(CARGO) bench --locked -p aamas-protocol --bench envelope
	$(CARGO) bench --locked -p aamas-consensus --bench raft
	$(CARGO) bench --locked -p aamas-node --bench policy

clean:
	$(CARGO) clean
