//! A small HTTP/1.1 client for `edgeplug push` and `edgeplug rollback` (and the tests): one
//! keep-alive connection to a gateway, plain or TLS.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

/// A request body sent in chunks, calling `progress` with the bytes handed to the
/// connection so far.
pub struct ChunkedBody {
    data: Bytes,
    sent: usize,
    chunk: usize,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
}

impl ChunkedBody {
    pub fn new(data: impl Into<Bytes>) -> ChunkedBody {
        ChunkedBody {
            data: data.into(),
            sent: 0,
            chunk: 64 << 10,
            progress: None,
        }
    }

    /// Calls `progress(bytes_sent)` after each chunk.
    pub fn with_progress(mut self, progress: impl FnMut(u64) + Send + 'static) -> ChunkedBody {
        self.progress = Some(Box::new(progress));
        self
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.data.len() {
            return Poll::Ready(None);
        }
        let end = (self.sent + self.chunk).min(self.data.len());
        let frame = self.data.slice(self.sent..end);
        self.sent = end;
        let sent = self.sent as u64;
        if let Some(progress) = self.progress.as_mut() {
            progress(sent);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

/// One connection to a gateway.
pub struct Connection {
    sender: SendRequest<ChunkedBody>,
    authority: String,
}

impl Connection {
    /// Connects to the host of `url` (`http://` or `https://`). For `https`, the server's
    /// certificate must chain to `ca` (a PEM file) if given, else to the system's roots.
    pub async fn open(url: &Uri, ca: Option<&Path>) -> anyhow::Result<Connection> {
        let tls = ClientTls {
            cacert: ca.map(Path::to_path_buf),
            ..ClientTls::default()
        };
        Connection::open_with(url, &tls).await
    }

    /// [`Connection::open`], presenting a client certificate over `https` when `tls` names one
    /// (a gateway whose admin API requires mutual TLS).
    pub async fn open_with(url: &Uri, tls: &ClientTls) -> anyhow::Result<Connection> {
        let host = url.host().context("the URL has no host")?.to_string();
        let https = match url.scheme_str() {
            Some("http") | None => false,
            Some("https") => true,
            Some(other) => anyhow::bail!("unsupported URL scheme {other:?} (http or https)"),
        };
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let _ = tcp.set_nodelay(true);
        let sender = if https {
            let connector = tls_connector(tls)?;
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {host}:{port} failed"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            sender
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        };
        Ok(Connection { sender, authority })
    }

    /// Sends a request (its URI may be a bare path) and reads the whole response.
    pub async fn send(
        &mut self,
        mut request: Request<ChunkedBody>,
    ) -> anyhow::Result<Response<Bytes>> {
        if !request.headers().contains_key(hyper::header::HOST)
            && let Ok(host) = self.authority.parse()
        {
            request.headers_mut().insert(hyper::header::HOST, host);
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

/// The TLS options of a CLI command that talks to a gateway.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ClientTls {
    /// PEM CA certificate to trust for an https gateway (default: the system's roots).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (chain) to present, for a gateway whose admin API requires
    /// mutual TLS (`[tls] client_ca` in its config). Needs --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    /// The rustls connector these options describe (HTTP/1.1 by ALPN).
    pub fn connector(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        tls_connector(self)
    }
}

fn tls_connector(tls: &ClientTls) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.cacert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                roots.add(cert)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert_path.display()))?;
            anyhow::ensure!(
                !chain.is_empty(),
                "{} holds no PEM certificate",
                cert_path.display()
            );
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key_path.display()))?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "{} is not the key of {}",
                    key_path.display(),
                    cert_path.display()
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
