# The two commands that do everything on a fresh machine:
#   make run    build the host and the example plugins, sign them, and serve them on 127.0.0.1:8080
#   make test   every test: unit, property, integration (plugins built to wasm), CLI smoke test,
#               and the ARM64 build under qemu-aarch64
#
# Both install what they need (Rust targets, Debian packages) themselves.

CARGO ?= cargo
PLUGINS := digits image-classifier forecaster
# The same target dir tests/build.rs uses, so the tests and `make plugins` share one build.
WASM_TARGET := target/wasm-plugins
WASM_DIR := $(WASM_TARGET)/wasm32-wasip2/plugin

.PHONY: run test test-setup setup plugins host dist lint smoke deny test-aarch64 aarch64-setup docs

setup:
	rustup target add wasm32-wasip2

# The web page is tested in a real headless browser: Debian's chromium.
test-setup: setup
	command -v chromium > /dev/null || { apt-get update && apt-get install -y --no-install-recommends chromium; }
# The fleet tests start a real OCI registry (CNCF distribution) and MQTT broker of their own.
	{ command -v mosquitto && command -v docker-registry; } > /dev/null || { apt-get update && apt-get install -y --no-install-recommends docker-registry mosquitto; }
# The Python and JavaScript plugin tests build with componentize-py (a venv, PyPI) and
# ComponentizeJS (npm), which tests/src/toolchains.rs installs under target/ itself.
	{ command -v npm && python3 -c 'import venv, ensurepip'; } > /dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends npm python3-venv; }
# The standard clients the protocol tests drive: Triton's Python clients (HTTP and gRPC) and
# KServe's.
	python3 -c 'import numpy, tritonclient.http, tritonclient.grpc, kserve' 2> /dev/null || \
		python3 -m pip install --quiet 'numpy' 'tritonclient[http,grpc]==2.73.0' 'kserve==0.21.0'

plugins: setup
	$(CARGO) build --profile plugin --target wasm32-wasip2 --target-dir $(WASM_TARGET) $(foreach p,$(PLUGINS),-p edgeplug-plugin-$(p))
	$(foreach p,$(PLUGINS),cp $(WASM_DIR)/edgeplug_plugin_$(subst -,_,$(p)).wasm plugins/$(p)/plugin.wasm &&) true

host:
	$(CARGO) build --release -p edgeplug

# What to install on an edge box, for x86_64 and aarch64 (Raspberry Pi 4/5, Jetson, i.MX 8):
# the binary built with fat LTO, one codegen unit, stripped, and the example plugins packed
# into bundles signed with the development key (re-sign for production with your own:
# `edgeplug pack DIR --key YOUR.key`). Prints every artifact's size. Output: target/dist-out/.
DIST := target/dist-out
dist: aarch64-setup plugins host
	$(CARGO) build --profile dist -p edgeplug
	$(CARGO) build --profile dist -p edgeplug --target $(AARCH64)
	rm -rf $(DIST) && mkdir -p $(DIST)/x86_64 $(DIST)/aarch64 $(DIST)/plugins $(DEV)/keys
	cp target/dist/edgeplug $(DIST)/x86_64/edgeplug
	cp target/$(AARCH64)/dist/edgeplug $(DIST)/aarch64/edgeplug
	test -f $(DEV)/keys/dev.key || ./target/release/edgeplug keygen --out $(DEV)/keys --name dev
	cp $(DEV)/keys/dev.pub $(DIST)/plugins/
	$(foreach p,$(SERVE_PLUGINS),./target/release/edgeplug pack plugins/$(p) --key $(DEV)/keys/dev.key \
		--out $(DIST)/plugins/$(p).epk > /dev/null &&) true
	@file $(DIST)/x86_64/edgeplug $(DIST)/aarch64/edgeplug | sed 's/, BuildID[^,]*//'
	@find $(DIST) -type f | sort | xargs ls -l | awk '{printf "%8.1f MB  %s\n", $$5 / 1e6, $$9}'

