# The two commands that do everything on a fresh machine:
#   make run    build the host and the example plugins, then run the digits plugin on sample images
#   make test   every test: unit, property, integration (plugins built to wasm), CLI smoke test
#
# Both install what they need (the wasm32-wasip2 Rust target) themselves.

CARGO ?= cargo
PLUGINS := digits
WASM_DIR := target/wasm32-wasip2/release

.PHONY: run test setup plugins host lint smoke

setup:
	rustup target add wasm32-wasip2

plugins: setup
	$(CARGO) build --release --target wasm32-wasip2 $(foreach p,$(PLUGINS),-p edgeplug-plugin-$(p))
	$(foreach p,$(PLUGINS),cp $(WASM_DIR)/edgeplug_plugin_$(subst -,_,$(p)).wasm plugins/$(p)/plugin.wasm &&) true

host:
	$(CARGO) build --release -p edgeplug-host

run: plugins host
	./target/release/edgeplug run plugins/digits \
		tests/fixtures/images/adversarial/digit1-gray8.png \
		tests/fixtures/images/adversarial/digit1-palette.png \
		tests/fixtures/digits/seven.json \
		tests/fixtures/images/adversarial/truncated.png || true

test: setup
	$(CARGO) test --workspace
	$(MAKE) smoke

# The CLI end to end on a freshly built plugin: a drawn "1" must come out as 1, and a
# truncated image must give an error line and exit status 2.
smoke: plugins
	$(CARGO) build -p edgeplug-host
	./target/debug/edgeplug run plugins/digits tests/fixtures/images/adversarial/digit1-gray8.png \
		| grep -q '"label":1'
	./target/debug/edgeplug run plugins/digits tests/fixtures/images/adversarial/truncated.png \
		> target/smoke-error.json; test $$? -eq 2 || { cat target/smoke-error.json; exit 1; }; \
		grep -q '"error"' target/smoke-error.json
	./target/debug/edgeplug --help | grep -q 'run'

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
