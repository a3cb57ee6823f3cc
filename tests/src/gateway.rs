//! A gateway on 127.0.0.1 for tests and benchmarks, with the fixtures they push: signed
//! digits bundles of any version and signed bundles of the test plugins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::{self as bundle, BundleLimits, SecretKey};
use edgeplug_gateway::{self as gateway, Config, Gateway};
use edgeplug_runtime::{InferRequest, PluginFiles};
use hyper::body::Bytes;
use hyper::{Request, Response, Uri};
use serde_json::Value;

use crate::{DIGITS_WASM, fixture, repo, runtime, test_plugin_wasm};

pub const TOKEN: &str = "test-admin-token";

// ---- fixtures: signed digits bundles of any version ----

/// The digits weights, extracted once from the ONNX model.
pub fn weights() -> &'static [u8] {
    static WEIGHTS: OnceLock<Vec<u8>> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let onnx = std::fs::read(repo().join("plugins/digits/digits_cnn.onnx")).unwrap();
        edgeplug_models::weights::extract_onnx_weights(&onnx)
            .unwrap()
            .0
    })
}

/// The digits component, its `describe()` version rewritten to `version`.
///
/// `describe()` reports the crate's version (the shipped one), and the runtime refuses a component
/// whose description disagrees with its manifest, so each test version needs its own
/// component: the version string in the data segment is replaced by another of the same
/// length (`a.b.c`, single digits). Occurrences after `@` (the WIT package version), `-`
/// or `/` (dependency paths in debug info) stay.
pub fn wasm_for_version(version: &str) -> Vec<u8> {
    assert_eq!(
        version.len(),
        5,
        "test versions are a.b.c with single digits"
    );
    let mut wasm = std::fs::read(DIGITS_WASM).unwrap();
    let shipped = shipped_digits_version();
    if version == shipped {
        return wasm;
    }
    let needle = shipped.as_bytes();
    let mut patched = 0;
    let mut i = 0;
    while i + needle.len() <= wasm.len() {
        let standalone = &wasm[i..i + needle.len()] == needle
            && (i == 0 || !matches!(wasm[i - 1], b'@' | b'-' | b'/'))
            && wasm
                .get(i + needle.len())
                .is_none_or(|b| !b.is_ascii_digit() && *b != b'.');
        if standalone {
            wasm[i..i + needle.len()].copy_from_slice(version.as_bytes());
            patched += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(
        patched >= 1,
        "the digits component has no version string to rewrite"
    );
    wasm
}

/// The version `plugins/digits/plugin.toml` ships (what its component's `describe()` says).
pub fn shipped_digits_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let manifest =
            edgeplug_bundle::manifest::Manifest::load(&repo().join("plugins/digits")).unwrap();
        let version = manifest.version.to_string();
        assert_eq!(version.len(), 5, "the digits example's version is a.b.c");
        version
    })
}

/// What the digits plugin answers for `seven.json`, for the self-test vector.
pub fn seven_expected() -> &'static [u8] {
    static EXPECTED: OnceLock<Vec<u8>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_plugin_dir(dir.path(), "0.1.0", "", false);
        let runtime = runtime();
        let plugin = runtime
            .load(&PluginFiles::from_dir(dir.path(), None).unwrap())
            .unwrap();
        let response = plugin
            .infer(InferRequest {
                content_type: "application/json".into(),
                body: std::fs::read(fixture("digits/seven.json")).unwrap(),
                tensors: Vec::new(),
            })
            .unwrap();
        let value: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(value["label"], 7);
        response.body
    })
}

/// A digits plugin directory of `version`; `extra` is appended to plugin.toml; with
/// `self_test`, a `[[self-test]]` vector on seven.json expecting `seven_expected()`.
pub fn write_plugin_dir(dir: &Path, version: &str, extra: &str, self_test: bool) {
    let manifest = std::fs::read_to_string(repo().join("plugins/digits/plugin.toml")).unwrap();
    let manifest = manifest.replace(
        &format!("version = \"{}\"", shipped_digits_version()),
        &format!("version = \"{version}\""),
    );
    assert!(manifest.contains(&format!("version = \"{version}\"")));
    // The example's own self-tests name files this directory does not have; each test
    // chooses its vectors.
    let manifest = match manifest.find("\n# Self-test vectors") {
        Some(cut) => manifest[..cut].to_string(),
        None => manifest,
    };
    assert!(!manifest.contains("[[self-test]]"));
    let mut manifest = manifest.replace("max_request_mib = 8", "max_request_mib = 1");
    if self_test {
        std::fs::create_dir_all(dir.join("selftest")).unwrap();
        std::fs::copy(
            fixture("digits/seven.json"),
            dir.join("selftest/seven.json"),
        )
        .unwrap();
        std::fs::write(dir.join("selftest/seven.expected.json"), seven_expected()).unwrap();
        manifest.push_str(
            "\n[[self-test]]\nname = \"a seven\"\ninput = \"selftest/seven.json\"\n\
             expect = \"selftest/seven.expected.json\"\n",
        );
    }
    manifest.push_str(extra);
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    std::fs::write(dir.join("plugin.wasm"), wasm_for_version(version)).unwrap();
    std::fs::write(dir.join("weights.safetensors"), weights()).unwrap();
}

