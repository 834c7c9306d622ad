//! Connecting to NATS: URL, authentication (one of user/password, token,
//! credentials file), TLS, and secrets that never print.

use super::*;

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Connection name shown by the server.
    pub name: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust (custom CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            name: "zhijian".into(),
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_required: false,
            connect_timeout_ms: 5_000,
        }
    }
}

/// How zhijian authenticates to NATS: one kind at most.
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    /// None configured: credentials written into the URL
    /// (`nats://user:password@host`, `nats://token@host`), if any.
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// A `.creds` file (JWT + nkey seed).
    CredentialsFile(PathBuf),
}

/// The validated NATS settings.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Connection name shown by the server.
    pub name: String,
    pub auth: NatsAuth,
    /// PEM file of CA certificates to trust (custom CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    pub connect_timeout: Duration,
}

impl NatsConfig {
    pub(crate) fn validate(self) -> Result<NatsSettings, InvalidConfig> {
        let auth = match (self.user, self.password, self.token, self.credentials_file) {
            (None, None, None, None) => NatsAuth::None,
            (Some(user), Some(password), None, None) => NatsAuth::UserPassword { user, password },
            (None, None, Some(token), None) => NatsAuth::Token(token),
            (None, None, None, Some(path)) => NatsAuth::CredentialsFile(path),
            (user, password, _, _) if user.is_some() != password.is_some() => {
                return Err(InvalidConfig::GoTogether {
                    section: "nats",
                    first: "user",
                    second: "password",
                });
            }
            _ => return Err(InvalidConfig::NatsAuth),
        };
        let tls_client = match (self.tls_client_cert, self.tls_client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(InvalidConfig::GoTogether {
                    section: "nats",
                    first: "tls_client_cert",
                    second: "tls_client_key",
                });
            }
        };
        Ok(NatsSettings {
            url: self.url,
            name: self.name,
            auth,
            tls_ca_file: self.tls_ca_file,
            tls_client,
            tls_required: self.tls_required,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}
