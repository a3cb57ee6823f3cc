# The two commands that do everything on a fresh machine:
#   make run    build the host and the example plugins, sign them, and serve them on 127.0.0.1:8080
#   make test   every test: unit, property, integration (plugins built to wasm), CLI smoke test
#
# Both install what they need (the wasm32-wasip2 Rust target) themselves.

CARGO ?= cargo
PLUGINS := digits image-classifier forecaster
# The same target dir tests/build.rs uses, so the tests and `make plugins` share one build.
WASM_TARGET := target/wasm-plugins
WASM_DIR := $(WASM_TARGET)/wasm32-wasip2/plugin

.PHONY: run test test-setup setup plugins host dist lint smoke deny

setup:
	rustup target add wasm32-wasip2

# The web page is tested in a real headless browser: Debian's chromium.
test-setup: setup
	command -v chromium > /dev/null || { apt-get update && apt-get install -y --no-install-recommends chromium; }
# The fleet tests start a real OCI registry (CNCF distribution) and MQTT broker of their own.
	{ command -v mosquitto && command -v docker-registry; } > /dev/null || { apt-get update && apt-get install -y --no-install-recommends docker-registry mosquitto; }
# The standard clients the protocol tests drive: Triton's Python clients (HTTP and gRPC) and
# KServe's.
	python3 -c 'import numpy, tritonclient.http, tritonclient.grpc, kserve' 2> /dev/null || \
		python3 -m pip install --quiet 'numpy' 'tritonclient[http,grpc]==2.73.0' 'kserve==0.21.0'

plugins: setup
	$(CARGO) build --profile plugin --target wasm32-wasip2 --target-dir $(WASM_TARGET) $(foreach p,$(PLUGINS),-p edgeplug-plugin-$(p))
	$(foreach p,$(PLUGINS),cp $(WASM_DIR)/edgeplug_plugin_$(subst -,_,$(p)).wasm plugins/$(p)/plugin.wasm &&) true

host:
	$(CARGO) build --release -p edgeplug

# The binary to install on an edge box: LTO, one codegen unit, stripped (target/dist/edgeplug).
dist:
	$(CARGO) build --profile dist -p edgeplug

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