/// A signed digits bundle of `version` with a passing self-test.
pub fn digits_bundle(key: &SecretKey, version: &str) -> Vec<u8> {
    bundle_with(key, version, |_| {})
}

/// A signed digits bundle whose plugin directory `tweak` may change before packing.
pub fn bundle_with(key: &SecretKey, version: &str, tweak: impl FnOnce(&Path)) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    write_plugin_dir(dir.path(), version, "", true);
    tweak(dir.path());
    let limits = BundleLimits::default();
    let packed = bundle::pack_dir(dir.path(), &limits).unwrap();
    bundle::sign_bundle(&packed.bytes, key, &limits).unwrap()
}

/// A signed bundle of the example plugin in `plugins/<name>` as it ships (its manifest and
/// every file it names), with its freshly built component `wasm`.
pub fn example_bundle(key: &SecretKey, name: &str, wasm: &str) -> Vec<u8> {
    let source = repo().join("plugins").join(name);
    let manifest = edgeplug_bundle::manifest::Manifest::load(&source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("plugin.toml"), dir.path().join("plugin.toml")).unwrap();
    for path in manifest.referenced_files() {
        let to = dir.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let from = if path == manifest.component {
            PathBuf::from(wasm)
        } else {
            source.join(path)
        };
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    let limits = BundleLimits::default();
    let packed = bundle::pack_dir(dir.path(), &limits).unwrap();
    bundle::sign_bundle(&packed.bytes, key, &limits).unwrap()
}

/// The wasi:nn guest's plugin directory (`tests/plugins/wasi-nn-classifier`) with the graph
/// it loads by name (MobileNetV2 from the image classifier) and its built component.
pub fn wasi_nn_plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = repo().join("tests/plugins/wasi-nn-classifier");
    std::fs::copy(source.join("plugin.toml"), dir.path().join("plugin.toml")).unwrap();
    std::fs::create_dir(dir.path().join("selftest")).unwrap();
    for file in ["selftest/chelsea.png", "selftest/chelsea.expect.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(
        repo().join("plugins/image-classifier/mobilenetv2.onnx"),
        dir.path().join("mobilenetv2.onnx"),
    )
    .unwrap();
    std::fs::copy(
        crate::WASI_NN_CLASSIFIER_WASM,
        dir.path().join("plugin.wasm"),
    )
    .unwrap();
    dir
}

