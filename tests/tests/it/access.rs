//! Access control of the admin API over real sockets: every admin endpoint × every kind of
//! credential (none, wrong, read, deploy to this plugin, deploy to another, admin) gets
//! exactly its answer; mutual TLS refuses an admin client without a certificate from the
//! configured CA; the audit log holds one record per attempt, refused ones included, and no
//! secret.

use std::path::Path;
use std::process::ExitCode;

use edgeplug::client::{ChunkedBody, ClientTls};
use edgeplug_bundle::manifest::Sha256;
use edgeplug_gateway::audit::{self, AuditRecord, Outcome};
use edgeplug_gateway::auth::{Scope, TokenEntry};
use edgeplug_tests::gateway::*;
use hyper::body::Bytes;
use hyper::{Request, Response};

const READ: &str = "ept-test-read-secret";
const DEPLOY_THIS: &str = "ept-test-deploy-digits-secret";
const DEPLOY_OTHER: &str = "ept-test-deploy-forecaster-secret";
const ADMIN: &str = "ept-test-admin-secret";
const WRONG: &str = "ept-test-wrong-secret";

/// A token file with one token per scope kind.
fn write_tokens(path: &Path) {
    let entries = [
        ("reader", READ, vec![Scope::Read]),
        (
            "deployer",
            DEPLOY_THIS,
            vec![Scope::Deploy("digits".into())],
        ),
        (
            "other-deployer",
            DEPLOY_OTHER,
            vec![Scope::Deploy("forecaster".into())],
        ),
        ("operator", ADMIN, vec![Scope::Admin]),
    ];
    let text: String = entries
        .into_iter()
        .map(|(name, secret, scopes)| {
            TokenEntry::for_secret(name, secret, scopes)
                .unwrap()
                .to_toml()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A gateway with the token file above beside the legacy `admin_token` ([`TOKEN`]).
async fn gateway_with_tokens(extra: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(&dir.path().join("tokens.toml"));
    TestGateway::start_in(dir, &format!("tokens_file = \"tokens.toml\"\n{extra}")).await
}

fn records(gw: &TestGateway) -> Vec<AuditRecord> {
    audit::read(gw.gateway.audit.path()).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cred {
    None,
    Wrong,
    Read,
    DeployOther,
    DeployThis,
    Admin,
}

impl Cred {
    const ALL: [Cred; 6] = [
        Cred::None,
        Cred::Wrong,
        Cred::Read,
        Cred::DeployOther,
        Cred::DeployThis,
        Cred::Admin,
    ];

    fn secret(self) -> Option<&'static str> {
        match self {
            Cred::None => None,
            Cred::Wrong => Some(WRONG),
            Cred::Read => Some(READ),
            Cred::DeployOther => Some(DEPLOY_OTHER),
            Cred::DeployThis => Some(DEPLOY_THIS),
            Cred::Admin => Some(ADMIN),
        }
    }

    /// The name the audit log must record.
    fn token_name(self) -> Option<&'static str> {
        match self {
            Cred::None | Cred::Wrong => None,
            Cred::Read => Some("reader"),
            Cred::DeployOther => Some("other-deployer"),
            Cred::DeployThis => Some("deployer"),
            Cred::Admin => Some("operator"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Endpoint {
    List,
    Rollback,
    Push,
    Finetune,
    HeadRollback,
    Remove,
}

impl Endpoint {
    fn action(self) -> &'static str {
        match self {
            Endpoint::List => "list",
            Endpoint::Rollback => "rollback",
            Endpoint::Push => "push",
            Endpoint::Finetune => "finetune",
            Endpoint::HeadRollback => "head-rollback",
            Endpoint::Remove => "remove",
        }
    }

    /// The status for `cred`, given that the operation succeeds when allowed.
    fn expected(self, cred: Cred) -> u16 {
        let allowed = match cred {
            Cred::None | Cred::Wrong => return 401,
            Cred::Admin => true,
            Cred::Read => self == Endpoint::List,
            Cred::DeployThis => matches!(
                self,
                Endpoint::Push | Endpoint::Rollback | Endpoint::Finetune | Endpoint::HeadRollback
            ),
            Cred::DeployOther => false,
        };
        if allowed { 200 } else { 403 }
    }
}

async fn call(gw: &TestGateway, endpoint: Endpoint, cred: Cred, bundle: &[u8]) -> Response<Bytes> {
    let (method, path, body) = match endpoint {
        Endpoint::List => ("GET", "/v1/admin/plugins", Vec::new()),
        Endpoint::Rollback => ("POST", "/v1/admin/plugins/digits/rollback", Vec::new()),
        Endpoint::Push => ("PUT", "/v1/admin/plugins/digits", bundle.to_vec()),
        Endpoint::Finetune => ("POST", "/v1/admin/plugins/digits/finetune", Vec::new()),
        Endpoint::HeadRollback => ("POST", "/v1/admin/plugins/digits/head/rollback", Vec::new()),
        Endpoint::Remove => ("DELETE", "/v1/admin/plugins/digits", Vec::new()),
    };
    let mut request = req(method, path);
    if let Some(secret) = cred.secret() {
        request = request.header("authorization", format!("Bearer {secret}"));
    }
    gw.send(request.body(ChunkedBody::new(body)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_allows_exactly_its_scopes_and_audits_every_attempt() {
    let mut gw = gateway_with_tokens("").await;
    // Three versions, so that two rollbacks have somewhere to go.
    for version in ["1.0.0", "1.0.1", "1.0.2"] {
        assert_status(
            &gw.push("digits", digits_bundle(&gw.key, version)).await,
            200,
        );
    }
    let setup = records(&gw);
    assert_eq!(setup.len(), 3, "{setup:?}");
    for r in &setup {
        assert_eq!(
            (r.action.as_str(), r.outcome, r.status),
            ("push", Outcome::Ok, 200)
        );
        // The legacy admin_token is a token of scope admin named "admin_token".
        assert_eq!(r.token.as_deref(), Some("admin_token"));
    }

    // Pushes that are allowed take the next versions; refused ones send 1.0.9 (never read).
    let pushes = [
        digits_bundle(&gw.key, "1.0.3"),
        digits_bundle(&gw.key, "1.0.4"),
    ];
    let refused_bundle = digits_bundle(&gw.key, "1.0.9");
    let mut pushed = 0;
    let mut active = "1.0.2".to_string();
    let mut expected_records = Vec::new();
    // digits learns: each allowed fine-tune (no samples yet: the head as shipped, which the
    // gate accepts) makes a checkpoint, and each allowed head rollback goes back one.
    let mut head = 0;
    for endpoint in [
        Endpoint::List,
        Endpoint::Rollback,
        Endpoint::Push,
        Endpoint::Finetune,
        Endpoint::HeadRollback,
        Endpoint::Remove,
    ] {
        for cred in Cred::ALL {
            let status = endpoint.expected(cred);
            let bundle = if endpoint == Endpoint::Push && status == 200 {
                pushed += 1;
                &pushes[pushed - 1]
            } else {
                &refused_bundle
            };
            let response = call(&gw, endpoint, cred, bundle).await;
            assert_eq!(
                response.status().as_u16(),
                status,
                "{endpoint:?} with {cred:?}: {}",
                String::from_utf8_lossy(response.body())
            );
            let code = match status {
                401 => Some("unauthorized"),
                403 => Some("forbidden"),
                _ => None,
            };
            if let Some(code) = code {
                assert_eq!(error_code(&response), code, "{endpoint:?} with {cred:?}");
            }
            // What the allowed operation did, and that a refused one did nothing.
            if status == 200 {
                match endpoint {
                    Endpoint::List => {
                        let listing = json_of(&response);
                        assert_eq!(listing["plugins"][0]["name"], "digits");
                        assert_eq!(listing["plugins"][0]["active"]["version"], active.as_str());
                    }
                    Endpoint::Rollback => {
                        active = if active == "1.0.2" { "1.0.1" } else { "1.0.0" }.into();
                    }
                    Endpoint::Push => active = format!("1.0.{}", 2 + pushed),
                    Endpoint::Finetune => {
                        head += 1;
                        assert_eq!(json_of(&response)["gate"]["sequence"], head);
                    }
                    Endpoint::HeadRollback => {
                        head -= 1;
                        let live = json_of(&response)["live_sequence"].as_i64().unwrap_or(0);
                        assert_eq!(live, head);
                    }
                    Endpoint::Remove => active.clear(),
                }
            }
            let now = gw.active_version("digits").await.unwrap_or_default();
            assert_eq!(now, active, "after {endpoint:?} with {cred:?}");
            expected_records.push((endpoint, cred, status, code, bundle.clone()));
        }
    }
    assert_eq!(pushed, 2);
    assert!(active.is_empty(), "the admin token removed the plugin");

    // One record per attempt, in order, each saying who, what and how it ended.
    let log = records(&gw);
    assert_eq!(log.len(), 3 + expected_records.len(), "{log:#?}");
    for (record, (endpoint, cred, status, code, bundle)) in log[3..].iter().zip(&expected_records) {
        let what = format!("{endpoint:?} with {cred:?}: {record:?}");
        assert_eq!(record.status, *status, "{what}");
        assert_eq!(record.code.as_deref(), *code, "{what}");
        assert_eq!(record.token.as_deref(), cred.token_name(), "{what}");
        let outcome = if *status == 200 {
            Outcome::Ok
        } else {
            Outcome::Denied
        };
        assert_eq!(record.outcome, outcome, "{what}");
        assert!(
            record
                .peer
                .as_deref()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{what}"
        );
        assert_eq!(record.client_cert, None, "{what}");
        if *status == 401 {
            // Unauthenticated: not even the action is taken from the request.
            assert_eq!(record.action, "unknown", "{what}");
        } else {
            assert_eq!(record.action, endpoint.action(), "{what}");
            let plugin = (*endpoint != Endpoint::List).then_some("digits");
            assert_eq!(record.plugin.as_deref(), plugin, "{what}");
        }
        // The bundle's digest for a push that was read; a refused push was never read.
        let digest =
            (*endpoint == Endpoint::Push && *status == 200).then(|| Sha256::of(bundle).to_string());
        assert_eq!(record.bundle_sha256, digest, "{what}");
        if *endpoint == Endpoint::Push && *status == 200 {
            assert!(
                record.version.is_some() && record.previous.is_some(),
                "{what}"
            );
        }
    }

    // No secret ever reaches the log, refused ones included.
    let text = std::fs::read_to_string(gw.gateway.audit.path()).unwrap();
    for secret in [READ, DEPLOY_THIS, DEPLOY_OTHER, ADMIN, WRONG, TOKEN] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_are_not_about_scope_are_audited_too() {
    let mut gw = gateway_with_tokens("").await;
    let admin = |method: &str, path: &str| {
        req(method, path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(ChunkedBody::new(Vec::new()))
            .unwrap()
    };
    // Authenticated, but: nothing to roll back to, no such endpoint, wrong method, a bundle
    // that is not one.
    assert_status(
        &gw.send(admin("POST", "/v1/admin/plugins/digits/rollback"))
            .await,
        404,
    );
    assert_status(&gw.send(admin("GET", "/v1/admin/secrets")).await, 404);
    assert_status(
        &gw.send(admin("PATCH", "/v1/admin/plugins/digits")).await,
        405,
    );
    let junk = req("PUT", "/v1/admin/plugins/digits")
        .header("authorization", format!("Bearer {DEPLOY_THIS}"))
        .body(ChunkedBody::new(b"not a bundle".to_vec()))
        .unwrap();
    assert_status(&gw.send(junk).await, 400);
    // Unauthenticated probing of paths that do not exist answers 401, not 404.
    let probe = req("GET", "/v1/admin/secrets")
        .body(ChunkedBody::new(Vec::new()))
        .unwrap();
    assert_status(&gw.send(probe).await, 401);
    // The public listing needs no token.
    assert_status(&gw.get("/v1/plugins").await, 200);

    let log = records(&gw);
    let summary: Vec<(&str, Outcome, u16, Option<&str>)> = log
        .iter()
        .map(|r| (r.action.as_str(), r.outcome, r.status, r.token.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("rollback", Outcome::Failed, 404, Some("operator")),
            ("unknown", Outcome::Failed, 404, Some("operator")),
            ("unknown", Outcome::Failed, 405, Some("operator")),
            ("push", Outcome::Failed, 400, Some("deployer")),
            ("unknown", Outcome::Denied, 401, None),
        ]
    );
    assert_eq!(log[1].path, "/v1/admin/secrets");
    assert_eq!(
        log[3].bundle_sha256,
        Some(Sha256::of(b"not a bundle").to_string())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_revoked_by_editing_the_file_and_no_action_runs_unaudited() {
    let mut gw = gateway_with_tokens("").await;
    let list = |secret: &str| {
        req("GET", "/v1/admin/plugins")
            .header("authorization", format!("Bearer {secret}"))
            .body(ChunkedBody::new(Vec::new()))
            .unwrap()
    };
    assert_status(&gw.send(list(READ)).await, 200);
    // Revoke "reader" by rewriting the file without it: no restart.
    let tokens_path = gw.gateway.config.tokens_file.clone().unwrap();
    let kept = TokenEntry::for_secret("operator", ADMIN, vec![Scope::Admin]).unwrap();
    std::fs::write(&tokens_path, kept.to_toml()).unwrap();
    assert_status(&gw.send(list(READ)).await, 401);
    assert_status(&gw.send(list(ADMIN)).await, 200);
    // A broken token file refuses everyone until it is fixed.
    std::fs::write(&tokens_path, "[[token]]\nname =").unwrap();
    let broken = gw.send(list(ADMIN)).await;
    assert_status(&broken, 503);
    assert_eq!(error_code(&broken), "tokens-unavailable");
    std::fs::write(&tokens_path, kept.to_toml()).unwrap();
    assert_status(&gw.send(list(ADMIN)).await, 200);

    // The audit log cannot be written (a directory where the file was): an allowed push is
    // refused and nothing is installed.
    let log_path = gw.gateway.audit.path().to_path_buf();
    let before = audit::read(&log_path).unwrap();
    assert_eq!(before.len(), 5, "{before:?}");
    std::fs::remove_file(&log_path).unwrap();
    std::fs::create_dir(&log_path).unwrap();
    let push = req("PUT", "/v1/admin/plugins/digits")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(ChunkedBody::new(digits_bundle(&gw.key, "1.0.0")))
        .unwrap();
    let refused = gw.send(push).await;
    assert_status(&refused, 503);
    assert_eq!(error_code(&refused), "audit-unavailable");
    assert_eq!(gw.active_version("digits").await, None);
    // Writable again (an operator rotated it away): a fresh file, and the push goes through.
    std::fs::remove_dir(&log_path).unwrap();
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );
    let after = audit::read(&log_path).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].outcome, Outcome::Ok);
    gw.stop().await;
}

// ---- mutual TLS ----

struct Pki {
    dir: tempfile::TempDir,
}

/// PEM files in a temp dir: a CA for admin clients (`client-ca.pem`), a client certificate
/// it signed (`client.pem`, `client.key`), one signed by another CA (`rogue.pem`,
/// `rogue.key`), and the server's self-signed certificate for `localhost`.
fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    let ca = |cn: &str| {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let client = |cn: &str, issuer: &Issuer<'_, KeyPair>| {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer).unwrap(), key)
    };
    let (client_ca, client_issuer) = ca("edgeplug test admin clients");
    let (rogue_ca, rogue_issuer) = ca("someone else");
    let (cert, key) = client("ci", &client_issuer);
    let (rogue, rogue_key) = client("ci", &rogue_issuer);
    write("client-ca.pem", client_ca.pem());
    write("client.pem", cert.pem());
    write("client.key", key.serialize_pem());
    write("rogue.pem", format!("{}{}", rogue.pem(), rogue_ca.pem()));
    write("rogue.key", rogue_key.serialize_pem());
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    write("server.pem", server.cert.pem());
    write("server.key", server.signing_key.serialize_pem());
    Pki { dir }
}

/// An HTTP/1.1 connection over TLS to `gw`, presenting `client` (certificate and key PEM
/// file names in the PKI dir) if given.
async fn tls_connection(
    gw: &TestGateway,
    pki: &Pki,
    client: Option<(&str, &str)>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<ChunkedBody>> {
    use rustls::pki_types::ServerName;
    let path = |name: &str| Some(pki.dir.path().join(name));
    let tls = ClientTls {
        cacert: path("server.pem"),
        client_cert: client.and_then(|(cert, _)| path(cert)),
        client_key: client.and_then(|(_, key)| path(key)),
    };
    let connector = tls.connector()?;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<ChunkedBody>,
    request: Request<ChunkedBody>,
) -> anyhow::Result<Response<Bytes>> {
    use http_body_util::BodyExt as _;
    let mut request = request;
    request
        .headers_mut()
        .insert("host", hyper::header::HeaderValue::from_static("localhost"));
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_guards_the_admin_api_and_only_it() {
    let pki = make_pki();
    let p = |name: &str| pki.dir.path().join(name);
    let mut gw = gateway_with_tokens(&format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        p("server.pem"),
        p("server.key"),
        p("client-ca.pem")
    ))
    .await;
    let admin = |method: &str, path: &str, body: Vec<u8>| {
        req(method, path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(ChunkedBody::new(body))
            .unwrap()
    };
    let get = |path: &str| req("GET", path).body(ChunkedBody::new(Vec::new())).unwrap();
    let bundle = digits_bundle(&gw.key, "1.0.0");

    // No client certificate: the public endpoints answer, the admin API refuses even the
    // admin token, and the push changes nothing.
    let mut anonymous = tls_connection(&gw, &pki, None).await.unwrap();
    assert_status(
        &send_on(&mut anonymous, get("/v2/health/live"))
            .await
            .unwrap(),
        200,
    );
    assert_status(
        &send_on(&mut anonymous, get("/v1/plugins")).await.unwrap(),
        200,
    );
    let refused = send_on(
        &mut anonymous,
        admin("PUT", "/v1/admin/plugins/digits", bundle.clone()),
    )
    .await
    .unwrap();
    assert_status(&refused, 403);
    assert_eq!(error_code(&refused), "client-certificate-required");
    assert_eq!(gw.gateway.registry.get("digits").map(|_| ()), None);

    // A certificate from the configured CA, with a token: allowed.
    let mut client = tls_connection(&gw, &pki, Some(("client.pem", "client.key")))
        .await
        .unwrap();
    let pushed = send_on(
        &mut client,
        admin("PUT", "/v1/admin/plugins/digits", bundle),
    )
    .await
    .unwrap();
    assert_status(&pushed, 200);
    assert_status(
        &send_on(&mut client, admin("GET", "/v1/admin/plugins", Vec::new()))
            .await
            .unwrap(),
        200,
    );
    // The certificate alone is not enough: it adds to the token, it does not replace it.
    let no_token = send_on(&mut client, get("/v1/admin/plugins"))
        .await
        .unwrap();
    assert_status(&no_token, 401);

    // A certificate from another CA fails the handshake (TLS 1.3 reports it on first use).
    let rogue = async {
        let mut sender = tls_connection(&gw, &pki, Some(("rogue.pem", "rogue.key"))).await?;
        send_on(&mut sender, get("/v2/health/live")).await
    };
    assert!(
        rogue.await.is_err(),
        "a client certificate from another CA was accepted"
    );

    // The audit log names the certificate of the allowed push, and records the refusal.
    let client_der = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_file(p("client.pem")).unwrap()
    };
    let fingerprint = Sha256::of(&client_der).to_string();
    let log = records(&gw);
    let summary: Vec<(&str, u16, Option<&str>, Option<&str>)> = log
        .iter()
        .map(|r| {
            (
                r.action.as_str(),
                r.status,
                r.token.as_deref(),
                r.client_cert.as_deref(),
            )
        })
        .collect();
    let fp = Some(fingerprint.as_str());
    assert_eq!(
        summary,
        [
            ("unknown", 403, None, None),
            ("push", 200, Some("operator"), fp),
            ("list", 200, Some("operator"), fp),
            ("unknown", 401, None, fp),
        ]
    );
    assert_eq!(log[0].code.as_deref(), Some("client-certificate-required"));
    assert_eq!(log[0].outcome, Outcome::Denied);

    // `edgeplug push` and `rollback` present a client certificate with --client-cert and
    // --client-key; without one the gateway refuses them and nothing changes.
    let file = pki.dir.path().join("digits-1.1.0.epk");
    std::fs::write(&file, digits_bundle(&gw.key, "1.1.0")).unwrap();
    let to = format!("https://localhost:{}", gw.addr.port());
    let with_cert = ClientTls {
        cacert: Some(p("server.pem")),
        client_cert: Some(p("client.pem")),
        client_key: Some(p("client.key")),
    };
    let without_cert = ClientTls {
        cacert: Some(p("server.pem")),
        ..ClientTls::default()
    };
    let push = |tls: ClientTls| {
        let args = edgeplug::cli_serve::PushArgs {
            file: file.clone(),
            to: to.clone(),
            token: Some(ADMIN.into()),
            tls,
        };
        tokio::task::spawn_blocking(move || edgeplug::cli_serve::run_push(args).unwrap())
    };
    let rollback = |tls: ClientTls| {
        let args = edgeplug::cli_serve::RollbackArgs {
            name: "digits".into(),
            to: to.clone(),
            token: Some(ADMIN.into()),
            tls,
        };
        tokio::task::spawn_blocking(move || edgeplug::cli_serve::run_rollback(args).unwrap())
    };
    let active = |gw: &TestGateway| {
        gw.gateway
            .registry
            .get("digits")
            .unwrap()
            .version
            .to_string()
    };
    assert_eq!(push(without_cert.clone()).await.unwrap(), ExitCode::FAILURE);
    assert_eq!(active(&gw), "1.0.0");
    assert_eq!(push(with_cert.clone()).await.unwrap(), ExitCode::SUCCESS);
    assert_eq!(active(&gw), "1.1.0");
    assert_eq!(rollback(without_cert).await.unwrap(), ExitCode::FAILURE);
    assert_eq!(active(&gw), "1.1.0");
    assert_eq!(rollback(with_cert).await.unwrap(), ExitCode::SUCCESS);
    assert_eq!(active(&gw), "1.0.0");
    gw.stop().await;
}
