//! Protocol-specific facts of an operation, as plain data.
//!
//! A leaf module (it imports nothing of the crate) so that the store, the events and
//! the exporters can keep and show these facts without depending on the pipeline or
//! on any protocol.

use serde::{Deserialize, Serialize};

/// Protocol-specific facts of an operation. Plain data: matching on it is the core's
/// job (`crate::pipeline::Pipeline::judge`), decoding it the protocol's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Details {
    /// Nothing beyond the common fields.
    #[default]
    None,
    /// A SQL statement (PostgreSQL, MySQL).
    Sql {
        #[serde(default)]
        tables_read: Vec<String>,
        #[serde(default)]
        tables_written: Vec<String>,
        /// The database or schema the session was in, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<String>,
    },
    /// An HTTP request.
    Http {
        /// `GET`, `POST`...
        method: String,
        /// The host the request named (`Host` / `:authority`), lower case, no port.
        host: String,
        /// The path without its query string.
        path: String,
        /// The query string's parameter names, never their values.
        #[serde(default)]
        query_keys: Vec<String>,
        /// The response status, once known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// A Kubernetes API request.
    Kubernetes {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
        /// `deletecollection`, `exec`...
        verb: String,
        /// The API group (empty for the core group).
        group: String,
        /// `pods`, `deployments`...
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subresource: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// An SSH channel or global request.
    Ssh {
        /// `exec`, `shell`, `subsystem`, `direct-tcpip`, `tcpip-forward`, `pty-req`...
        request: String,
        /// The command of an `exec`, the name of a `subsystem`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        /// `host:port` of a forward.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forward: Option<String>,
    },
}

impl Details {
    /// `true` for [`Details::None`] (left out when serialized).
    pub fn is_none(&self) -> bool {
        matches!(self, Details::None)
    }
}