// ---- a gateway on 127.0.0.1:0 ----

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The key the gateway trusts.
    pub key: Arc<SecretKey>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The state and trust directories.
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway with a fresh state directory trusting one fresh key, admin token [`TOKEN`]
    /// and `default_plugin = "digits"`; `config_extra` is appended to its configuration.
    pub async fn start(config_extra: &str) -> TestGateway {
        TestGateway::start_in(tempfile::tempdir().unwrap(), config_extra).await
    }

    /// [`TestGateway::start`] in `dir`, which may already hold files the configuration names
    /// (relative paths in it resolve against `dir`).
    pub async fn start_in(dir: tempfile::TempDir, config_extra: &str) -> TestGateway {
        let (key, config_path) = write_gateway_dir(dir.path(), config_extra);
        let config = Config::load(&config_path).unwrap();
        TestGateway::serve(config, key, dir).await
    }

    /// A gateway on 127.0.0.1:0 with `config` (its `listen` is ignored); `dir` is kept alive
    /// with it, `key` is what its trust store trusts (if anything).
    pub async fn serve(config: Config, key: Arc<SecretKey>, dir: tempfile::TempDir) -> TestGateway {
        let gateway = tokio::task::spawn_blocking(move || Gateway::open(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gateway::serve(listener, gateway.clone(), async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            gateway,
            key,
            shutdown: Some(tx),
            server: Some(server),
            dir,
        }
    }

    pub fn url(&self) -> Uri {
        let scheme = if self.gateway.is_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/", self.addr).parse().unwrap()
    }

    pub async fn connect(&self) -> Connection {
        Connection::open(&self.url(), None).await.unwrap()
    }

    /// One request on a fresh connection.
    pub async fn send(&self, request: Request<ChunkedBody>) -> Response<Bytes> {
        self.connect().await.send(request).await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response<Bytes> {
        self.send(req("GET", path).body(ChunkedBody::new(Vec::new())).unwrap())
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Response<Bytes> {
        self.send(
            req("POST", path)
                .header("content-type", content_type)
                .body(ChunkedBody::new(body))
                .unwrap(),
        )
        .await
    }

    pub async fn push(&self, name: &str, bundle: Vec<u8>) -> Response<Bytes> {
        self.send(
            req("PUT", &format!("/v1/admin/plugins/{name}"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(bundle))
                .unwrap(),
        )
        .await
    }

    pub async fn rollback(&self, name: &str) -> Response<Bytes> {
        self.send(
            req("POST", &format!("/v1/admin/plugins/{name}/rollback"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await
    }

    pub async fn active_version(&self, name: &str) -> Option<String> {
        let listing = json_of(&self.get("/v1/plugins").await);
        listing["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["active"]["version"].as_str().map(String::from))
    }

    /// Stops the server (graceful shutdown) and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// A test gateway's `gateway.toml`: loopback on a free port, `state/` and `trust/` in its
/// directory, the admin token [`TOKEN`], digits answering `/predict`, then `config_extra`.
pub fn gateway_toml(config_extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\ntrust_dir = \"trust\"\n\
         admin_token = \"{TOKEN}\"\ndefault_plugin = \"digits\"\n{config_extra}"
    )
}

/// Writes a test gateway's directory: a fresh signing key trusted in `trust/` and
/// [`gateway_toml`]; returns the key and the configuration's path.
pub fn write_gateway_dir(dir: &Path, config_extra: &str) -> (Arc<SecretKey>, PathBuf) {
    let key = Arc::new(SecretKey::generate());
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    std::fs::write(dir.join("trust/test.pub"), key.public_key().to_pem()).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, gateway_toml(config_extra)).unwrap();
    (key, config)
}

pub fn req(method: &str, path: &str) -> hyper::http::request::Builder {
    Request::builder().method(method).uri(path)
}

pub fn json_of(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}): {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        )
    })
}

pub fn header<'a>(response: &'a Response<Bytes>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[track_caller]
pub fn assert_status(response: &Response<Bytes>, status: u16) {
    assert_eq!(
        response.status().as_u16(),
        status,
        "body: {}",
        String::from_utf8_lossy(response.body())
    );
}

pub fn error_code(response: &Response<Bytes>) -> String {
    json_of(response)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn multipart(
    field: &str,
    filename: &str,
    content_type: &str,
    data: &[u8],
) -> (String, Vec<u8>) {
    let boundary = "----edgeplugTestBoundary7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A [1, 1, 16, 16] input of the digits test set, and its label.
pub fn digits_tensor_input() -> (Vec<f32>, i64) {
    use edgeplug_sdk::npy::NpyData;
    let inputs = crate::npy("digits/digits_test.npy");
    let NpyData::F32(values) = inputs.data else {
        panic!("digits_test.npy is float32")
    };
    let NpyData::I64(labels) = crate::npy("digits/digits_test_labels.npy").data else {
        panic!("labels are int64")
    };
    (values[..256].to_vec(), labels[0])
}

pub fn argmax(values: &[Value]) -> usize {
    values
        .iter()
        .map(|v| v.as_f64().unwrap())
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0
}

/// The test plugin in `tests/plugins/<name>`, with its freshly built component, packed and
/// signed with `key`.
pub fn test_plugin_bundle(key: &SecretKey, name: &str) -> Vec<u8> {
    dir_bundle(
        key,
        &repo().join("tests/plugins").join(name),
        Path::new(test_plugin_wasm(name)),
    )
}

/// The plugin directory `dir` with `component` as its `plugin.wasm`, packed and signed with
/// `key`.
pub fn dir_bundle(key: &SecretKey, dir: &Path, component: &Path) -> Vec<u8> {
    let limits = BundleLimits::default();
    let component = [("plugin.wasm".to_string(), component.to_path_buf())].into();
    let packed = bundle::pack_dir_with(dir, &component, &limits).unwrap();
    bundle::sign_bundle(&packed.bytes, key, &limits).unwrap()
}

/// A signed bundle of the split test plugin (`tests/plugins/split`) in `role` `head` (granted
/// the model `head` and the upstream `tail`) or `tail` (granted the model `tail`), with
/// `onnx` as that model.
pub fn split_bundle(key: &SecretKey, role: &str, onnx: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let upstream = if role == "head" {
        "upstream = [\"tail\"]\n"
    } else {
        ""
    };
    std::fs::write(
        dir.path().join("plugin.toml"),
        format!(
            "name = \"split\"\nversion = \"0.1.0\"\nworld = \"edgeplug:plugin/plugin@0.1.2\"\n\
             component = \"plugin.wasm\"\n\n[grants]\nmodels = {{ {role} = \"{role}.onnx\" }}\n\
             {upstream}\n[limits]\nmemory_mib = 64\ndeadline_ms = 30000\n\
             tensor_memory_mib = 64\nmax_request_mib = 8\n"
        ),
    )
    .unwrap();
    std::fs::copy(test_plugin_wasm("split"), dir.path().join("plugin.wasm")).unwrap();
    std::fs::write(dir.path().join(format!("{role}.onnx")), onnx).unwrap();
    let limits = BundleLimits::default();
    let packed = bundle::pack_dir(dir.path(), &limits).unwrap();
    bundle::sign_bundle(&packed.bytes, key, &limits).unwrap()
}