# `make run`: a development gateway on http://$(LISTEN) serving every example plugin, packed
# and signed with a development key made on first run (target/dev/keys, trusted in
# target/dev/trust). The state directory is fresh on every run; Ctrl-C stops the gateway.
DEV := target/dev
LISTEN ?= 127.0.0.1:8080
GRPC_LISTEN ?= 127.0.0.1:8081
DEV_TOKEN := dev-token
SERVE_PLUGINS = $(patsubst plugins/%/plugin.toml,%,$(wildcard plugins/*/plugin.toml))

run: plugins host
	test -f plugins/digits/weights.safetensors || ./target/release/edgeplug weights \
		plugins/digits/digits_cnn.onnx --out plugins/digits/weights.safetensors > /dev/null
	mkdir -p $(DEV)/trust $(DEV)/bundles
	test -f $(DEV)/keys/dev.key || ./target/release/edgeplug keygen --out $(DEV)/keys --name dev
	cp $(DEV)/keys/dev.pub $(DEV)/trust/dev.pub
	$(foreach p,$(SERVE_PLUGINS),./target/release/edgeplug pack plugins/$(p) --key $(DEV)/keys/dev.key \
		--out $(DEV)/bundles/$(p).epk > /dev/null &&) true
	printf 'listen = "$(LISTEN)"\nstate_dir = "state"\ntrust_dir = "trust"\nadmin_token = "$(DEV_TOKEN)"\ndefault_plugin = "digits"\n[grpc]\nlisten = "$(GRPC_LISTEN)"\n' \
		> $(DEV)/gateway.toml
	rm -rf $(DEV)/state
	@echo "Open http://$(LISTEN)/ (Open Inference Protocol over gRPC on $(GRPC_LISTEN)) or try:"
	@echo "  curl -F image=@tests/fixtures/images/adversarial/digit1-gray8.png http://$(LISTEN)/predict"
	@echo "  curl -H 'content-type: image/png' --data-binary @tests/fixtures/images/chelsea.png http://$(LISTEN)/v1/plugins/image-classifier/infer"
	EDGEPLUG_LOG=$${EDGEPLUG_LOG:-info} ./target/release/edgeplug serve --config $(DEV)/gateway.toml \
		$(foreach p,$(SERVE_PLUGINS),--install $(DEV)/bundles/$(p).epk)

test: test-setup
	$(CARGO) test --workspace
	@# Which SIMD paths the kernel property tests exercised on this machine.
	$(CARGO) test -q -p edgeplug-kernels --lib -- --nocapture --exact fast::tests::simd_paths_under_test
	$(MAKE) smoke
	$(MAKE) test-aarch64

# ARM64 under qemu-aarch64 user-mode emulation (Debian's qemu-user-static; gcc-aarch64-linux-gnu
# links): the kernel and model tests on the NEON path against the same references, then the
# example plugins end to end on a cross-built edgeplug (tests/aarch64/qemu_e2e.py). Emulation is
# for correctness only; it says nothing about speed.
AARCH64 := aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER ?= aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER ?= qemu-aarch64-static -L /usr/aarch64-linux-gnu

aarch64-setup:
	rustup target add $(AARCH64)
	{ command -v qemu-aarch64-static && command -v aarch64-linux-gnu-gcc; } > /dev/null || { apt-get update && \
		apt-get install -y --no-install-recommends qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross; }

test-aarch64: aarch64-setup plugins
	$(CARGO) test --target $(AARCH64) -p edgeplug-kernels -p edgeplug-models
	$(CARGO) test -q --target $(AARCH64) -p edgeplug-kernels --lib -- --nocapture --exact fast::tests::simd_paths_under_test
	$(CARGO) build --target $(AARCH64) -p edgeplug
	test -f plugins/digits/weights.safetensors || ./target/debug/edgeplug weights \
		plugins/digits/digits_cnn.onnx --out plugins/digits/weights.safetensors > /dev/null
	python3 tests/aarch64/qemu_e2e.py target/$(AARCH64)/debug/edgeplug

# The plugin SDK's reference for authors, warnings denied (the SDK denies missing docs, so an
# undocumented public item or a broken intra-doc link fails it).
docs:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p edgeplug-sdk
	@echo "SDK reference: target/doc/edgeplug_sdk/index.html"

# The CLI end to end on a freshly built plugin: a drawn "1" must come out as 1, and a
# truncated image must give an error line and exit status 2.
# `--all-targets` builds the tests too, so dependency features are resolved with the
# dev-dependencies as in `cargo test --workspace`, and the binary reuses the test build
# instead of compiling wasmtime and tract a second time.
smoke: plugins
	$(CARGO) build --workspace --all-targets
	./target/debug/edgeplug run plugins/digits tests/fixtures/images/adversarial/digit1-gray8.png \
		| grep -q '"label":1'
	./target/debug/edgeplug run plugins/digits tests/fixtures/images/adversarial/truncated.png \
		> target/smoke-error.json; test $$? -eq 2 || { cat target/smoke-error.json; exit 1; }; \
		grep -q '"error"' target/smoke-error.json
	./target/debug/edgeplug --help | grep -q 'run'
	rm -rf target/smoke && mkdir -p target/smoke/trust
	./target/debug/edgeplug keygen --out target/smoke --name smoke > /dev/null
	cp target/smoke/smoke.pub target/smoke/trust/
	./target/debug/edgeplug pack plugins/digits --key target/smoke/smoke.key --out target/smoke/digits.epk > /dev/null
	./target/debug/edgeplug conformance target/smoke/digits.epk --trust target/smoke/trust \
		--junit target/smoke/digits.xml > target/smoke/digits.txt || { cat target/smoke/digits.txt; exit 1; }
	grep -q 'failures="0"' target/smoke/digits.xml
	! ./target/debug/edgeplug conformance $(WASM_TARGET)/wasm32-wasip2/plugin/edgeplug_test_panic.wasm \
		> target/smoke/panic.txt
	grep -q 'FAIL  robustness' target/smoke/panic.txt
	# `edgeplug bench` on each backend: the tract column must really be tract.
	for b in native tract; do ./target/debug/edgeplug bench tests/fixtures/models/digits_cnn.onnx \
		--backend $$b --runs 3 --warmup 1 --json | grep -q "\"backend\":\"$$b\"" || exit 1; done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

# Licenses, banned crates and sources from deny.toml (cargo install cargo-deny). The advisory
# database lives on github.com: checked when it can be fetched, else said so and skipped.
deny:
	cargo deny check licenses bans sources
	if git ls-remote https://github.com/RustSec/advisory-db HEAD > /dev/null 2>&1; then \
		cargo deny check advisories; \
	else \
		echo "cargo deny: github.com unreachable, the RustSec advisory database was not fetched: advisories NOT checked"; \
	fi
