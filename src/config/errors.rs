//! Why a configuration cannot be read or is not valid.

use super::*;

/// A configuration file or environment that cannot be read into a
/// [`RawConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read config {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a value of the wrong type: with its line
    /// in the file when the error has one.
    #[error("{}{}", .line.map(|l| format!("line {l}: ")).unwrap_or_default(), .source.message().trim())]
    Toml {
        line: Option<usize>,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A `ZHIJIAN_…` variable.
    #[error("environment variable {name}: {source}")]
    Env {
        name: String,
        #[source]
        source: EnvError,
    },
    /// An error in the file named.
    #[error("{}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ParseError>,
    },
}

/// Why a `ZHIJIAN_<SECTION>_<KEY>` variable cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("expected ZHIJIAN_<SECTION>_<KEY>")]
    Shape,
    #[error("unknown key [{section}] {key}")]
    UnknownKey { section: String, key: String },
    /// No reading of the text (integer, boolean, text) is of the key's type;
    /// the source is what the first reading was refused for.
    #[error(
        "[{section}] {key}: {value:?} is not valid here ({})",
        .source.as_ref().map(|e| e.message().trim()).unwrap_or_default()
    )]
    Value {
        section: String,
        key: String,
        value: String,
        #[source]
        source: Option<Box<toml::de::Error>>,
    },
}

/// A configuration that deserializes but cannot be used: which key, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// A number outside the values its key takes.
    #[error("[{section}] {key} must be {bound}, got {got}")]
    OutOfRange {
        section: &'static str,
        key: &'static str,
        /// The values it takes, e.g. `1..=256`.
        bound: &'static str,
        got: u64,
    },
    /// A number below what its key takes (the message says the bound).
    #[error("[{section}] {key} must be {bound}")]
    Bound {
        section: &'static str,
        key: &'static str,
        /// e.g. `> 0`, `>= 1`.
        bound: &'static str,
    },
    /// `[cluster] lease_ms` shorter than three heartbeats.
    #[error("[cluster] lease_ms ({lease_ms}) must be at least 3 × heartbeat_ms ({heartbeat_ms})")]
    LeaseTooShort { lease_ms: u64, heartbeat_ms: u64 },
    /// An address that does not parse as `host:port`.
    #[error("[{section}] addr {addr:?} is not host:port")]
    NotHostPort { section: &'static str, addr: String },
    #[error("[log] format {0:?} is not \"text\" or \"json\"")]
    LogFormat(String),
    /// Two keys set without each other.
    #[error("[{section}] {first} and {second} go together")]
    GoTogether {
        section: &'static str,
        first: &'static str,
        second: &'static str,
    },
    /// More than one kind of NATS authentication.
    #[error("[nats] authentication: set one of user and password, token or credentials_file")]
    NatsAuth,
    /// A `[streams]` prefix or subject that is not a literal subject.
    #[error("[streams] {key} {value:?} is not a valid subject")]
    NotSubject { key: &'static str, value: String },
    /// A name with characters or a length its key does not take.
    #[error("[{section}] {key} {value:?}: {rule}")]
    BadName {
        section: &'static str,
        key: &'static str,
        value: String,
        /// What the key takes.
        rule: &'static str,
    },
    #[error(
        "[console] token must be non-empty printable ASCII without spaces (it travels in an HTTP header)"
    )]
    ConsoleToken,
    /// The console on a public address without credentials.
    #[error(
        "[console] addr {0} is not loopback: set a token or user and password (transcripts are personal data)"
    )]
    OpenConsole(SocketAddr),
    #[error(
        "[shadow] prefix and stream must be one subject token each (no '.', '*', '>' or spaces)"
    )]
    ShadowTokens,
    /// The shadow prefix is the first token of a live subject.
    #[error("[shadow] prefix {0:?} would share subjects with the live streams")]
    ShadowPrefix(String),
}
