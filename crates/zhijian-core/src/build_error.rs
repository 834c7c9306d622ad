//! Why a validated lexicon does not compile: below the rules, the book and
//! the matcher, which all report it.

/// Why a validated lexicon does not compile.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// More of something than the compiled form can index.
    #[error("too many {0} for one lexicon")]
    TooMany(&'static str),
    /// A phrase whose wording does not compile.
    #[error("phrase {phrase:?} {reason}")]
    Phrase { phrase: String, reason: String },
    /// A pattern rule's regular expression.
    #[error("rule {rule}: {source}")]
    Pattern {
        rule: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// The patterns of every pattern rule, as one set.
    #[error("the pattern set: {0}")]
    PatternSet(#[source] Box<regex::Error>),
    /// The phrase automaton.
    #[error("the phrase automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
    /// A tenant overlay's lexicon.
    #[error("tenant {tenant}: {source}")]
    Tenant {
        tenant: String,
        #[source]
        source: Box<BuildError>,
    },
}
