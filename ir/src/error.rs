//! The error type of the `ir` crate.

use crate::graph::GraphError;
use crate::parse::ParseError;
use crate::verify::VerifyErrors;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Verify(#[from] VerifyErrors),
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A builder call whose operands the op does not accept.
    #[error("{op}{}: {message}", origin.as_ref().map(|o| format!(" (node \"{o}\")")).unwrap_or_default())]
    Build {
        op: String,
        origin: Option<String>,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
